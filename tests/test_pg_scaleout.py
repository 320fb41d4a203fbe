"""Three orchestrator hosts share one PostgreSQL; one dies mid-way; nothing is lost.

Each host is a process (``tests/pg_worker.py``) with its own private directory and host
identity, its own receiver, and the shared store and pool. The agents are one hooks
service (a real HTTP server here) that plays each dispatched agent: after a short piece of
work it POSTs the handoff to the receiver named in its message, or, when that host is
down, to another host's receiver (as a load balancer in front of the receivers would).
Host ``h0`` is killed with SIGKILL while it has delegations and a workflow step in flight.

Counted: results lost (a handoff the agents delivered that the database does not hold),
agent runs started twice for one delegation, the most tokens held at once across hosts
(every state the pool committed is counted by a trigger of the test's), tokens held at the
end, and workflow runs that did not complete (the dead host's is taken over).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from engine.handoff import make_handoff
from engine.message import parse_handoff_block
from engine.pool import PoolSettings, TokenPool
from engine.pool.postgres import PostgresPoolStore
from engine.store.postgres import PostgresRunStore
from engine.store.postgres_db import Database
from tests.helpers import free_port

ROOT = Path(__file__).resolve().parents[1]
HOSTS = ("h0", "h1", "h2")
MAX_TOKENS = 4
LEASE_TTL = 3.0
RECEIVER_TOKEN = "sim-receiver-token-7f3a"
FARM_TOKEN = "sim-farm-token-19bc"
#: What the issue asks of the simulation: 60 delegations and 6 workflows over 3 hosts.
DELEGATIONS_PER_HOST = 20
WORKFLOWS_PER_HOST = 2
WORK_S = 0.3  # how long each agent works before it hands off
STEP_WORK_S = 1.0  # a workflow step's agent works longer: h0 dies with one in flight


class Farm:
    """The agents: a hooks API that accepts dispatches and delivers through receivers."""

    def __init__(self, receivers: list[str]) -> None:
        self.receivers = receivers
        self.lock = threading.Condition()
        self.posts: dict[str, int] = {}  # run id -> dispatch POSTs
        self.keys: dict[str, set[str]] = {}  # run id -> distinct Idempotency-Keys
        self.by_receiver: dict[str, list[str]] = {}
        self.steps: set[str] = set()  # run ids of workflow steps (their tasks say "side")
        self.delivered: dict[str, int] = {}  # run id -> receiver's HTTP status
        self.answers: dict[str, str] = {}  # run id -> receiver's answer when not 200
        self.stop_work = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                ok = self.headers.get("Authorization") == f"Bearer {FARM_TOKEN}"
                block = parse_handoff_block(body.get("message", ""))
                data = json.dumps({"ok": ok, "runId": "farm"}).encode()
                self.send_response(200 if ok else 401)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                if ok:
                    step = " side of " in body.get("message", "")
                    outer.accept(block, self.headers.get("Idempotency-Key") or "", step)

        class Server(ThreadingHTTPServer):
            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # a host killed in the middle of its POST: expected here

        self.server = Server(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def accept(self, block: dict[str, str], key: str, step: bool) -> None:
        run_id = block["run_id"]
        with self.lock:
            if step:
                self.steps.add(run_id)
            self.posts[run_id] = self.posts.get(run_id, 0) + 1
            first = run_id not in self.keys
            self.keys.setdefault(run_id, set()).add(key)
            base = block["receiver_url"].rsplit("/handoffs/", 1)[0]
            self.by_receiver.setdefault(base, []).append(run_id)
            self.lock.notify_all()
        if first:  # one agent run per delegation (a retried POST is the same run)
            work = STEP_WORK_S if step else WORK_S
            threading.Thread(target=self.work, args=(block, work), daemon=True).start()

    def work(self, block: dict[str, str], seconds: float) -> None:
        self.stop_work.wait(seconds)  # the agent's work
        handoff = make_handoff(run_id=block["run_id"], agent=block["agent"], status="complete",
                               result=f"done by {block['agent']}", key=block["key"])  # fmt: skip
        first = block["receiver_url"]
        others = [f"{r}/handoffs/{block['run_id']}" for r in self.receivers]
        for url in [first, *[u for u in others if u != first]]:
            try:
                r = httpx.post(url, json=handoff, timeout=10,
                               headers={"Authorization": f"Bearer {RECEIVER_TOKEN}"})  # fmt: skip
            except httpx.TransportError:
                continue  # that host is down: the next receiver
            with self.lock:
                self.delivered[block["run_id"]] = r.status_code
                if r.status_code != 200:
                    self.answers[block["run_id"]] = f"{url}: {r.text}"
                self.lock.notify_all()
            return

    def wait_for(self, cond: Any, limit: float = 60) -> None:
        with self.lock:
            assert self.lock.wait_for(cond, timeout=limit), "timed out"


class PoolWatch:
    """The most tokens the shared pool ever held: a trigger of the test's own (not of
    the schema) counts the tokens of every state committed to the pool's row."""

    def __init__(self, url: str) -> None:
        self.db = Database.from_url(url)
        with self.db.connect() as conn:
            conn.execute(_WATCH_SQL)

    def seen(self) -> tuple[int, int]:
        """(the most tokens in one committed state, how many states were committed)."""
        with self.db.connect() as conn:
            row = conn.execute("SELECT coalesce(max(tokens), 0), count(*) FROM pool_seen")
            most, states = row.fetchone()
        return int(most), int(states)


