#!/usr/bin/env python3
"""Benchmark: the engine's cost per delegation against a bare baseline, measured in one run.

    python bench/delegation.py [--json] [-n 1000] [--concurrency 32]

Both sides talk to the same local gateway and its in-process `echo` agent (which answers
at once), in the same handoffs directory, in alternating batches (A, B, A, B: the file
system's state drifts as files accumulate):

- engine: ``Delegator.delegate`` (ACL, pending envelope, message, keep-alive POST, shared
  inotify watch, parse, schema validation, record);
- bare: a keep-alive httpx POST of the same kind of message, then an inotify wake on the
  arriving handoff file and a ``json.loads`` of it: the floor of any such engine.

Prints median and p99 per delegation, their ratio, a 32-in-flight run, and the start-up
time of `orchestrate --help`. With --json the last line is one JSON object.

``--workdir DIR`` puts the run's files in a new directory inside DIR and keeps them: on
ext4 without a journal, deleting thousands of files makes the next file creates beside
them cost 10-20x for about half a minute (docs/performance.md, "Files"), so a run right
after another one's cleanup measures the disk, not the engine. Without it the files go to
a temp dir that is removed at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

TOKEN = "bench-token-0123456789abcdef"


def pct(values: list[float], q: float) -> float:
    """The q-th percentile (nearest rank) of values."""
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[k]


def setup(tmp: Path) -> tuple[object, object]:
    from engine.config import load_config
    from engine.gateway.server import LocalGateway

    raw = {
        "handoffs_dir": str(tmp / "handoffs"),
        "gateway": {
            "embedded": False,
            "token_env": "BENCH_GW_TOKEN",
            "agents": {"manager": {"kind": "echo"}, "webster": {"kind": "echo"}},
        },
        "agents": {"manager": {"url": "local"}, "webster": {"url": "local"}},
        "pool": {"enabled": False},
    }
    (tmp / "orchestrator.yaml").write_text(yaml.safe_dump(raw))
    gw = LocalGateway(load_config(tmp / "orchestrator.yaml"), token=TOKEN).start()
    raw["gateway"]["port"] = int(gw.url.rsplit(":", 1)[1])
    (tmp / "orchestrator.yaml").write_text(yaml.safe_dump(raw))
    os.environ["BENCH_GW_TOKEN"] = TOKEN
    return load_config(tmp / "orchestrator.yaml"), gw


class Bare:
    """The baseline: keep-alive POST, then an inotify wake on the handoff file's arrival (a
    create of a finished file, a rename, or a close after writing), then parse."""

    def __init__(self, url: str, directory: Path) -> None:
        import httpx
        from inotify_simple import INotify, flags

        self.client = httpx.Client()
        self.url = url + "/hooks/agent"
        self.dir = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.ino = INotify()
        self.ino.add_watch(str(directory), flags.CLOSE_WRITE | flags.MOVED_TO | flags.CREATE)
        self.headers = {"Authorization": f"Bearer {TOKEN}"}
        self.n = 0

    def once(self) -> float:
        self.n += 1
        run_id = f"bare-{os.getpid()}-{self.n}"
        name = f"{run_id}.json"
        msg = (
            f"Find CTE of Zerodur\n\n--- HANDOFF (required) ---\nrun_id: {run_id}\n"
            f"agent: webster\nhandoff_path: {self.dir / name}\n"
        )
        t0 = time.perf_counter()
        r = self.client.post(
            self.url,
            json={"message": msg, "agentId": "webster", "deliver": False, "timeoutSeconds": 30},
            headers=self.headers,
        )
        assert r.status_code == 200, r.status_code
        while True:
            events = self.ino.read(timeout=5000)
            if any(ev.name == name for ev in events):
                break
            if not events:  # bounded: never wait for ever
                raise SystemExit(f"no handoff at {self.dir / name} within 5 s")
        json.loads((self.dir / name).read_text())
        return time.perf_counter() - t0

    def close(self) -> None:
        self.client.close()
        self.ino.close()


@contextlib.contextmanager
def run_dir(workdir: Path | None, prefix: str) -> Iterator[str]:
    """A new directory for one run: inside ``workdir`` and kept, else a temp dir removed
    at the end."""
    if workdir is None:
        with tempfile.TemporaryDirectory(prefix=prefix) as name:
            yield name
        return
    workdir.mkdir(parents=True, exist_ok=True)
    yield tempfile.mkdtemp(prefix=prefix, dir=workdir)


def startup_ms(runs: int = 15) -> tuple[float, float]:
    exe = Path(sys.executable).parent / "orchestrate"
    cmd = [str(exe), "--help"] if exe.exists() else [sys.executable, "-m", "engine.cli"]
    samples, floor = [], []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        floor.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples) * 1000, statistics.median(floor) * 1000


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    ap.add_argument("--json", action="store_true", help="last line: one JSON object")
    ap.add_argument("-n", type=int, default=1000, help="delegations per phase")
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--batch", type=int, default=50, help="alternation batch size")
    ap.add_argument("--workdir", type=Path, help="keep the run's files in a new dir here")
    args = ap.parse_args()

    from engine.delegate import DelegationRequest, open_delegator

    with run_dir(args.workdir, "bench-deleg-") as tmpname:
        tmp = Path(tmpname)
        cfg, gw = setup(tmp)
        try:
            with open_delegator(cfg) as d:
                req = DelegationRequest(
                    target="webster", task="Find CTE of Zerodur", caller="manager", timeout=30
                )
                bare = Bare(gw.url, cfg.handoffs_dir)
                for _ in range(50):  # warm-up: connections, imports, compiled schema
                    d.delegate(req)
                    bare.once()
                engine_s: list[float] = []
                bare_s: list[float] = []
                while len(engine_s) < args.n:
                    for _ in range(min(args.batch, args.n - len(engine_s))):
                        t0 = time.perf_counter()
                        res = d.delegate(req)
                        engine_s.append(time.perf_counter() - t0)
                        assert res.outcome.value == "complete", res.outcome
                    for _ in range(args.batch):
                        bare_s.append(bare.once())
                bare.close()

                def one(_: int) -> float:
                    t0 = time.perf_counter()
                    res = d.delegate(req)
                    assert res.outcome.value == "complete", res.outcome
                    return time.perf_counter() - t0

                t0 = time.perf_counter()
                with ThreadPoolExecutor(args.concurrency) as ex:
                    conc = list(ex.map(one, range(args.n)))
                wall = time.perf_counter() - t0
        finally:
            gw.stop()
    start, floor = startup_ms()
    ms = 1000.0
    fig = {
        "n": args.n,
        # the engine's whole time per delegation (not engine minus bare: see ratio_p50)
        "engine_p50_ms": round(statistics.median(engine_s) * ms, 3),
        "engine_p99_ms": round(pct(engine_s, 99) * ms, 3),
        "bare_p50_ms": round(statistics.median(bare_s) * ms, 3),
        "bare_p99_ms": round(pct(bare_s, 99) * ms, 3),
        "ratio_p50": round(statistics.median(engine_s) / statistics.median(bare_s), 2),
        "concurrent": args.concurrency,
        "concurrent_p50_ms": round(statistics.median(conc) * ms, 3),
        "concurrent_p99_ms": round(pct(conc, 99) * ms, 3),
        "concurrent_per_s": round(args.n / wall, 1),
        "startup_ms": round(start, 1),
        "python_startup_ms": round(floor, 1),
    }
    # The names before `engine_*`, kept for one release for scripts that read them.
    fig["overhead_p50_ms"], fig["overhead_p99_ms"] = fig["engine_p50_ms"], fig["engine_p99_ms"]
    print(f"delegations: {args.n} sequential (alternating batches of {args.batch} with bare)")
    print(f"  engine   p50 {fig['engine_p50_ms']:8.3f} ms   p99 {fig['engine_p99_ms']:8.3f} ms")
    print(f"  bare     p50 {fig['bare_p50_ms']:8.3f} ms   p99 {fig['bare_p99_ms']:8.3f} ms")
    print(f"  ratio p50 engine/bare: {fig['ratio_p50']}")
    print(
        f"{args.n} with {args.concurrency} in flight: p50 {fig['concurrent_p50_ms']} ms, "
        f"p99 {fig['concurrent_p99_ms']} ms, {fig['concurrent_per_s']} delegations/s"
    )
    print(
        f"`orchestrate --help`: {fig['startup_ms']} ms (python -c pass: "
        f"{fig['python_startup_ms']} ms)"
    )
    if args.json:
        print(json.dumps(fig))
    return 0


if __name__ == "__main__":
    sys.exit(main())
