#!/usr/bin/env python3
"""Benchmark: what `orchestrate serve` adds to a delegation, and its SSE fan-out.

    python bench/serve.py [--json] [-n 200] [--subscribers 50] [--steps 120]

One local gateway with in-process `echo` agents (they answer at once) serves both sides,
in the same handoffs directory, in alternating batches:

- in-process: ``Delegator.delegate`` in this process (the engine's API);
- server: ``POST /v1/delegations`` then ``GET /v1/delegations/{id}/wait`` on an
  `orchestrate serve` process over keep-alive HTTP: the added latency is the difference.

SSE: ``--subscribers`` clients follow one run's stream (``/v1/runs/{id}/stream``) while it
runs ``--steps`` echo steps (the run waits at a gate until all are connected); delivery
latency is the time from an event's journal stamp (``at``) to its arrival at a
subscriber. The server's RSS is read from /proc before and during the fan-out.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import yaml

GW_TOKEN = "bench-gw-token-0123456789abcdef"
API_TOKEN = "bench-api-token-0123456789abcdef"


def pct(values: list[float], q: float) -> float:
    """The q-th percentile (nearest rank) of values."""
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[k]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def busy_workflow(path: Path, steps: int) -> None:
    layers = [[f"s{i}" for i in range(j, min(j + 8, steps))] for j in range(0, steps, 8)]
    out: list[dict[str, Any]] = [
        {"id": "start", "agent": "webster", "task": "go", "gate": {"prompt": "go?"}}
    ]
    prev = ["start"]
    for layer in layers:
        for sid in layer:
            out.append({"id": sid, "agent": "webster", "task": f"step {sid}", "depends_on": prev})
        prev = layer
    path.write_text(
        yaml.safe_dump({"name": "busy", "caller": "manager", "steps": out}, sort_keys=False)
    )


def setup(tmp: Path, steps: int) -> tuple[Any, Any, Path]:
    from engine.config import load_config
    from engine.gateway.server import LocalGateway

    (tmp / "wf").mkdir()
    busy_workflow(tmp / "wf" / "busy.yaml", steps)
    raw: dict[str, Any] = {
        "handoffs_dir": str(tmp / "handoffs"),
        "gateway": {
            "embedded": False,
            "token_env": "BENCH_GW_TOKEN",
            "agents": {"manager": {"kind": "echo"}, "webster": {"kind": "echo"}},
        },
        "agents": {"manager": {"url": "local"}, "webster": {"url": "local"}},
        "pool": {"enabled": False},
        "workflow_dirs": [str(tmp / "wf")],
        "serve": {"tokens_env": "BENCH_API_TOKENS", "max_parallel": 8},
    }
    path = tmp / "orchestrator.yaml"
    path.write_text(yaml.safe_dump(raw))
    os.environ["BENCH_GW_TOKEN"] = GW_TOKEN
    os.environ["BENCH_API_TOKENS"] = f"bench:operate:{API_TOKEN}"
    gw = LocalGateway(load_config(path), token=GW_TOKEN).start()
    raw["gateway"]["port"] = int(gw.url.rsplit(":", 1)[1])
    path.write_text(yaml.safe_dump(raw))
    return load_config(path), gw, path


def start_server(path: Path) -> tuple[subprocess.Popen[str], str]:
    exe = Path(sys.executable).parent / "orchestrate"
    proc = subprocess.Popen(
        [str(exe), "serve", "--config", str(path), "--port", "0"],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stderr is not None
    for line in proc.stderr:
        if line.startswith("serving on "):
            threading.Thread(target=proc.stderr.read, daemon=True).start()
            return proc, line.split()[-1]
    raise SystemExit("the server did not start")


def via_server(client: httpx.Client) -> float:
    t0 = time.perf_counter()
    r = client.post(
        "/v1/delegations",
        json={"target": "webster", "task": "Find CTE of Zerodur", "caller": "manager"},
    )
    run_id = r.json()["runId"]
    while not client.get(f"/v1/delegations/{run_id}/wait", params={"timeout": 30}).json()["done"]:
        pass
    return time.perf_counter() - t0


async def _subscribe(url: str, run: str, n: int, ready: Any, go: Any) -> list[list[float]]:
    """``n`` SSE streams of one run in one event loop; latencies of the live events."""
    import asyncio

    headers = {"Authorization": f"Bearer {API_TOKEN}"}
    limits = httpx.Limits(max_connections=n + 5)
    connected = 0
    lat: list[list[float]] = [[] for _ in range(n)]

    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=120, limits=limits) as c:

        async def follow(i: int) -> None:
            nonlocal connected
            async with c.stream("GET", f"/v1/runs/{run}/stream") as resp:
                first = True
                async for line in resp.aiter_lines():
                    if not line.startswith("data: "):
                        continue
                    now = time.time()
                    if first:
                        first = False
                        connected += 1
                        if connected == n:
                            ready.set()
                    ev = json.loads(line[6:])
                    at = datetime.fromisoformat(ev["at"].replace("Z", "+00:00")).timestamp()
                    if go.value and at >= go.value:
                        lat[i].append((now - at) * 1000)
                    if ev["event"] == "run_finished":
                        return

        await asyncio.gather(*(follow(i) for i in range(n)))
    return lat


def _subscriber_process(url: str, run: str, n: int, ready: Any, go: Any, out: Any) -> None:
    import asyncio

    out.put(asyncio.run(_subscribe(url, run, n, ready, go)))


def fan_out(client: httpx.Client, url: str, subscribers: int, pid: int) -> dict[str, Any]:
    """Subscribers in their own process (one event loop), so they do not slow the gateway."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    run = client.post("/v1/runs", json={"workflow": "busy"}).json()["runId"]
    client.get(f"/v1/runs/{run}/wait", params={"until": "parked", "timeout": 60})
    ready, go, out = ctx.Event(), ctx.Value("d", 0.0), ctx.Queue()
    child = ctx.Process(target=_subscriber_process, args=(url, run, subscribers, ready, go, out))
    child.start()
    if not ready.wait(120):
        raise SystemExit("the subscribers did not connect")
    before = rss_mb(pid)
    go.value = time.time() - 0.001  # journal stamps have millisecond precision
    client.post(f"/v1/runs/{run}/steps/start/approve", json={})
    peak = before
    lat = None
    while lat is None:
        peak = max(peak, rss_mb(pid))
        try:
            lat = out.get(timeout=0.2)
        except Exception:  # queue.Empty: still streaming
            continue
    child.join(timeout=60)
    allv = [v for xs in lat for v in xs]
    return {
        "subscribers": subscribers,
        "events_per_subscriber": statistics.median(len(xs) for xs in lat),
        "delivery_p50_ms": round(pct(allv, 50), 2),
        "delivery_p99_ms": round(pct(allv, 99), 2),
        "rss_mb_before": round(before, 1),
        "rss_mb_peak": round(peak, 1),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[1])
    ap.add_argument("--json", action="store_true", help="last line: one JSON object")
    ap.add_argument("-n", type=int, default=200, help="delegations per side")
    ap.add_argument("--batch", type=int, default=20, help="alternation batch size")
    ap.add_argument("--subscribers", type=int, default=50)
    ap.add_argument("--steps", type=int, default=120, help="steps of the busy run")
    args = ap.parse_args()

    from engine.delegate import DelegationRequest, open_delegator

    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmpname:
        cfg, gw, path = setup(Path(tmpname), args.steps)
        proc, url = start_server(path)
        headers = {"Authorization": f"Bearer {API_TOKEN}"}
        try:
            with (
                open_delegator(cfg) as d,
                httpx.Client(base_url=url, headers=headers, timeout=60) as client,
            ):
                req = DelegationRequest(
                    target="webster", task="Find CTE of Zerodur", caller="manager", timeout=30
                )
                local: list[float] = []
                remote: list[float] = []
                for _ in range(3):  # warm up both
                    d.delegate(req)
                    via_server(client)
                while len(local) < args.n:
                    for _ in range(args.batch):
                        t0 = time.perf_counter()
                        d.delegate(req)
                        local.append(time.perf_counter() - t0)
                    for _ in range(args.batch):
                        remote.append(via_server(client))
                fan = fan_out(client, url, args.subscribers, proc.pid)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
            gw.stop()
    ms = [x * 1000 for x in local]
    rs = [x * 1000 for x in remote]
    doc = {
        "n": len(ms),
        "in_process_p50_ms": round(statistics.median(ms), 2),
        "in_process_p99_ms": round(pct(ms, 99), 2),
        "server_p50_ms": round(statistics.median(rs), 2),
        "server_p99_ms": round(pct(rs, 99), 2),
        "added_p50_ms": round(statistics.median(rs) - statistics.median(ms), 2),
        "sse": fan,
    }
    print(
        f"delegation, in-process API : p50 {doc['in_process_p50_ms']} ms, "
        f"p99 {doc['in_process_p99_ms']} ms (n={doc['n']})"
    )
    print(
        f"delegation, through serve  : p50 {doc['server_p50_ms']} ms, "
        f"p99 {doc['server_p99_ms']} ms; added p50 {doc['added_p50_ms']} ms"
    )
    print(
        f"SSE, {fan['subscribers']} subscribers on one run ({args.steps} steps, "
        f"{fan['events_per_subscriber']:.0f} events each): delivery p50 "
        f"{fan['delivery_p50_ms']} ms, p99 {fan['delivery_p99_ms']} ms; server RSS "
        f"{fan['rss_mb_before']} MB before, {fan['rss_mb_peak']} MB peak"
    )
    if args.json:
        print(json.dumps(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
