#!/usr/bin/env python3
"""Benchmark: what a forgotten handoff costs now, and what knowing the run's end costs.

    python bench/repair.py [--json] [-n 300] [--runs 8]

1. Time to a result when the agent forgets the handoff once (one repair), against a
   clean delegation, with command agents on the local gateway (a Python process per
   message, like real agents), in interleaved rounds, two ways: in the same session
   (``send_session_key``: the correction alone, the agent keeps its work) and with the
   task re-sent (no session: the work is done again). Goal: at most 2x a clean
   delegation. Before the repair existed, the same forgotten file cost the whole
   timeout (900 s in the shipped material-trade-study steps).
2. Engine overhead per clean delegation against the bare baseline of
   bench/delegation.py (the in-process `echo` agent), with `waitForCompletion` on (the
   default: the POST is held on a thread until the run ends) and off (as before), in
   alternating batches. The two engine figures should be within noise of each other.

With --json the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
AGENT = HERE.parent / "tests" / "peers" / "misbehaving_agent.py"
TODAY_TIMEOUT_S = 900.0  # the shipped material-trade-study steps


#: The three cases measured per round, and how each agent is set up: (agent mode,
#: ``send_session_key``). ``same_session``: the local gateway gives the agent its
#: session's directory and the engine sends the correction alone, so the agent keeps its
#: work; ``task_resent``: no session, the task goes again with the correction (as on
#: OpenClaw, whose hook runs start a fresh session each time).
CASES = {
    "clean": ("right", False),
    "task_resent": ("forget", False),
    "same_session": ("forget", True),
}


def forgetful(runs: int, work: float) -> dict[str, float]:
    """Median seconds to a result per case of ``CASES``, in interleaved rounds (one
    delegation of each case per round); ``work`` seconds of work per agent turn."""
    from contextlib import ExitStack

    from engine.config import load_config
    from engine.delegate import DelegationRequest, open_delegator

    out: dict[str, list[float]] = {case: [] for case in CASES}
    with tempfile.TemporaryDirectory(prefix="bench-repair-") as tmpname, ExitStack() as stack:
        tmp = Path(tmpname)
        delegators = {}
        for case, (mode, session) in CASES.items():
            where = tmp / case
            where.mkdir()
            raw = {
                "handoffs_dir": str(where / "handoffs"),
                "handoff_grace": 0.5,
                "gateway": {
                    "embedded": True,
                    "agents": {
                        "manager": {"kind": "echo"},
                        "webster": {
                            "kind": "command",
                            "argv": [sys.executable, str(AGENT), mode],
                            "env": {"AGENT_STATE": str(where / "state"),
                                    "AGENT_WORK_S": str(work)},
                            "fallback_handoff": False,
                        }
                    },
                },
                "agents": {"manager": {"url": "local"},
                           "webster": {"url": "local", "send_session_key": session}},
                "pool": {"enabled": False},
            }
            (where / "orchestrator.yaml").write_text(yaml.safe_dump(raw))
            delegators[case] = stack.enter_context(
                open_delegator(load_config(where / "orchestrator.yaml")))
        req = DelegationRequest(target="webster", task="x", caller="manager", timeout=60)
        for d in delegators.values():
            d.delegate(req)  # warm-up
        for _ in range(runs):
            for case, d in delegators.items():
                t0 = time.perf_counter()
                res = d.delegate(req)
                out[case].append(time.perf_counter() - t0)
                assert res.outcome.value == "complete", res.outcome
                assert bool(res.envelope.get("repairs")) is (case != "clean"), case
    return {k: statistics.median(v) for k, v in out.items()}


def overhead(n: int, batch: int = 50) -> dict[str, float]:
    """Median ms per clean delegation: bare, engine holding the POST, engine not holding."""
    import dataclasses

    sys.path.insert(0, str(HERE))
    from delegation import Bare, setup  # the baseline of bench/delegation.py

    from engine.delegate import DelegationRequest, open_delegator

    samples: dict[str, list[float]] = {"bare": [], "held": [], "not_held": []}
    with tempfile.TemporaryDirectory(prefix="bench-repair-ovh-") as tmpname:
        tmp = Path(tmpname)
        cfg, gw = setup(tmp)
        try:
            req = DelegationRequest(target="webster", task="Find CTE", caller="manager",
                                    timeout=30)
            off = dataclasses.replace(cfg, wait_for_completion=False)  # type: ignore[type-var]
            with open_delegator(cfg) as held, open_delegator(off) as not_held:
                bare = Bare(gw.url, cfg.handoffs_dir)  # type: ignore[attr-defined]
                for _ in range(30):
                    held.delegate(req)
                    not_held.delegate(req)
                    bare.once()
                while len(samples["bare"]) < n:
                    for key, run in (
                        ("held", lambda: held.delegate(req)),
                        ("not_held", lambda: not_held.delegate(req)),
                        ("bare", bare.once),
                    ):
                        for _ in range(batch):
                            t0 = time.perf_counter()
                            run()
                            samples[key].append(time.perf_counter() - t0)
                bare.close()
        finally:
            gw.stop()  # type: ignore[attr-defined]
    return {k: statistics.median(v) * 1000 for k, v in samples.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="last line: one JSON object")
    ap.add_argument("-n", type=int, default=300, help="clean delegations per side (overhead)")
    ap.add_argument("--runs", type=int, default=8, help="delegations per case (repair)")
    args = ap.parse_args()

    repairs = {}
    for work in (0.0, 1.0):
        rep = repairs[work] = forgetful(args.runs, work)
        print(f"agent turn of {work:g} s work, clean:                      "
              f"{rep['clean']:.3f} s (median of {args.runs})")
        for case, how in (("same_session", "same session, agent keeps its work"),
                          ("task_resent", "task re-sent, work redone")):
            print(f"agent turn of {work:g} s work, forgets once, {how}: "
                  f"{rep[case]:.3f} s = {rep[case] / rep['clean']:.2f}x clean")
    print(f"(goal <= 2x; before the repair: the whole timeout, {TODAY_TIMEOUT_S:g} s in "
          "material-trade-study)")
    rep = repairs[1.0]
    ratios = {case: round(rep[case] / rep["clean"], 3) for case in ("same_session",
                                                                     "task_resent")}
    ovh = overhead(args.n)
    print(f"bare baseline per delegation:    {ovh['bare']:.3f} ms (median of {args.n})")
    print(f"engine, waitForCompletion held:  {ovh['held']:.3f} ms "
          f"(+{ovh['held'] - ovh['bare']:.3f} ms over bare)")
    print(f"engine, not held (as before):    {ovh['not_held']:.3f} ms "
          f"(+{ovh['not_held'] - ovh['bare']:.3f} ms over bare)")
    if args.json:
        print(json.dumps({"repair_s": rep, "repair_ratio": ratios,
                          "overhead_ms": {k: round(v, 3) for k, v in ovh.items()}}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
