#!/usr/bin/env python3
"""Benchmark: the dry run of a template with 50 fan-out steps and 5 sub-workflows against
the dry run of a plain 55-step template, in the same process.

    python bench/dryrun.py [--json] [--rounds 7]

Each dry run is what `workflow run --dry-run` does: plan the template (every check,
sub-workflows planned too) and render the plan as text. The mixed template chains 50
`for_each` steps of 20 items each; after every tenth, a step runs a 3-step child workflow
whose input is that step's results. The plain template chains 55 steps. They run in
interleaved rounds (A, B, A, B, ...) after one warm-up each; prints min and median of each
and the ratio of the medians. With --json the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).parent))
from delegation import setup  # noqa: E402

CHILD = {
    "name": "child",
    "caller": "manager",
    "inputs": {"topic": {"required": True}},
    "steps": [
        {"id": "find", "agent": "webster", "task": "find {{ inputs.topic }}"},
        {
            "id": "check",
            "agent": "webster",
            "depends_on": ["find"],
            "task": "check {{ steps.find.result }}",
        },
        {
            "id": "sum",
            "agent": "webster",
            "depends_on": ["check"],
            "task": "sum {{ steps.check.result }}",
        },
    ],
    "outputs": {"summary": "{{ steps.sum.result }}"},
}


def mixed(fan_steps: int = 50, subs: int = 5) -> dict[str, Any]:
    """``fan_steps`` chained `for_each` steps; after every ``fan_steps // subs``-th, a
    sub-workflow step fed by its results."""
    steps: list[dict[str, Any]] = []
    every = fan_steps // subs
    for i in range(fan_steps):
        step: dict[str, Any] = {"id": f"f{i:02d}", "agent": "webster", "for_each": "inputs.list"}
        step["task"] = "item {{ item }}"
        if i:
            step["depends_on"] = [f"f{i - 1:02d}"]
            step["task"] += f" after {{{{ steps.f{i - 1:02d}.results[0] }}}}"
        steps.append(step)
        if (i + 1) % every == 0:
            steps.append(
                {
                    "id": f"sub{i:02d}",
                    "workflow": "child.yaml",
                    "depends_on": [f"f{i:02d}"],
                    "inputs": {"topic": f"{{{{ steps.f{i:02d}.results | join(', ') }}}}"},
                }
            )
    return {
        "name": "mixed",
        "caller": "manager",
        "inputs": {"list": {"default": ", ".join(f"m{k}" for k in range(20))}},
        "steps": steps,
    }


def plain(n: int) -> dict[str, Any]:
    steps: list[dict[str, Any]] = []
    for i in range(n):
        step: dict[str, Any] = {"id": f"s{i:02d}", "agent": "webster", "task": "step"}
        if i:
            step["depends_on"] = [f"s{i - 1:02d}"]
            step["task"] += f" after {{{{ steps.s{i - 1:02d}.result }}}}"
        steps.append(step)
    return {"name": "plain", "caller": "manager", "steps": steps}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()

    from engine.planview import dry_run_text
    from engine.runner import prepare

    with tempfile.TemporaryDirectory(prefix="bench-dry-") as tmpname:
        tmp = Path(tmpname)
        cfg, gw = setup(tmp)
        gw.stop()  # type: ignore[attr-defined]  # a dry run sends nothing
        (tmp / "child.yaml").write_text(yaml.safe_dump(CHILD, sort_keys=False))
        doc = mixed()
        (tmp / "mixed.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
        (tmp / "plain.yaml").write_text(yaml.safe_dump(plain(len(doc["steps"])), sort_keys=False))
        files = {"mixed": tmp / "mixed.yaml", "plain": tmp / "plain.yaml"}
        sizes: dict[str, int] = {}

        def once(key: str) -> float:
            t0 = time.perf_counter()
            p = prepare(cfg, str(files[key]), {})
            text = dry_run_text(p.plan, p.renderer)
            took = time.perf_counter() - t0
            sizes[key] = len(p.plan.steps)
            assert text, key
            return took

        times: dict[str, list[float]] = {"mixed": [], "plain": []}
        once("mixed"), once("plain")  # warm up (imports, template caches)
        for _ in range(args.rounds):
            for key in ("mixed", "plain"):
                times[key].append(once(key))

    def ms(xs: list[float]) -> tuple[float, float]:
        return round(min(xs) * 1000, 2), round(statistics.median(xs) * 1000, 2)

    fig = {
        "rounds": args.rounds,
        "steps": sizes,
        "dry_run_50_fan_out_5_sub_ms_min_median": ms(times["mixed"]),
        "dry_run_55_plain_ms_min_median": ms(times["plain"]),
        "ratio_median": round(
            statistics.median(times["mixed"]) / statistics.median(times["plain"]), 2
        ),
        "ratio_min": round(min(times["mixed"]) / min(times["plain"]), 2),
    }
    print(
        f"dry run: 50 for_each steps (20 items each) + 5 sub-workflows (3 steps each) "
        f"vs {sizes['plain']} plain steps, {args.rounds} interleaved rounds"
    )
    print(
        "  fan-out + sub-workflows (min/median): "
        f"{fig['dry_run_50_fan_out_5_sub_ms_min_median']} ms"
    )
    print(f"  plain                   (min/median): {fig['dry_run_55_plain_ms_min_median']} ms")
    print(f"  ratio (median / min): {fig['ratio_median']} / {fig['ratio_min']}")
    if args.json:
        print(json.dumps(fig))
    return 0


if __name__ == "__main__":
    sys.exit(main())
