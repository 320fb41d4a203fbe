"""The pool's status: a JSON-ready view of its state, and that view as aligned text."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from engine.pool.settings import PoolMode
from engine.pool.state import PoolState, Share, reclaim_json, sample_json
from engine.redact import redact

__all__ = ["format_status", "reclaim_json", "status_view"]


def status_view(
    state: PoolState,
    now: float,
    *,
    where: str,
    enabled: bool,
    settings: dict[str, Any],
    host: str | None = None,
    shares: dict[str, Share] | None = None,
) -> dict[str, Any]:
    """What ``orchestrate pool status --json`` prints, from a state at ``now``.

    On a store shared by hosts, ``shares`` maps every host to its share (a fresh one for
    a host without) and ``host`` is the viewing host: ``size``, ``mode``, the cooldown,
    ``streak`` and ``last_sample_at`` are then its share's, ``max_tokens`` caps all hosts
    together, holders name their ``host`` and ``hosts`` lists each host's share (``host``,
    ``size``, ``mode``, ``cooldown_remaining_s``, ``in_use``, ``waiting``, ``streak``,
    ``last_sample_at``), this host first. ``agreed_differs`` (only when there are
    some) maps each ``AGREED_KEYS`` setting this config gives otherwise than the pool's
    agreed one to ``{"here": N, "pool": N}``.
    """
    adapted: PoolState | Share = state
    if shares is not None and host is not None:
        adapted = shares[host]
    until = adapted.cooldown_until
    shared = shares is not None
    view = {
        "dir": where,
        "enabled": enabled,
        "size": adapted.size,
        "min_tokens": settings["min_tokens"],
        "max_tokens": settings["max_tokens"],
        "mode": adapted.mode.value,
        "cooldown_until": until,
        "cooldown_remaining_s": _left(until, now),
        "in_use": _holders(state.tokens, now, "acquired_at", "age_s", shared),
        "queue": _holders(state.queue, now, "queued_at", "waited_s", shared),
        "samples": [sample_json(s) for s in state.samples],
        "streak": {"low": adapted.low, "high": adapted.high},
        "last_sample_at": adapted.last_sample_at,
        "reclaimed": [reclaim_json(r) for r in state.reclaimed],
        "repairs": state.repairs,
        "settings": settings,
    }
    if state.agreed is not None:
        differs = {
            k: {"here": settings[k], "pool": v}
            for k, v in state.agreed.values.items()
            if k in settings and float(settings[k]) != v
        }
        if differs:  # another config (or host) set them: asking here is refused while in use
            view["agreed_differs"] = differs
    if shares is not None:
        view["host"] = host
        order = sorted(shares, key=lambda h: (h != host, h))
        view["hosts"] = [
            {
                "host": h,
                "size": shares[h].size,
                "mode": shares[h].mode.value,
                "cooldown_remaining_s": _left(shares[h].cooldown_until, now),
                "in_use": sum(1 for t in state.tokens if t.host == h),
                "waiting": sum(1 for t in state.queue if t.host == h),
                "streak": {"low": shares[h].low, "high": shares[h].high},
                "last_sample_at": shares[h].last_sample_at,
            }
            for h in order
        ]
    return view


def _left(until: float | None, now: float) -> float:
    return round(max(0.0, until - now), 3) if until else 0.0


def _holders(
    items: Sequence[Any], now: float, since: str, key: str, shared: bool = False
) -> list[dict[str, Any]]:
    """Run id, agent, PID and the seconds since ``since`` (as ``key``) of tokens or
    tickets; with ``shared``, their ``host`` too."""
    out = []
    for h in items:
        row = {
            "run_id": h.run_id,
            "agent": h.agent,
            "pid": h.pid,
            key: round(max(0.0, now - getattr(h, since)), 3),
        }
        if shared:
            row["host"] = h.host
        out.append(row)
    return out


# -- rendering --------------------------------------------------------------------------


def _table(headers: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]

    def line(cells: list[str]) -> str:
        return "  " + "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    return [line(headers)] + [line(r) for r in rows]


def _secs(value: float) -> str:
    return f"{value:.1f}s"


def format_status(status: dict[str, Any]) -> str:
    """Render ``TokenPool.status()`` as aligned text for ``orchestrate pool status``."""
    hosts = status.get("hosts")
    lines = _summary_lines(status)
    if hosts:
        lines += _host_lines(status, hosts)
    lines += _holder_lines(status, bool(hosts))
    differs = status.get("agreed_differs") or {}
    if differs:
        said = ", ".join(
            f"`pool.{k}` is {d['here']:g} here but {d['pool']:g} in the pool"
            for k, d in differs.items()
        )
        lines += [
            "",
            f"settings differ: {said} (set by another config or host using this pool); "
            "a token asked for here is refused (exit 2) while the pool is in use. Give "
            "every config that shares the pool the same `pool:` settings.",
        ]
    if status.get("repairs"):
        lines += ["", f"state file repaired {status['repairs']} time(s) (garbage was dropped)"]
    return "\n".join(lines)


def _mode_text(status: dict[str, Any]) -> str:
    mode = str(status.get("mode", "normal"))
    if mode == PoolMode.EMERGENCY.value:
        mode += f" (cooldown {_secs(status.get('cooldown_remaining_s', 0.0))} left)"
    if not status.get("enabled", True):
        mode = "disabled (`pool.enabled` is false)"
    return mode


def _load_text(status: dict[str, Any]) -> str:
    """This host's recent load samples, newest last (another host's are in its share)."""
    samples = []
    hosts = status.get("hosts")
    for s in status.get("samples", []):
        if hosts and s.get("host", status.get("host")) != status.get("host"):
            continue  # another host's sample: its share is in the hosts table
        samples.append("429/503" if s.get("load") is None else f"{s['load']:.2f}")
    if not samples:
        return "no samples yet"
    streak = status.get("streak", {})
    return (
        " ".join(samples)
        + f"  (newest last; streak: {streak.get('low', 0)} low, {streak.get('high', 0)} high)"
    )


def _summary_lines(status: dict[str, Any]) -> list[str]:
    settings = status.get("settings", {})
    in_use, queue = status.get("in_use", []), status.get("queue", [])
    if status.get("hosts"):
        size = (
            f"size     {status.get('size')} on this host (all hosts together at most "
            f"{status.get('max_tokens')})"
        )
        used = f"in use   {len(in_use)} of {status.get('max_tokens')} on all hosts"
    else:
        size = (
            f"size     {status.get('size')} (min {status.get('min_tokens')}, "
            f"max {status.get('max_tokens')}"
            + ("" if settings.get("adaptive", True) else ", fixed: `pool.adaptive` is false")
            + ")"
        )
        used = f"in use   {len(in_use)} of {status.get('size')}"
    return [
        f"pool     {redact(str(status.get('dir', '?')))}",  # a URL's user shown as ***
        f"mode     {_mode_text(status)}",
        size,
        used,
        f"queue    {len(queue)} waiting (limit {settings.get('queue_limit', '?')})",
        "load     " + _load_text(status),
    ]


def _host_lines(status: dict[str, Any], hosts: list[dict[str, Any]]) -> list[str]:
    rows = []
    for h in hosts:
        mode = h["mode"]
        if mode == PoolMode.EMERGENCY.value:
            mode += f" ({_secs(h['cooldown_remaining_s'])} left)"
        rows.append([h["host"], str(h["size"]), mode, str(h["in_use"]), str(h["waiting"])])
    return ["", "hosts (each adapts its share to its own load):"] + _table(
        ["HOST", "SHARE", "MODE", "IN USE", "WAITING"], rows
    )


def _holder_lines(status: dict[str, Any], shared: bool) -> list[str]:
    """The tokens in use, the waiters and the recently reclaimed, as tables."""
    host_col = ["HOST"] if shared else []

    def where(h: dict[str, Any]) -> list[str]:
        return [str(h.get("host", "?"))] if shared else []

    lines: list[str] = []
    for title, holders, since, key in (
        ("tokens in use:", status.get("in_use", []), "AGE", "age_s"),
        ("waiting (first come, first served):", status.get("queue", []), "WAITED", "waited_s"),
    ):
        if holders:
            lines += ["", title]
            lines += _table(
                ["RUN ID", "AGENT", *host_col, "PID", since],
                [
                    [h["run_id"], h["agent"], *where(h), str(h["pid"]), _secs(h[key])]
                    for h in holders
                ],
            )
    reclaimed = status.get("reclaimed", [])
    if reclaimed:
        lines += ["", "recently reclaimed:"]
        lines += _table(
            ["RUN ID", "AGENT", "PID", "REASON", "HELD"],
            [
                [r["run_id"], r["agent"], str(r["pid"]), r["reason"], _secs(r["held_s"])]
                for r in reclaimed
            ],
        )
    return lines
