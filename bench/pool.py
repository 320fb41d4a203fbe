"""Benchmark the token pool: acquire+release cost, alone and with processes contending.

    python bench/pool.py [--json] [--iterations 2000] [--procs 8] [--tokens 5]
                         [--wake auto|poll] [--store file|memory] [--dir DIR]

Prints p50 and p99 in microseconds for one acquire followed by one release, first by a
single process (uncontended), then by ``--procs`` processes looping at the same time on
one pool of the default size (5 tokens, so some of them queue; ``--tokens 8`` measures the
lock alone). ``--store memory`` keeps the state in the process instead of the pool
directory: the cost of the rules and the JSON alone, without locks and files (uncontended
only, since processes cannot share it). With ``--json`` the last line is one JSON object
with the figures. A benchmark reports; it never asserts timings.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from engine.pool import MemoryStore, PoolSettings, TokenPool


def _pool(pool_dir: Path) -> TokenPool:
    # Not adaptive: a busy benchmark host must not shrink the pool or trigger emergency
    # mode in the middle of the measurement.
    wake = os.environ.get("POOL_BENCH_WAKE", "auto")
    tokens = int(os.environ.get("POOL_BENCH_TOKENS", "5"))
    settings = PoolSettings(dir=pool_dir, adaptive=False, max_tokens=tokens)
    if os.environ.get("POOL_BENCH_STORE") == "memory":
        return TokenPool(settings, store=MemoryStore("bench"))
    return TokenPool(settings, wake=wake)


def _measure(pool: TokenPool, n: int, tag: str) -> list[float]:
    samples: list[float] = []
    clock = time.perf_counter
    for i in range(n):
        t0 = clock()
        lease = pool.acquire(run_id=f"{tag}-{i}", agent="bench", timeout=60)
        lease.release()
        samples.append((clock() - t0) * 1e6)
    return samples


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def _summary(values: list[float], seconds: float) -> dict[str, Any]:
    return {
        "ops": len(values),
        "p50_us": round(_percentile(values, 0.50), 1),
        "p99_us": round(_percentile(values, 0.99), 1),
        "max_us": round(max(values), 1),
        "ops_per_s": round(len(values) / seconds, 1) if seconds > 0 else None,
    }


def _worker(pool_dir: Path, n: int, go: Path, out: Path) -> None:
    pool = _pool(pool_dir)
    _measure(pool, 20, f"warm{os.getpid()}")
    out.with_suffix(".ready").touch()
    while not go.exists():  # start together so that the processes really contend
        time.sleep(0.001)
    samples = _measure(pool, n, f"w{os.getpid()}")
    out.write_text(json.dumps(samples), encoding="utf-8")


def _contended(pool_dir: Path, procs: int, n: int) -> dict[str, Any]:
    pool_dir.mkdir(parents=True)
    go = pool_dir.parent / "go"
    outs = [pool_dir.parent / f"worker-{i}.json" for i in range(procs)]
    children = [
        subprocess.Popen(
            [sys.executable, __file__, "--worker", str(pool_dir), str(n), str(go), str(out)]
        )
        for out in outs
    ]
    try:
        while not all(out.with_suffix(".ready").exists() for out in outs):
            if any(child.poll() is not None for child in children):
                raise SystemExit("a benchmark worker died before the start")
            time.sleep(0.01)  # let every worker import and warm up
        t0 = time.perf_counter()
        go.touch()
        for child in children:
            child.wait()
        seconds = time.perf_counter() - t0
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()
    samples: list[float] = []
    for out in outs:
        samples += json.loads(out.read_text(encoding="utf-8"))
    result = _summary(samples, seconds)
    result["procs"] = procs
    return result


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="end with one JSON line")
    parser.add_argument("--iterations", type=int, default=2000, help="uncontended loops")
    parser.add_argument("--procs", type=int, default=8, help="contending processes")
    parser.add_argument("--per-proc", type=int, default=500, help="loops per process")
    parser.add_argument("--dir", type=Path, help="where to put the pool (default: a temp dir)")
    parser.add_argument(
        "--wake",
        choices=["auto", "poll"],
        default="auto",
        help="how waiters wake: inotify when available (auto) or polling",
    )
    parser.add_argument("--tokens", type=int, default=5, help="pool size (default 5)")
    parser.add_argument(
        "--store",
        choices=["file", "memory"],
        default="file",
        help="where the state lives: the pool directory (file) or this process (memory)",
    )
    parser.add_argument("--worker", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    # Inherited by the worker processes.
    os.environ["POOL_BENCH_WAKE"] = args.wake
    os.environ["POOL_BENCH_TOKENS"] = str(args.tokens)
    os.environ["POOL_BENCH_STORE"] = args.store
    if args.worker:
        pool_dir, n, go, out = args.worker
        _worker(Path(pool_dir), int(n), Path(go), Path(out))
        return 0

    base = Path(tempfile.mkdtemp(prefix="pool-bench-", dir=args.dir))
    try:
        pool_dir = base / "pool"
        pool = _pool(pool_dir)
        _measure(pool, 100, "warm")
        t0 = time.perf_counter()
        alone = _summary(_measure(pool, args.iterations, "alone"), time.perf_counter() - t0)
        pool.close()
        shared = None
        if args.store == "file":
            shared = _contended(base / "shared" / "pool", args.procs, args.per_proc)
    finally:
        shutil.rmtree(base, ignore_errors=True)

    print(
        f"token pool: acquire+release, pool of {args.tokens} tokens on {base.parent} "
        f"(Python {platform.python_version()}, {os.cpu_count()} CPUs)"
    )
    print(
        f"  uncontended        {alone['ops']:>6} ops   p50 {alone['p50_us']:>8.1f} us   "
        f"p99 {alone['p99_us']:>8.1f} us   {alone['ops_per_s']:>8.0f} ops/s"
    )
    if shared is not None:
        print(
            f"  {args.procs} processes{'':<6} {shared['ops']:>6} ops   p50 "
            f"{shared['p50_us']:>8.1f} us   p99 {shared['p99_us']:>8.1f} us   "
            f"{shared['ops_per_s']:>8.0f} ops/s (all processes)"
        )
    if args.json:
        print(
            json.dumps(
                {
                    "bench": "pool",
                    "python": platform.python_version(),
                    "cpus": os.cpu_count(),
                    "tokens": args.tokens,
                    "wake": args.wake,
                    "store": args.store,
                    "uncontended": alone,
                    "contended": shared,
                }
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
