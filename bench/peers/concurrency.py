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

``--gateway-process`` runs the gateway (the same agents) in a child process instead, and
counts its CPU (all its threads, from ``/proc``) with this process's in CPU per step: what
an out-of-process gateway would cost (docs/performance.md, the ninth round).

With --json the last line is one JSON object. ``--workdir DIR`` keeps the run's files in a
new directory inside DIR (see bench/delegation.py: deleting them slows the next run's file
creates); without it they go to a temp dir removed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
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


_CHILD = """
import sys
from engine.config import load_config
from engine.gateway.server import LocalGateway
gw = LocalGateway(load_config(sys.argv[1]), token=sys.argv[2], port=0).start()
print(gw.url, flush=True)
gw.serve_forever()
"""
_TOKEN = "bench-gateway-token-7c1d"


@contextmanager
def gateway_process(directory: Path) -> Iterator[tuple[Path, int]]:
    """A gateway in a child process serving the agents of ``write_config``: yields a config
    whose agents are reached at its URL (token in $BENCH_GW_TOKEN), and the child's pid."""
    import yaml

    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(write_config(directory)), _TOKEN],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    try:
        assert child.stdout is not None
        url = child.stdout.readline().strip()
        if not url.startswith("http://"):
            raise SystemExit("the gateway process did not start")
        raw = yaml.safe_load((directory / "orchestrator.yaml").read_text(encoding="utf-8"))
        raw["gateway"]["embedded"] = False
        raw["agents"] = {
            n: {"url": url, "token_env": "BENCH_GW_TOKEN", "agent_id": n} for n in raw["agents"]
        }
        os.environ["BENCH_GW_TOKEN"] = _TOKEN
        path = directory / "orchestrator-remote.yaml"
        path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
        yield path, child.pid
    finally:
        os.environ.pop("BENCH_GW_TOKEN", None)
        child.terminate()
        child.wait(10)
        if child.stdout is not None:
            child.stdout.close()


def cpu_of(pid: int | None) -> float:
    """Seconds on CPU of the live threads of process ``pid`` (0 for None), from schedstat."""
    if pid is None:
        return 0.0
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/schedstat", encoding="ascii") as f:
                total += int(f.read().split()[0])
        except OSError:  # a thread that just ended (its time is lost: rare, small)
            pass
    return total / 1e9


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=5)
    ap.add_argument("--sleep-steps", type=int, default=32)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--workdir", type=Path, help="keep the run's files in a new dir here")
    ap.add_argument("--gateway-process", action="store_true", help="the gateway in a child process")
    args = ap.parse_args()

    from engine.config import load_config
    from engine.delegate import open_delegator
    from engine.runner import RunOptions, RunState, WorkflowRunner, prepare

    sys.path.insert(0, str(HERE.parent))
    from delegation import run_dir

    with (
        run_dir(args.workdir, "bench-peers-conc-") as tmpname,
        _gateway(Path(tmpname), args.gateway_process) as (cfg_path, gw_pid),
    ):
        tmp = Path(tmpname)
        cfg = load_config(cfg_path)
        sleepy = shapes.write_ours(shapes.flat("sleepy", args.sleep_steps), tmp, agent="sleeper")
        dag = shapes.write_ours(shapes.dag200(), tmp)
        n_dag = shapes.dag200().steps
        with open_delegator(cfg) as delegator:
            runner = WorkflowRunner(cfg, delegator)
            p_sleepy = prepare(cfg, str(sleepy), {})
            p_dag = prepare(cfg, str(dag), {})

            def run(prepared: object, parallel: int) -> tuple[float, float]:
                c0, g0, t0 = time.process_time(), cpu_of(gw_pid), time.perf_counter()
                res = runner.start(prepared, RunOptions(max_parallel=parallel))  # type: ignore[arg-type]
                wall = time.perf_counter() - t0
                cpu = time.process_time() - c0 + cpu_of(gw_pid) - g0
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
        "gateway": "process" if args.gateway_process else "embedded",
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


@contextmanager
def _gateway(directory: Path, separate: bool) -> Iterator[tuple[Path, int | None]]:
    if separate:
        with gateway_process(directory) as (path, pid):
            yield path, pid
    else:
        yield write_config(directory), None


if __name__ == "__main__":
    sys.exit(main())
