#!/usr/bin/env python3
"""Concurrency of our engine, in one process: throughput and CPU per step at N in flight.

    python bench/peers/concurrency.py [--pairs 5] [--json]

Runs in-process (``prepare`` + ``WorkflowRunner``) on the embedded local gateway with the
pool off, so process start-up does not hide what the scheduler does:

- throughput: a flat workflow of ``--sleep-steps`` steps whose agent is a ``command`` agent
  running ``sleep 0.1``, with 16 in flight and with 1 (alternating, ``--pairs`` times);
  the figure is steps/s at 16 ÷ steps/s at 1 (the ideal is 16);
- CPU per step: the 200-step DAG (shapes.dag200) on instant ``echo`` agents with 20 in
  flight and with 1; the figure is this process's CPU time (all threads, the gateway's
  included) per step, at 20 ÷ at 1.

With --json the last line is one JSON object. ``--workdir DIR`` keeps the run's files in a
new directory inside DIR (see bench/delegation.py: deleting them slows the next run's file
creates); without it they go to a temp dir removed at the end.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import shapes  # noqa: E402


def write_config(directory: Path, *, sleep: float = 0.1) -> Path:
    """Our config: embedded gateway, echo agents and a sleeping command agent, pool off."""
    import yaml

    raw = {
        "handoffs_dir": str(directory / "handoffs"),
        "pool": {"enabled": False},
        "gateway": {
            "embedded": True,
            "workspaces_dir": str(directory / "workspaces"),
            "agents": {
                shapes.CALLER: {"kind": "echo"},
                shapes.AGENT: {"kind": "echo"},
                "sleeper": {"kind": "command", "argv": ["sleep", str(sleep)]},
            },
        },
        "agents": {
            shapes.CALLER: {"url": "local"},
            shapes.AGENT: {"url": "local"},
            "sleeper": {"url": "local"},
        },
    }
    path = directory / "orchestrator.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=5)
    ap.add_argument("--sleep-steps", type=int, default=32)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--workdir", type=Path, help="keep the run's files in a new dir here")
    args = ap.parse_args()

    from engine.config import load_config
    from engine.delegate import open_delegator
    from engine.runner import RunOptions, RunState, WorkflowRunner, prepare

    sys.path.insert(0, str(HERE.parent))
    from delegation import run_dir

    with run_dir(args.workdir, "bench-peers-conc-") as tmpname:
        tmp = Path(tmpname)
        cfg = load_config(write_config(tmp))
        sleepy = shapes.write_ours(shapes.flat("sleepy", args.sleep_steps), tmp, agent="sleeper")
        dag = shapes.write_ours(shapes.dag200(), tmp)
        n_dag = shapes.dag200().steps
        with open_delegator(cfg) as delegator:
            runner = WorkflowRunner(cfg, delegator)
            p_sleepy = prepare(cfg, str(sleepy), {})
            p_dag = prepare(cfg, str(dag), {})

            def run(prepared: object, parallel: int) -> tuple[float, float]:
                c0, t0 = time.process_time(), time.perf_counter()
                res = runner.start(prepared, RunOptions(max_parallel=parallel))  # type: ignore[arg-type]
                wall, cpu = time.perf_counter() - t0, time.process_time() - c0
                if res.state is not RunState.COMPLETE:
                    raise SystemExit(f"a bench run ended {res.state}, not complete")
                return wall, cpu

            run(p_dag, 20)  # warm-up: imports, connections, compiled schemas
            tput: list[float] = []
            cpu_ratio: list[float] = []
            w1s, w16s, c1s, c20s = [], [], [], []
            for k in range(args.pairs):
                order = (1, 16) if k % 2 == 0 else (16, 1)
                walls = {p: run(p_sleepy, p)[0] for p in order}
                tput.append(walls[1] / walls[16])
                w1s.append(walls[1])
                w16s.append(walls[16])
                order = (1, 20) if k % 2 == 0 else (20, 1)
                cpus = {p: run(p_dag, p)[1] for p in order}
                cpu_ratio.append(cpus[20] / cpus[1])
                c1s.append(cpus[1] / n_dag)
                c20s.append(cpus[20] / n_dag)
    fig = {
        "sleep_steps": args.sleep_steps,
        "pairs": args.pairs,
        "wall_1_s": round(statistics.median(w1s), 3),
        "wall_16_s": round(statistics.median(w16s), 3),
        "throughput_ratio_16_vs_1": round(statistics.median(tput), 2),
        "cpu_per_step_1_ms": round(statistics.median(c1s) * 1000, 3),
        "cpu_per_step_20_ms": round(statistics.median(c20s) * 1000, 3),
        "cpu_per_step_ratio_20_vs_1": round(statistics.median(cpu_ratio), 2),
    }
    print(
        f"{args.sleep_steps} steps of `sleep 0.1`: {fig['wall_1_s']} s with 1 in flight, "
        f"{fig['wall_16_s']} s with 16: throughput x{fig['throughput_ratio_16_vs_1']}"
    )
    print(
        f"200-step DAG, echo agents: CPU {fig['cpu_per_step_1_ms']} ms/step with 1 in flight, "
        f"{fig['cpu_per_step_20_ms']} ms/step with 20: ratio {fig['cpu_per_step_ratio_20_vs_1']}"
    )
    if args.json:
        print(json.dumps(fig))
    return 0


if __name__ == "__main__":
    sys.exit(main())
