"""Capability routing: pick the agent for a task by what it can do and how busy it is."""

from __future__ import annotations

import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from engine.acl import Acl
from engine.errors import AclDeniedError, UnknownAgentError, did_you_mean
from engine.registry import Registry
from engine.store import RunStore, waiter_alive


@dataclass(frozen=True)
class Route:
    """The routing decision: the chosen agent and every candidate with its load."""

    capability: str
    agent: str
    candidates: tuple[tuple[str, int], ...]  # (agent, tasks in flight), registry order
    excluded: tuple[tuple[str, str], ...]  # (agent, why not)
    #: (agent, why) for capable agents passed over because their gateway is unreachable
    skipped: tuple[tuple[str, str], ...] = ()

    def explain(self) -> str:
        """A few lines saying what was chosen and why."""
        lines = [
            f"capability `{self.capability}` -> `{self.agent}` (fewest tasks in flight; "
            "ties go to the first in the registry)"
        ]
        skipped = dict(self.skipped)
        for name, n in self.candidates:
            mark = "*" if name == self.agent else " "
            why = f"; skipped: {skipped[name]}" if name in skipped else ""
            lines.append(f"  {mark} {name}: {n} in flight{why}")
        for name, why in self.excluded:
            lines.append(f"    {name}: not eligible ({why})")
        if self.agent in skipped:
            lines.append(f"  every candidate is unreachable: `{self.agent}` is tried anyway")
        return "\n".join(lines)


def route(
    registry: Registry,
    acl: Acl,
    *,
    caller: str,
    capability: str,
    inflight: Mapping[str, int],
    probe: Callable[[str], str | None] | None = None,
) -> Route:
    """Choose among agents with ``capability`` that ``caller`` may delegate to.

    The fewest in flight wins (ties: registry order). With ``probe`` (agent name -> why
    it cannot be reached, or None), candidates are probed in that order and the first
    reachable one wins; the others probed are listed in ``skipped``. When none is
    reachable, the least busy is chosen anyway (its delegation then says why it failed).
    Raises ``UnknownAgentError`` (no agent has it) or ``AclDeniedError`` (none allowed)."""
    capable = registry.with_capability(capability)
    if not capable:
        raise UnknownAgentError(
            f"no agent has capability `{capability}`"
            f"{did_you_mean(capability, registry.capabilities) or '.'} Known capabilities: "
            f"{', '.join(registry.capabilities) or 'none'}."
        )
    allowed = [a.name for a in capable if acl.allows(caller, a.name)]
    excluded = tuple(
        (
            a.name,
            "an agent never delegates to itself"
            if a.name == caller
            else f"`{caller}` may not delegate to it",
        )
        for a in capable
        if a.name not in allowed
    )
    if not allowed:
        raise AclDeniedError(
            f"no agent with capability `{capability}` may be used by `{caller}`: "
            + ", ".join(f"`{a.name}`" for a in capable)
            + f" have it, but the ACL does not allow `{caller}` to delegate to them. "
            "Nothing was sent."
        )
    candidates = tuple((name, int(inflight.get(name, 0))) for name in allowed)
    agent, skipped = choose(candidates, probe)
    return Route(capability, agent, candidates, excluded, skipped)


def choose(
    candidates: Sequence[tuple[str, int]],
    probe: Callable[[str], str | None] | None = None,
) -> tuple[str, tuple[tuple[str, str], ...]]:
    """The agent to send to among ``candidates`` ((agent, tasks in flight), registry
    order, at least one) and the (agent, why) pairs passed over as unreachable.

    The fewest in flight first (ties: registry order); with ``probe`` (agent name -> why
    it cannot be reached, or None) the first reachable in that order wins, and when none
    is, the least busy is chosen anyway. The one rule of ``route`` and of a workflow's
    capability steps (``engine.runner``), so both route the same way."""
    ordered = sorted(candidates, key=lambda c: c[1])  # stable: the first of equals first
    skipped: list[tuple[str, str]] = []
    for name, _ in ordered:
        why = probe(name) if probe is not None else None
        if why is None:
            return name, tuple(skipped)
        skipped.append((name, why))
    return ordered[0][0], tuple(skipped)


#: Seconds a routing probe waits for a TCP connection to an agent's gateway.
PROBE_TIMEOUT = 0.5


def probe_gateway(url: str, timeout: float = PROBE_TIMEOUT) -> str | None:
    """Why the gateway at ``url`` cannot be reached (a TCP connect to its host and port,
    at most ``timeout`` s), or None when it accepts a connection. Nothing is sent."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        return f"its url cannot be used ({exc})"
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except ConnectionRefusedError:
        return f"its gateway at {host}:{port} refused the connection"
    except TimeoutError:
        return f"its gateway at {host}:{port} did not accept a connection within {timeout:g} s"
    except OSError as exc:
        return f"its gateway at {host}:{port} is unreachable ({exc.strerror or exc})"


def inflight_counts(store: RunStore) -> dict[str, int]:
    """Delegations in flight per target: pending envelopes whose waiter is alive
    (``engine.store.waiter_alive``), top-level and sub-delegations."""
    counts: dict[str, int] = {}
    for sub in (False, True):
        for _, env in store.list_pending(sub=sub):
            if env.get("outcome") != "dispatched" or not waiter_alive(env):
                continue
            target = env.get("target")
            if isinstance(target, str):
                counts[target] = counts.get(target, 0) + 1
    return counts