_WATCH_SQL = """
CREATE TABLE pool_seen (tokens integer NOT NULL);
CREATE FUNCTION pool_seen() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF length(NEW.state) > 0 THEN
        INSERT INTO pool_seen
        VALUES (jsonb_array_length(convert_from(NEW.state, 'UTF8')::jsonb -> 'tokens'));
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER pool_seen AFTER INSERT OR UPDATE ON pool_state
    FOR EACH ROW EXECUTE FUNCTION pool_seen();
"""


def _config(tmp_path: Path, url: str, host: str, port: int, farm: str) -> Path:
    agents = {n: {"url": farm, "token_env": "SIM_FARM_TOKEN"}
              for n in ("manager", "webster", "secretary", "tech-lead")}  # fmt: skip
    raw = {
        "handoffs_dir": str(tmp_path / host),
        "store": url,
        "receiver_url": f"http://127.0.0.1:{port}",
        "default_timeout": 60,
        "retry": {"delays": [0.05, 0.1, 0.2], "jitter": 0.0, "request_timeout": 5},
        "agents": agents,
        "acl": {"manager": ["*"]},
        "pool": {"enabled": True, "max_tokens": MAX_TOKENS, "min_tokens": MAX_TOKENS,
                 "adaptive": False, "lease_ttl": LEASE_TTL, "queue_limit": 200},  # fmt: skip
    }
    path = tmp_path / f"{host}.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


@pytest.fixture
def workers() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for p in started:
        if p.poll() is None:
            p.kill()
        p.wait(30)
        for stream in (p.stdout, p.stdin):
            if stream is not None:
                stream.close()


