#!/usr/bin/env python3
"""Benchmark: delegations through the real OpenClaw gateway, and where the time goes.

    python bench/openclaw.py [--json] [-n 20] [--cli 5] [--tier]

Starts the test peer (tests/peers/openclaw/: Node 24 + ``openclaw@2026.9.6`` from the
cache, the scripted model on loopback, one gateway on a free port) and prints:

- gateway start: spawn -> ``/readyz`` 200, on fresh state and again on the same state;
  SIGTERM -> all processes gone;
- per delegation (``Delegator.delegate``, in process, sequential): p50/p90/max over
  ``-n`` runs after one warm-up, and the first run after start on its own;
- inside each delegation: the engine before the POST, the POST (gateway admission),
  the gateway until it asks the model, the model (the stand-in's own time), the
  gateway running the agent's ``write`` tool until the file is closed, and the engine
  after that (wake, parse, validate, record). The engine's overhead is the first and
  the last of these;
- ``--cli N``: the same through the ``orchestrate`` console script (process start-up
  included);
- ``--tier``: the wall time of ``pytest -m openclaw`` (the CI tier), run afterwards.

With --json the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def pct(values: list[float], q: float) -> float:
    """The q-th percentile (nearest rank) of values."""
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[k]


class FileLanded:
    """Notes when each ``<run>.json`` first appears complete in a directory (inotify)."""

    def __init__(self, directory: Path) -> None:
        from inotify_simple import INotify, flags

        directory.mkdir(parents=True, exist_ok=True)
        self.ino = INotify()
        self.ino.add_watch(str(directory), flags.CLOSE_WRITE | flags.MOVED_TO)
        self.first: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for ev in self.ino.read(timeout=200):
                now = time.time()
                if ev.name.endswith(".json"):
                    self.first.setdefault(ev.name[: -len(".json")], now)

    def when(self, run_id: str, timeout: float = 5.0) -> float:
        """When the observer woke for ``run_id``'s file (waits briefly for its thread)."""
        end = time.monotonic() + timeout
        while run_id not in self.first:
            if time.monotonic() > end:
                raise RuntimeError(f"no inotify event for {run_id}.json")
            time.sleep(0.001)
        return self.first[run_id]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.ino.close()


def timed_client(retry: Any) -> Any:
    """A HooksClient that notes when each POST started and returned (by Idempotency-Key)."""
    from engine.hooks import HooksClient

    class Timed(HooksClient):
        posts: dict[str, tuple[float, float]] = {}

        def post_agent(self, target: Any, body: dict[str, Any], *, idempotency_key: str,
                       deadline: float) -> Any:
            t0 = time.time()
            try:
                return super().post_agent(target, body, idempotency_key=idempotency_key,
                                          deadline=deadline)
            finally:
                self.posts[idempotency_key] = (t0, time.time())

    return Timed(retry)


def cli_runs(cfg: Path, env: dict[str, str], n: int) -> list[float]:
    """Wall time of ``orchestrate webster ...`` as a process, ``n`` times."""
    exe = Path(sys.executable).parent / "orchestrate"
    out = []
    for i in range(n):
        t0 = time.perf_counter()
        proc = subprocess.run(
            [str(exe), "webster", f"CLI bench task {i}", "--caller", "manager", "-q",
             "--config", str(cfg)],
            env={**os.environ, **env}, capture_output=True, text=True, timeout=120,
            check=False)
        out.append(time.perf_counter() - t0)
        assert proc.returncode == 0, proc.stderr
    return out


