#!/usr/bin/env python3
"""Benchmark: a fan-out (`for_each`) against the same number of plain steps, on echo agents.

    python bench/fanout.py [--json] [--items 1000] [--rounds 3]

Live: one `for_each` step over N items, and N independent plain steps, each run with one
delegation in flight, in interleaved rounds (A, B, A, B, ...) in the same process; prints
the per-item and per-step times (min and median over the rounds), their ratio, and the
peak memory. Dry run: a template of 50 `for_each` steps (20 items each, in a chain)
against 50 plain steps, same rounds. With --json the last line is one JSON object. Agents
are the local gateway's in-process `echo` agents.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).parent))
from delegation import TOKEN, setup  # noqa: E402


def fan_out(path: Path, items: int) -> None:
    doc = {
        "name": "fan",
        "caller": "manager",
        "inputs": {"n": {"default": str(items)}},
        "steps": [
            {
                "id": "each",
                "agent": "webster",
                "for_each": "range(inputs.n | int) | list",
                "max_parallel": 1,
                "task": "item {{ item }}",
            }
        ],
    }
    path.write_text(yaml.safe_dump(doc, sort_keys=False))


def plain(path: Path, steps: int) -> None:
    doc = {
        "name": "plain",
        "caller": "manager",
        "steps": [
            {"id": f"s{i:04d}", "agent": "webster", "task": f"item {i}"} for i in range(steps)
        ],
    }
    path.write_text(yaml.safe_dump(doc, sort_keys=False))


def chain(path: Path, steps: int, fan: bool) -> None:
    out = []
    for i in range(steps):
        step: dict[str, object] = {"id": f"s{i:02d}", "agent": "webster"}
        if i:
            step["depends_on"] = [f"s{i - 1:02d}"]
        if fan:
            step["for_each"] = "inputs.list"
            step["task"] = "item {{ item }}" + (
                f" after {{{{ steps.s{i - 1:02d}.results[0] }}}}" if i else ""
            )
        else:
            step["task"] = "step" + (f" after {{{{ steps.s{i - 1:02d}.result }}}}" if i else "")
        out.append(step)
    doc = {
        "name": "chain",
        "caller": "manager",
        "inputs": {"list": {"default": ", ".join(f"m{k}" for k in range(20))}},
        "steps": out,
    }
    path.write_text(yaml.safe_dump(doc, sort_keys=False))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--items", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()

    from engine.delegate import open_delegator
    from engine.planview import dry_run_text
    from engine.runner import RunOptions, RunState, WorkflowRunner, prepare

    with tempfile.TemporaryDirectory(prefix="bench-fan-") as tmpname:
        tmp = Path(tmpname)
        cfg, gw = setup(tmp)
        os.environ["BENCH_GW_TOKEN"] = TOKEN
        fan_wf, plain_wf = tmp / "fan.yaml", tmp / "plain.yaml"
        fan_out(fan_wf, args.items)
        plain(plain_wf, args.items)
        chain_fan, chain_plain = tmp / "chain-fan.yaml", tmp / "chain-plain.yaml"
        chain(chain_fan, 50, True)
        chain(chain_plain, 50, False)
        dry: dict[str, list[float]] = {"fan": [], "plain": []}
        for _ in range(args.rounds):
            for key, wf in (("fan", chain_fan), ("plain", chain_plain)):
                t0 = time.perf_counter()
                p = prepare(cfg, str(wf), {})
                dry_run_text(p.plan, p.renderer)
                dry[key].append(time.perf_counter() - t0)
        live: dict[str, list[float]] = {"fan": [], "plain": []}
        try:
            with open_delegator(cfg) as d:
                runner = WorkflowRunner(cfg, d)
                prepared = {
                    "fan": prepare(cfg, str(fan_wf), {}),
                    "plain": prepare(cfg, str(plain_wf), {}),
                }
                runner.start(prepare(cfg, str(chain_plain), {}), RunOptions())  # warm up
                for _ in range(args.rounds):
                    for key in ("fan", "plain"):
                        t0 = time.perf_counter()
                        res = runner.start(prepared[key], RunOptions(max_parallel=1))
                        live[key].append((time.perf_counter() - t0) / args.items)
                        assert res.state is RunState.COMPLETE, res.summary
        finally:
            gw.stop()

    def ms(xs: list[float]) -> tuple[float, float]:
        return round(min(xs) * 1000, 3), round(statistics.median(xs) * 1000, 3)

    fig = {
        "items": args.items,
        "rounds": args.rounds,
        "per_item_ms_min_median": ms(live["fan"]),
        "per_plain_step_ms_min_median": ms(live["plain"]),
        "ratio_item_vs_step_median": round(
            statistics.median(live["fan"]) / statistics.median(live["plain"]), 2
        ),
        "dry_run_50_fan_out_steps_ms_min_median": ms(dry["fan"]),
        "dry_run_50_plain_steps_ms_min_median": ms(dry["plain"]),
        "ratio_dry_run_median": round(
            statistics.median(dry["fan"]) / statistics.median(dry["plain"]), 2
        ),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    print(
        f"{args.items} items of one for_each vs {args.items} plain steps, echo agents, 1 in flight"
    )
    print(f"  per item  (min/median): {fig['per_item_ms_min_median']} ms")
    print(f"  per step  (min/median): {fig['per_plain_step_ms_min_median']} ms")
    print(f"  ratio item / step (median): {fig['ratio_item_vs_step_median']}")
    print("dry run of 50 chained steps (20 items each) vs 50 plain steps")
    print(f"  fan-out (min/median): {fig['dry_run_50_fan_out_steps_ms_min_median']} ms")
    print(f"  plain   (min/median): {fig['dry_run_50_plain_steps_ms_min_median']} ms")
    print(f"  ratio (median): {fig['ratio_dry_run_median']}")
    print(f"peak memory: {fig['peak_rss_mib']} MiB")
    if args.json:
        print(json.dumps(fig))
    return 0


if __name__ == "__main__":
    sys.exit(main())