def test_three_hosts_share_runs_pool_and_handoffs_and_survive_one_dying(
    pg_url: str, tmp_path: Path, workers: list[subprocess.Popen[str]]
) -> None:
    ports = {h: free_port() for h in HOSTS}
    receivers = [f"http://127.0.0.1:{ports[h]}" for h in HOSTS]
    farm = Farm(receivers)
    farm.thread.start()
    watch = PoolWatch(pg_url)
    env = dict(os.environ, SIM_RECEIVER_TOKEN=RECEIVER_TOKEN, SIM_FARM_TOKEN=FARM_TOKEN,
               ORCH_RUN_LEASE_TTL=str(LEASE_TTL))  # fmt: skip
    lines: dict[str, list[dict[str, Any]]] = {h: [] for h in HOSTS}
    readers = []
    for host in HOSTS:
        cfg = _config(tmp_path, pg_url, host, ports[host], farm.url)
        jobs = {"port": ports[host], "delegations": DELEGATIONS_PER_HOST,
                "workflows": WORKFLOWS_PER_HOST, "deadline": 40}  # fmt: skip
        p = subprocess.Popen(
            [sys.executable, "-m", "tests.pg_worker", str(cfg), json.dumps(jobs)],
            cwd=ROOT, env=dict(env, ORCH_HOST_ID=host), stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL, text=True,
        )  # fmt: skip
        workers.append(p)

        def read(p: subprocess.Popen[str] = p, host: str = host) -> None:
            assert p.stdout is not None
            for line in p.stdout:
                lines[host].append(json.loads(line))

        t = threading.Thread(target=read, daemon=True)
        t.start()
        readers.append(t)

    # h0 dies once it has a workflow step and some delegations in flight at the agents
    h0 = receivers[0]

    conn = Database.from_url(pg_url).conn()

    def journaled_dispatches() -> set[str]:
        rows = conn.execute("SELECT body FROM run_events WHERE body LIKE '%step_dispatched%'")
        return {json.loads(b)["delegation_run_id"] for (b,) in rows}

    def h0_has_a_step_in_flight() -> bool:
        # A step the agents accepted from h0 and have not handed off: its dispatch may or
        # may not be in h0's journal yet (h0 is killed either way)
        steps = {r for r in farm.by_receiver.get(h0, []) if r in farm.steps}
        return bool(steps - set(farm.delivered))

    def all_runs_started() -> bool:
        (n,) = conn.execute("SELECT count(*) FROM runs").fetchone() or (0,)
        return int(n) == len(HOSTS) * WORKFLOWS_PER_HOST

    farm.wait_for(lambda: h0_has_a_step_in_flight() and all_runs_started())
    dispatch_journaled = bool(
        {r for r in farm.by_receiver[h0] if r in farm.steps} & journaled_dispatches()
    )
    workers[0].send_signal(signal.SIGKILL)
    assert workers[0].wait(30) == -signal.SIGKILL
    in_flight_at_kill = [r for r in farm.by_receiver[h0] if r not in farm.delivered]
    for p in workers[1:]:
        assert p.wait(90) == 0
    for t in readers:
        t.join(30)

    store = PostgresRunStore(Database.from_url(pg_url))
    # 0 lost: every handoff an agent delivered is in the database (recorded, or kept
    # for a caller that died: a reconcile records it once that caller's lease expires)
    farm.wait_for(lambda: set(farm.keys) <= set(farm.delivered))
    refused = {r: st for r, st in farm.delivered.items() if st != 200}
    assert refused == {}, (refused, farm.answers)
    stored = {r[0] for r in conn.execute("SELECT run_id FROM handoffs")}
    lost = set(farm.delivered) - stored
    assert lost == set()
    # 0 dispatched twice: one agent run per delegation, one Idempotency-Key per run
    twice = {r: k for r, k in farm.keys.items() if len(k) > 1}
    assert twice == {}
    # each process recorded its delegations under its own ORCH_HOST_ID
    hosts = {h for (h,) in conn.execute("SELECT DISTINCT host FROM delegations")}
    assert hosts == set(HOSTS), hosts
    # every workflow run ended complete, the dead host's taken over by another
    runs = store.list_runs()
    assert len(runs) == len(HOSTS) * WORKFLOWS_PER_HOST
    states = {r: (store.read_summary(r) or {}).get("status") for r in runs}
    if set(states.values()) != {"complete"}:
        (tmp_path / "unfinished-runs.json").write_text(json.dumps([
            (store.read_summary(r), [e for _, e in store.events(r)]) for r in runs
            if states[r] != "complete"], indent=1) + json.dumps(lines, indent=1))
    assert set(states.values()) == {"complete"}, [
        (store.read_summary(r), [e for _, e in store.events(r)]) for r in runs
        if states[r] != "complete"
    ]
    resumed = [ln for h in HOSTS[1:] for ln in lines[h] if "resumed" in ln]
    own = {ln["workflow"] for h in HOSTS[1:] for ln in lines[h] if "workflow" in ln}
    orphans = set(runs) - own  # h0's runs: taken over by another host
    assert len(orphans) == WORKFLOWS_PER_HOST, (orphans, lines)
    # (a host may also "resume" a run that ended between its two looks: a no-op)
    assert orphans <= {ln["resumed"] for ln in resumed}, lines
    assert {ln["state"] for ln in resumed} == {"complete"}, lines
    # the pool: never above max_tokens across hosts, none held at the end (the dead
    # host's reclaimed after the lease TTL)
    pool_most, pool_states = watch.seen()
    assert 0 < pool_most <= MAX_TOKENS, pool_most
    checker = TokenPool(
        PoolSettings(dir=tmp_path / "unused", max_tokens=MAX_TOKENS, min_tokens=MAX_TOKENS,
                     adaptive=False, lease_ttl=LEASE_TTL),  # fmt: skip
        store=PostgresPoolStore(Database.from_url(pg_url)),
        host="checker",
    )
    feed = checker.store.changes()
    assert feed is not None
    deadline = time.monotonic() + 4 * LEASE_TTL
    while checker.status()["in_use"] and time.monotonic() < deadline:
        feed.wait(feed.generation(), 0.5)  # the dead host's leases age meanwhile
    assert checker.status()["in_use"] == []
    checker.close()
    report = {
        "delegations_dispatched": len(farm.keys),
        "in_flight_at_kill": len(in_flight_at_kill),
        "step_dispatch_journaled_at_kill": dispatch_journaled,
        "lost": len(lost),
        "dispatched_twice": len(twice),
        "max_tokens_seen": pool_most,
        "pool_states_seen": pool_states,
        "runs_taken_over": len(orphans),
    }
    print(json.dumps(report))
    farm.stop_work.set()
    farm.server.shutdown()
    farm.server.server_close()