def tier_seconds() -> tuple[float, int]:
    """Wall time and exit code of the `openclaw` pytest tier."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pytest", "-m", "openclaw", "-q",
                           "-p", "no:cacheprovider", "tests/test_openclaw.py"],
                          cwd=REPO, capture_output=True, text=True, check=False)
    return time.perf_counter() - t0, proc.returncode


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    ap.add_argument("--json", action="store_true", help="last line: one JSON object")
    ap.add_argument("-n", type=int, default=20, help="sequential delegations measured")
    ap.add_argument("--cli", type=int, default=5, help="delegations through the CLI")
    ap.add_argument("--tier", action="store_true", help="also time `pytest -m openclaw`")
    args = ap.parse_args()

    from engine.config import load_config
    from engine.delegate import DelegationRequest, Delegator
    from engine.pool import PoolSettings, TokenPool
    from engine.watch import close_all
    from tests.peers.openclaw.fixtures import OpenClawSession
    from tests.peers.openclaw.peer import Gateway, ensure_installed, running_peer

    t0 = time.perf_counter()
    install = ensure_installed()
    install_s = time.perf_counter() - t0
    fig: dict[str, Any] = {"install_s": round(install_s, 1),
                           "installed_now": install.installed_now}
    ms = 1000.0
    with tempfile.TemporaryDirectory(prefix="bench-openclaw-") as tmpname:
        tmp = Path(tmpname)
        with running_peer(tmp / "peer") as peer:
            fig["start_fresh_s"] = round(peer.gateway.start_seconds or 0, 2)
            oc = OpenClawSession(peer)
            cfg_path = oc.engine_config(tmp)
            cfg = load_config(cfg_path)
            os.environ.update(oc.env())
            landed = FileLanded(cfg.handoffs_dir)
            client = timed_client(cfg.retry)
            pool = TokenPool(PoolSettings.from_config(cfg))  # as `orchestrate` has it
            delegator = Delegator(cfg, client=client, pool=pool)
            rows: list[dict[str, float]] = []
            try:
                for i in range(args.n + 1):
                    req = DelegationRequest(target="webster", task=f"Bench task {i}",
                                            caller="manager", timeout=60)
                    start = time.time()
                    res = delegator.delegate(req)
                    end = time.time()
                    assert res.outcome.value == "complete", res.record
                    rid = res.run_id
                    ask = peer.stub.calls(run_id=rid, decision="tool_call")[0]
                    post0, post1 = client.posts[rid]
                    file_t = landed.when(rid)
                    rows.append({
                        "total": end - start,
                        "engine_before_post": post0 - start,
                        "post": post1 - post0,
                        "gateway_to_model": ask["t_start"] - post1,
                        "model": ask["t_end"] - ask["t_start"],
                        "gateway_write": file_t - ask["t_end"],
                        "engine_after_file": end - file_t,
                    })
            finally:
                delegator.close()
                client.close()
                landed.close()
                close_all()
            ids = {c["run_id"] for c in peer.stub.calls(decision="tool_call")}
            peer.stub.wait_for(lambda log: len(
                {r.get("run_id") for r in log if r["decision"] == "final"}) >= len(ids), 15)
            finals = peer.stub.calls(decision="final")
            fig["write_verification_failed"] = sum(
                "verification failed" in (c.get("tool_result") or "") for c in finals)
            fig["write_results"] = len(finals)
            first, measured = rows[0], rows[1:]
            fig["first_delegation_ms"] = round(first["total"] * ms, 1)

            def p50(key: str) -> float:
                return round(statistics.median(r[key] for r in measured) * ms, 2)

            totals = [r["total"] for r in measured]
            overhead = [r["engine_before_post"] + r["engine_after_file"] for r in measured]
            fig.update({
                "n": args.n,
                "delegation_p50_ms": p50("total"),
                "delegation_p90_ms": round(pct(totals, 90) * ms, 1),
                "delegation_max_ms": round(max(totals) * ms, 1),
                **{f"{k}_p50_ms": p50(k) for k in (
                    "engine_before_post", "post", "gateway_to_model", "model",
                    "gateway_write", "engine_after_file")},
                "engine_overhead_p50_ms": round(statistics.median(overhead) * ms, 2),
                "engine_overhead_share_p50": round(
                    statistics.median(o / t for o, t in zip(overhead, totals, strict=True)),
                    4),
                "model_calls_per_task": round(
                    len([c for c in peer.stub.calls() if c.get("run_id")]) / len(rows), 2),
            })
            if args.cli:
                cli = cli_runs(cfg_path, oc.env(), args.cli)
                fig["cli_n"] = args.cli
                fig["cli_p50_ms"] = round(statistics.median(cli) * ms, 1)
            # The same state again: a restart, as after a deploy.
            t0 = time.perf_counter()
            peer.gateway.stop()
            fig["stop_s"] = round(time.perf_counter() - t0, 2)
            again = Gateway(peer.install, peer.settings)
            again.start()
            fig["start_restart_s"] = round(again.start_seconds or 0, 2)
            again.stop()
    if args.tier:
        secs, code = tier_seconds()
        fig["tier_s"] = round(secs, 1)
        fig["tier_exit"] = code

    how = "installed now" if install.installed_now else "cached"
    print(f"install: {fig['install_s']} s ({how})")
    print(f"gateway start (spawn -> /readyz 200): fresh state {fig['start_fresh_s']} s, "
          f"restart {fig['start_restart_s']} s; SIGTERM -> all gone {fig['stop_s']} s")
    print(f"delegation through the gateway, {args.n} sequential: p50 "
          f"{fig['delegation_p50_ms']} ms, p90 {fig['delegation_p90_ms']} ms, max "
          f"{fig['delegation_max_ms']} ms (first after start: {fig['first_delegation_ms']} ms)")
    print("  p50 of each part:")
    for key, label in (
        ("engine_before_post", "engine before the POST"),
        ("post", "POST /hooks/agent (admission)"),
        ("gateway_to_model", "gateway until it asks the model"),
        ("model", "model (scripted stand-in)"),
        ("gateway_write", "gateway runs `write`, file closed"),
        ("engine_after_file", "engine after the file (wake..record)"),
    ):
        print(f"    {label:<40} {fig[key + '_p50_ms']:9.2f} ms")
    print(f"  engine overhead p50 {fig['engine_overhead_p50_ms']} ms "
          f"({fig['engine_overhead_share_p50'] * 100:.2f} % of a delegation); "
          f"model calls per task: {fig['model_calls_per_task']}")
    print(f"  the gateway's `write` tool reported a verification failure in "
          f"{fig['write_verification_failed']} of {fig['write_results']} runs (it reads its "
          "file back; the engine records beside the file, never over it)")
    if args.cli:
        print(f"through `orchestrate` (process start included), {args.cli} runs: p50 "
              f"{fig['cli_p50_ms']} ms")
    if args.tier:
        print(f"`pytest -m openclaw`: {fig['tier_s']} s (exit {fig['tier_exit']})")
    if args.json:
        print(json.dumps(fig))
    return 0


if __name__ == "__main__":
    sys.exit(main())
