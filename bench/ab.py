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

``--peer 'COMMAND ...'`` (a shell-quoted command line, e.g. Lobster's ``run --dry-run``)
is timed in the same rounds, first or last in turn, and each copy is also given as a
ratio to it (the median of the per-round ratios).
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import subprocess
import sys
import time


def timed(command: list[str], tree: str | None) -> tuple[float, float]:
    """Wall and CPU seconds of one run of ``command`` with ``tree`` first on the path
    (None: the environment as it is, for a peer's command)."""
    env = dict(os.environ)
    if tree is not None:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (tree, env.get("PYTHONPATH")) if p)
    start = time.perf_counter()
    quiet = subprocess.DEVNULL if tree is None else None  # a peer may report on stderr
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=quiet)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        where = f" with {tree} first on PYTHONPATH" if tree is not None else ""
        sys.exit(f"`{' '.join(command)}` failed{where}")
    return wall, usage.ru_utime + usage.ru_stime


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--peer", help="a peer's command line (shell-quoted), timed in the same rounds")
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
    peer = shlex.split(args.peer) if args.peer else None
    walls: dict[str, list[float]] = {args.old: [], args.new: [], "peer": []}
    cpus: dict[str, list[float]] = {args.old: [], args.new: [], "peer": []}
    for n in range(args.rounds + 1):
        order = [args.old, args.new] if n % 2 == 0 else [args.new, args.old]
        if peer is not None:
            order.insert(0 if n % 4 < 2 else 2, "peer")
        for tree in order:
            wall, cpu = timed(peer, None) if tree == "peer" and peer else timed(command, tree)
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
    if peer is not None:
        print(
            f"peer `{args.peer}`: wall median {statistics.median(walls['peer']):.3f} s, "
            f"min {min(walls['peer']):.3f} s; CPU median {statistics.median(cpus['peer']):.3f} s"
        )
        for name, tree in (("old", args.old), ("new", args.new)):
            per_round = [a / b for a, b in zip(walls[tree], walls["peer"], strict=True)]
            cpu = statistics.median(cpus[tree]) / statistics.median(cpus["peer"])
            print(f"{name} / peer: wall {statistics.median(per_round):.3f}, CPU {cpu:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
