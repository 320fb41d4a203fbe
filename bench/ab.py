#!/usr/bin/env python3
"""Same-run A/B of one command against two copies of the engine, in alternating rounds.

    python bench/ab.py [--rounds 8] OLD_TREE NEW_TREE -- COMMAND...

``OLD_TREE`` and ``NEW_TREE`` are directories holding an ``engine/`` package (for
example ``git archive main engine | tar -x -C /some/dir``, and the worktree itself); each
timed process gets its directory first on ``PYTHONPATH``, so ``COMMAND`` must import the
engine through Python (``python -c 'from engine.cli import workflow_main; ...'``), not
through an installed console script's absolute path. Compile both trees first
(``python -m compileall -q DIR/engine``) so neither pays for bytecode. Run it from a
directory without an ``engine/`` package (not the worktree): ``python -c`` puts the
current directory ahead of ``PYTHONPATH``, so both copies would time the same engine.

One untimed warm-up round, then ``--rounds`` rounds; each runs both copies once, the order
alternating (A, B, then B, A) so drift in the machine's load falls on both. Prints the
median and minimum wall time and the median CPU time (user + system, children included,
from ``os.wait4``) of each, and NEW ÷ OLD: the median of the per-round wall ratios and
the ratio of the CPU medians. Exits 1 when a command fails.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time


def timed(command: list[str], tree: str) -> tuple[float, float]:
    """Wall and CPU seconds of one run of ``command`` with ``tree`` first on the path."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (tree, env.get("PYTHONPATH")) if p)
    start = time.perf_counter()
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"`{' '.join(command)}` failed with {tree} first on PYTHONPATH")
    return wall, usage.ru_utime + usage.ru_stime


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("old")
    ap.add_argument("new")
    ap.add_argument("command", nargs=argparse.REMAINDER)
    args = ap.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        ap.error("give the command after `--`")
    if os.path.isdir("engine"):
        ap.error(
            f"the current directory ({os.getcwd()}) holds an `engine/` package, which "
            "`python -c` imports ahead of PYTHONPATH, so both copies would time it; "
            "run from another directory (e.g. `cd /tmp`) with the trees' absolute paths"
        )
    walls: dict[str, list[float]] = {args.old: [], args.new: []}
    cpus: dict[str, list[float]] = {args.old: [], args.new: []}
    for n in range(args.rounds + 1):
        order = (args.old, args.new) if n % 2 == 0 else (args.new, args.old)
        for tree in order:
            wall, cpu = timed(command, tree)
            if n:  # round 0 warms the caches
                walls[tree].append(wall)
                cpus[tree].append(cpu)
    for tree in (args.old, args.new):
        print(
            f"{tree}: wall median {statistics.median(walls[tree]):.3f} s, "
            f"min {min(walls[tree]):.3f} s; CPU median {statistics.median(cpus[tree]):.3f} s"
        )
    ratios = [b / a for a, b in zip(walls[args.old], walls[args.new], strict=True)]
    cpu_ratio = statistics.median(cpus[args.new]) / statistics.median(cpus[args.old])
    wall_ratio = statistics.median(ratios)
    print(f"new / old: wall {wall_ratio:.3f} (median of rounds), CPU {cpu_ratio:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
