#!/usr/bin/env python3
"""Benchmark: a generated 1,000-step workflow (layers of 50 with fan-in) on instant agents.

    python bench/workflow.py [--json] [--steps 1000] [--layer 50]

Prints the dry-run time (load + plan + render the plan), the live run's total time and
per-step time with one step in flight (so it compares with sequential delegations) and
with 8, the same number of single delegations measured in the same run (before and after
the workflow, averaged), their ratio, and peak memory. With --json the last line is one
JSON object. Agents are the local gateway's in-process `echo` agents.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).parent))
from delegation import TOKEN, setup  # noqa: E402

AGENTS = ("webster", "manager")


def generate(path: Path, steps: int, layer: int, seed: int = 7) -> None:
    """Write a layered workflow: each step depends on up to 3 steps of the previous layer."""
    rng = random.Random(seed)
    out = []
    layers = [
        [f"s{n:04d}" for n in range(i, min(i + layer, steps))] for i in range(0, steps, layer)
    ]
    for k, ids in enumerate(layers):
        for sid in ids:
            step: dict[str, object] = {"id": sid, "agent": "webster"}
            if k == 0:
                step["task"] = f"start {sid}: {{{{ inputs.topic }}}}"
            else:
                deps = rng.sample(layers[k - 1], min(3, len(layers[k - 1])))
                step["depends_on"] = deps
                step["task"] = f"step {sid} after {deps[0]} ({{{{ steps['{deps[0]}'].status }}}})"
            out.append(step)
    doc = {
        "name": "generated",
        "description": f"{steps} generated steps",
        "caller": "manager",
        "inputs": {"topic": {"required": True}},
        "steps": out,
    }
    path.write_text(yaml.safe_dump(doc, sort_keys=False))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--layer", type=int, default=50)
    args = ap.parse_args()

    from engine.delegate import DelegationRequest, open_delegator
    from engine.planview import dry_run_text
    from engine.runner import RunOptions, RunState, WorkflowRunner, prepare

    with tempfile.TemporaryDirectory(prefix="bench-wf-") as tmpname:
        tmp = Path(tmpname)
        cfg, gw = setup(tmp)
        os.environ["BENCH_GW_TOKEN"] = TOKEN
        wf = tmp / "generated.yaml"
        generate(wf, args.steps, args.layer)
        dry = []
        for _ in range(3):
            t0 = time.perf_counter()
            prepared = prepare(cfg, str(wf), {"topic": "mirrors"})
            text = dry_run_text(prepared.plan, prepared.renderer)
            dry.append(time.perf_counter() - t0)
        assert text.count("\n") > args.steps
        try:
            with open_delegator(cfg) as d:
                req = DelegationRequest(
                    target="webster", task="single", caller="manager", timeout=30
                )
                for _ in range(30):
                    d.delegate(req)

                def singles(n: int) -> float:
                    t0 = time.perf_counter()
                    for _ in range(n):
                        d.delegate(req)
                    return (time.perf_counter() - t0) / n

                single_a = singles(args.steps // 2)
                runner = WorkflowRunner(cfg, d)
                t0 = time.perf_counter()
                res1 = runner.start(prepared, RunOptions(max_parallel=1))
                wall1 = time.perf_counter() - t0
                single_b = singles(args.steps // 2)
                t0 = time.perf_counter()
                res8 = runner.start(prepared, RunOptions(max_parallel=8))
                wall8 = time.perf_counter() - t0
        finally:
            gw.stop()
    assert res1.state is RunState.COMPLETE and res8.state is RunState.COMPLETE
    single = (single_a + single_b) / 2
    per_step = wall1 / args.steps
    fig = {
        "steps": args.steps,
        "dry_run_s": round(statistics.median(dry), 3),
        "live_total_s": round(wall1, 2),
        "per_step_ms": round(per_step * 1000, 3),
        "single_delegation_ms": round(single * 1000, 3),
        "ratio_step_vs_single": round(per_step / single, 2),
        "live_total_parallel8_s": round(wall8, 2),
        "per_step_parallel8_ms": round(wall8 / args.steps * 1000, 3),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    print(f"{args.steps} steps in layers of {args.layer} with fan-in, instant agents")
    print(f"  dry run (load + plan + render the plan): {fig['dry_run_s']} s")
    print(f"  live, 1 in flight: {fig['live_total_s']} s total, {fig['per_step_ms']} ms/step")
    print(f"  single delegations (same run):          {fig['single_delegation_ms']} ms each")
    print(f"  ratio step / single delegation: {fig['ratio_step_vs_single']}")
    print(
        f"  live, 8 in flight: {fig['live_total_parallel8_s']} s total, "
        f"{fig['per_step_parallel8_ms']} ms/step"
    )
    print(f"  peak memory: {fig['peak_rss_mib']} MiB")
    if args.json:
        print(json.dumps(fig))
    return 0


if __name__ == "__main__":
    sys.exit(main())
