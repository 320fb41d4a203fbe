"""The contract every RunStore backend passes: one test class, parametrized over backends.

A backend is a factory of stores over one location: every store the factory makes in a
test sees the same delegations and runs (as processes share a handoffs directory, or
hosts a database). A new backend (PostgreSQL next) joins by adding one factory to
``BACKENDS``; nothing else here names a backend.

Nothing is mocked: the file backend writes real files, takes real locks; liveness is
given its host, clock and PID check where a rule depends on them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from engine.config import config_from_dict
from engine.errors import ConfigError, RunStateError
from engine.files import new_run_id, utcnow_iso
from engine.handoff import key_hash, make_handoff, new_key
from engine.store import FileRunStore, RunStore, open_signals, open_store, waiter_alive
from engine.store.liveness import this_host


@dataclass
class Backend:
    """Makes stores over one shared location; ``child`` is Python source that defines
    ``store``, the same store opened in another process (None: in-process only)."""

    name: str
    make: Callable[[], RunStore]
    child: str | None = None


def _file_backend(tmp_path: Path) -> Backend:
    root = tmp_path / "handoffs"
    child = (
        "from pathlib import Path\n"
        "from engine.store import FileRunStore\n"
        f"store = FileRunStore(Path({str(root)!r}))\n"
    )
    return Backend("file", lambda: FileRunStore(root), child)


def _postgres_backend(url: str) -> Backend:
    from engine.store.postgres import PostgresRunStore
    from engine.store.postgres_db import Database

    child = (
        "from engine.store.postgres import PostgresRunStore\n"
        "from engine.store.postgres_db import Database\n"
        f"store = PostgresRunStore(Database.from_url({url!r}))\n"
    )
    return Backend("postgres", lambda: PostgresRunStore(Database.from_url(url)), child)


BACKENDS: dict[str, Callable[[Path], Backend]] = {"file": _file_backend}
#: Backends over a database: made from the URL of a fresh, migrated one.
DB_BACKENDS: dict[str, Callable[[str], Backend]] = {"postgres": _postgres_backend}


@pytest.fixture(params=sorted(BACKENDS) + sorted(DB_BACKENDS))
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param in DB_BACKENDS:
        return DB_BACKENDS[request.param](request.getfixturevalue("pg_url"))
    return BACKENDS[request.param](tmp_path)


@pytest.fixture
def store(backend: Backend) -> RunStore:
    return backend.make()


def _envelope(key: str, *, target: str = "webster", **extra: Any) -> dict[str, Any]:
    env: dict[str, Any] = {
        "caller": "manager",
        "target": target,
        "task": "find the CTE of Zerodur",
        "parent_run_id": None,
        "chain": ["manager"],
        "created_at": utcnow_iso(),
        "outcome": "dispatched",
        "timeout_s": 60.0,
        "key_sha256": key_hash(key),
        "pid": os.getpid(),
        "host": this_host(),
        "renewed_at": utcnow_iso(),
    }
    env.update(extra)
    return env


def _gone(env: dict[str, Any]) -> dict[str, Any]:
    """The envelope of a caller that stopped waiting (nobody records for it)."""
    return dict(env, pid=2**22 + 12345)


def _handoff(
    run_id: str,
    key: str | None,
    *,
    status: str = "complete",
    result: str = "0.05 ppm/K",
    **kw: Any,
) -> dict[str, Any]:
    return make_handoff(run_id=run_id, agent="webster", status=status, result=result, key=key, **kw)


class TestDelegations:
    def test_a_pending_envelope_is_read_back_and_listed(self, store: RunStore) -> None:
        run_id, key = new_run_id(), new_key()
        env = _envelope(key)
        store.pending(run_id, env, sub=False)
        assert store.read_pending(run_id, sub=False) == env
        assert store.read_pending(run_id, sub=True) is None
        assert dict(store.list_pending(sub=False)) == {run_id: env}
        assert list(store.list_pending(sub=True)) == []
        assert store.read(run_id, sub=False) is None
        assert store.is_sub(run_id) is False

    def test_the_waiting_caller_records_the_handoff(self, store: RunStore) -> None:
        run_id, key = new_run_id(), new_key()
        env = _envelope(key)
        store.pending(run_id, env, sub=False)
        assert store.deliver(run_id, sub=False, envelope=env).state == "absent"
        store.put_handoff(run_id, _handoff(run_id, key), sub=False)
        assert store.has_handoff(run_id, sub=False)
        got = store.deliver(run_id, sub=False, envelope=env)
        assert got.state == "recorded"
        assert got.record is not None and got.record["status"] == "complete"
        record = store.read(run_id, sub=False)
        assert record is not None
        assert record["result"] == "0.05 ppm/K" and "key" not in record
        assert record["envelope"]["outcome"] == "complete"
        assert record["envelope"]["key_verified"] is True
        assert record["envelope"]["late"] is False
        assert store.read_pending(run_id, sub=False) is None
        assert got.record_path == store.record_locator(run_id, sub=False)

    def test_a_live_waiter_is_left_to_record_its_own_handoff(self, store: RunStore) -> None:
        run_id, key = new_run_id(), new_key()
        store.pending(run_id, _envelope(key), sub=False)
        store.put_handoff(run_id, _handoff(run_id, key), sub=False)
        assert store.deliver(run_id, sub=False).state == "waiting"
        assert store.reconcile(sub=False) == []
        assert store.read(run_id, sub=False) is None

    def test_a_handoff_after_the_timeout_is_recorded_late(self, store: RunStore) -> None:
        run_id, key = new_run_id(), new_key()
        env = _envelope(key)
        store.pending(run_id, env, sub=False)
        ended = dict(env, outcome="timeout", ended_at=utcnow_iso(), error="no handoff")
        _, timed_out = store.finalize(run_id, ended, sub=False, keep_pending=True, agent="webster")
        assert timed_out["envelope"]["outcome"] == "timeout" and "status" not in timed_out
        assert store.read(run_id, sub=False) == timed_out
        assert store.read_pending(run_id, sub=False) == ended
        store.put_handoff(run_id, _handoff(run_id, key), sub=False)
        written = store.reconcile(sub=False)
        assert written == [store.record_locator(run_id, sub=False)]
        record = store.read(run_id, sub=False)
        assert record is not None and record["status"] == "complete"
        assert record["envelope"]["supersedes"] == "timeout"
        assert record["envelope"]["late"] is True
        assert store.read_pending(run_id, sub=False) is None

    def test_an_ending_without_keep_pending_drops_the_envelope(self, store: RunStore) -> None:
        run_id, key = new_run_id(), new_key()
        env = _envelope(key)
        store.pending(run_id, env, sub=False)
        errored = dict(env, outcome="errored", error="HTTP 400")
        path, record = store.finalize(run_id, errored, sub=False, keep_pending=False)
        assert path == store.record_locator(run_id, sub=False)
        assert store.read(run_id, sub=False) == record
        assert store.read_pending(run_id, sub=False) is None
        assert list(store.list_pending(sub=False)) == []

    def test_a_forged_key_is_refused_and_kept(self, store: RunStore) -> None:
        run_id, key = new_run_id(), new_key()
        store.pending(run_id, _gone(_envelope(key)), sub=False)
        store.put_handoff(run_id, _handoff(run_id, new_key()), sub=False)
        got = store.deliver(run_id, sub=False)
        assert got.state == "refused" and got.problem.kind == "key"
        assert got.kept is not None
        assert store.read(run_id, sub=False) is None
        pending = store.read_pending(run_id, sub=False)
        assert pending is not None
        assert [r["file"] for r in pending["rejected"]] == [str(got.kept)]
        assert not store.has_handoff(run_id, sub=False)

    def test_a_delegation_sent_again_accepts_the_key_of_its_first_message(
        self, store: RunStore
    ) -> None:
        """Its sender died after the gateway accepted the message; sent again under the
        same Idempotency-Key with a new key, the gateway ran the first message only, so the
        agent's handoff carries the first key: it is taken, a forged one is not."""
        run_id, first, second = new_run_id(), new_key(), new_key()
        store.pending(run_id, _envelope(first), sub=False)
        again = _envelope(second)
        store.pending(run_id, again, sub=False)
        pending = store.read_pending(run_id, sub=False)
        assert pending is not None and pending["earlier_key_sha256"] == [key_hash(first)]
        assert pending["key_sha256"] == key_hash(second)
        store.put_handoff(run_id, _handoff(run_id, new_key()), sub=False)
        forged = store.deliver(run_id, sub=False, envelope=again)
        assert forged.state == "refused" and forged.problem.kind == "key"
        store.put_handoff(run_id, _handoff(run_id, first), sub=False)
        got = store.deliver(run_id, sub=False, envelope=again)
        assert got.state == "recorded", got
        record = store.read(run_id, sub=False)
        assert record is not None and record["result"] == "0.05 ppm/K"
        assert record["envelope"]["key_verified"] is True
        # the same envelope written again (a renewal) keeps the earlier key
        other = new_run_id()
        store.pending(other, _envelope(first), sub=False)
        store.pending(other, _envelope(second), sub=False)
        store.pending(other, _envelope(second), sub=False)
        kept = store.read_pending(other, sub=False)
        assert kept is not None and kept["earlier_key_sha256"] == [key_hash(first)]

    def test_a_second_handoff_is_kept_and_listed(self, store: RunStore) -> None:
        run_id, key = new_run_id(), new_key()
        env = _envelope(key)
        store.pending(run_id, env, sub=False)
        store.put_handoff(run_id, _handoff(run_id, key), sub=False)
        assert store.deliver(run_id, sub=False, envelope=env).state == "recorded"
        store.put_handoff(run_id, _handoff(run_id, key, status="failed"), sub=False)
        got = store.deliver(run_id, sub=False)
        assert got.state == "duplicate"
        record = store.read(run_id, sub=False)
        assert record is not None and record["status"] == "complete"
        assert len(record["envelope"]["also_received"]) == 1

    def test_a_handoff_the_waiter_gave_up_on_is_set_aside(self, store: RunStore) -> None:
        run_id, key = new_run_id(), new_key()
        env = _envelope(key)
        store.pending(run_id, env, sub=False)
        store.put_handoff(run_id, {"runId": run_id}, sub=False)
        got = store.deliver(run_id, sub=False, envelope=env, grace=60.0)
        assert got.state == "partial"
        kept = store.reject(run_id, got.problem, env, sub=False)
        assert kept is not None
        assert env["rejected"][0]["file"] == str(kept)
        assert not store.has_handoff(run_id, sub=False)

    def test_nothing_known_and_nothing_there(self, store: RunStore) -> None:
        run_id, key = new_run_id(), new_key()
        assert store.deliver(run_id, sub=False).state == "absent"
        store.put_handoff(run_id, _handoff(run_id, key), sub=False)
        assert store.deliver(run_id, sub=False).state == "unknown"
        found, data = store.find(run_id)  # a handoff no delegation knows: shown as it is
        assert data["status"] == "complete" and "envelope" not in data and "key" not in data
        with pytest.raises(RunStateError, match="no record for `orch-x`"):
            store.find("orch-x")

    def test_find_and_tree_span_sub_delegations(self, store: RunStore) -> None:
        parent, child, key = new_run_id(), new_run_id(), new_key()
        penv = _envelope(key)
        store.pending(parent, penv, sub=False)
        cenv = _gone(_envelope(key, target="nx-expert", parent_run_id=parent, caller="webster"))
        store.pending(child, cenv, sub=True)
        assert store.is_sub(child) and not store.is_sub(parent)
        assert store.handoff_target(child, sub=True) != store.handoff_target(child, sub=False)
        _, pending = store.find(child)
        assert pending["envelope"]["target"] == "nx-expert" and "status" not in pending
        tree = store.tree(parent)
        assert tree is not None
        assert tree["outcome"] == "in flight"
        assert [c["run_id"] for c in tree["children"]] == [child]
        store.put_handoff(child, dict(_handoff(child, key), agent="nx-expert"), sub=True)
        assert store.reconcile(sub=True) == [store.record_locator(child, sub=True)]
        _, done = store.find(child)
        assert done["status"] == "complete"
        assert store.tree(child) is not None
        assert store.tree("orch-nothing") is None

    def test_annotate_replaces_the_record(self, store: RunStore) -> None:
        run_id, key = new_run_id(), new_key()
        env = _envelope(key)
        store.pending(run_id, env, sub=False)
        store.put_handoff(run_id, _handoff(run_id, key), sub=False)
        got = store.deliver(run_id, sub=False, envelope=env)
        assert got.record is not None
        record = dict(got.record)
        record["envelope"] = dict(record["envelope"], validation={"approved": True})
        store.annotate(run_id, record, sub=False)
        again = store.read(run_id, sub=False)
        assert again is not None and again["envelope"]["validation"] == {"approved": True}

    def test_the_latest_progress_line_replaces_the_one_before(self, backend: Backend) -> None:
        a, b = backend.make(), backend.make()
        run_id = new_run_id()
        assert a.read_progress(run_id, sub=False) is None
        first = {"text": "reading the datasheets", "at": utcnow_iso(), "count": 1}
        a.write_progress(run_id, first, sub=False)
        assert b.read_progress(run_id, sub=False) == first
        assert b.read_progress(run_id, sub=True) is None  # sub-delegations apart
        second = {"text": "comparing", "at": utcnow_iso(), "count": 2}
        b.write_progress(run_id, second, sub=False)
        assert a.read_progress(run_id, sub=False) == second

    def test_progress_of_a_sub_delegation_is_kept_apart(self, store: RunStore) -> None:
        run_id = new_run_id()
        line = {"text": "sub work", "at": utcnow_iso(), "count": 1}
        store.write_progress(run_id, line, sub=True)
        assert store.read_progress(run_id, sub=True) == line
        assert store.read_progress(run_id, sub=False) is None

    def test_progress_of_a_bad_run_id_is_refused(self, store: RunStore) -> None:
        from engine.errors import InvalidIdError

        with pytest.raises(InvalidIdError):
            store.write_progress("../x", {"text": "x", "at": utcnow_iso(), "count": 1},
                                 sub=False)

    def test_two_stores_over_one_location_see_each_other(self, backend: Backend) -> None:
        a, b = backend.make(), backend.make()
        run_id, key = new_run_id(), new_key()
        a.pending(run_id, _gone(_envelope(key)), sub=False)
        b.put_handoff(run_id, _handoff(run_id, key), sub=False)
        assert b.reconcile(sub=False) == [b.record_locator(run_id, sub=False)]
        record = a.read(run_id, sub=False)
        assert record is not None and record["status"] == "complete"


class TestRuns:
    def _create(self, store: RunStore) -> str:
        run_id = new_run_id("wf")
        store.create_run(run_id, {"runId": run_id, "workflow": "w", "plan": {}})
        return run_id

    def test_a_run_is_created_read_and_listed(self, store: RunStore) -> None:
        assert store.list_runs() == []
        run_id = self._create(store)
        assert store.run_exists(run_id) and not store.run_exists("wf-other")
        assert store.read_run(run_id) == {"runId": run_id, "workflow": "w", "plan": {}}
        other = self._create(store)
        assert store.list_runs() == sorted([run_id, other])

    def test_events_come_back_in_order_with_positions(self, store: RunStore) -> None:
        run_id = self._create(store)
        journal = store.journal(run_id)
        try:
            first = journal.append("run_started", pid=1)
            journal.append("step_started", step="a")
        finally:
            journal.close()
        again = store.journal(run_id)
        again.append("run_finished", status="complete")
        again.close()
        events = store.events(run_id)
        assert [n for n, _ in events] == [1, 2, 3]
        assert [e["event"] for _, e in events] == ["run_started", "step_started", "run_finished"]
        assert events[0][1] == first and "at" in first

    def test_concurrent_appends_are_all_kept(self, store: RunStore) -> None:
        run_id = self._create(store)
        journal = store.journal(run_id)

        def add(i: int) -> None:
            for j in range(20):
                journal.append("step_attempt", step=f"s{i}", n=j)

        threads = [threading.Thread(target=add, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        journal.close()
        got = sorted((e["step"], e["n"]) for _, e in store.events(run_id))
        assert got == sorted((f"s{i}", j) for i in range(4) for j in range(20))

    def test_step_results_and_summary(self, store: RunStore) -> None:
        run_id = self._create(store)
        assert store.read_step(run_id, "a") is None and store.read_summary(run_id) is None
        store.write_step(run_id, "a", {"state": "complete", "handoff": {"result": "x"}})
        store.write_step(run_id, "a", {"state": "failed"})
        store.write_summary(run_id, {"status": "failed"})
        assert store.read_step(run_id, "a") == {"state": "failed"}
        assert store.read_summary(run_id) == {"status": "failed"}

    def test_what_is_kept_is_masked_as_the_file_store_writes_it(self, store: RunStore) -> None:
        from engine.redact import register

        secret = "contract-secret-" + new_key()  # a run's secret input, once registered
        register(secret)
        run_id, key = new_run_id(), new_key()
        env = _envelope(key)
        store.pending(run_id, env, sub=False)
        store.put_handoff(run_id, _handoff(run_id, key, result=f"used {secret}"), sub=False)
        got = store.deliver(run_id, sub=False, envelope=env)
        assert got.record is not None
        kept = store.read(run_id, sub=False)
        assert kept is not None and secret not in json.dumps(kept) and "***" in kept["result"]
        wf = self._create(store)
        store.write_step(wf, "a", {"state": "complete", "handoff": {"result": secret}})
        store.write_summary(wf, {"status": "complete", "outputs": {"o": secret}})
        assert secret not in json.dumps([store.read_step(wf, "a"), store.read_summary(wf)])

    def test_one_executor_claims_a_run(self, backend: Backend) -> None:
        a, b = backend.make(), backend.make()
        run_id = self._create(a)
        assert not b.claimed(run_id)
        with a.claim(run_id):
            assert b.claimed(run_id)
            with pytest.raises(RunStateError, match="is being executed right now"):
                with b.claim(run_id):
                    pass
        assert not b.claimed(run_id)
        with b.claim(run_id):
            assert a.claimed(run_id)

    def test_cancel_is_requested_and_observed(self, backend: Backend) -> None:
        a, b = backend.make(), backend.make()
        run_id = self._create(a)
        assert not b.cancel_requested(run_id)
        a.request_cancel(run_id)
        assert b.cancel_requested(run_id)


class TestProcesses:
    """What another process (another executor, another waiter) sees through the store."""

    def _child(self, backend: Backend, body: str) -> subprocess.Popen[str]:
        if backend.child is None:
            pytest.skip(f"the {backend.name} store is not shared between processes")
        return subprocess.Popen(
            [sys.executable, "-c", backend.child + body],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=Path(__file__).resolve().parents[2],
        )

    def test_a_run_claimed_by_another_process(self, backend: Backend) -> None:
        store = backend.make()
        run_id = new_run_id("wf")
        store.create_run(run_id, {"runId": run_id})
        child = self._child(
            backend,
            f"import sys\nwith store.claim({run_id!r}):\n"
            "    print('held', flush=True)\n    sys.stdin.readline()\n",
        )
        try:
            assert child.stdout is not None and child.stdout.readline().strip() == "held"
            assert store.claimed(run_id)
            with pytest.raises(RunStateError, match=f"pid {child.pid}"):
                with store.claim(run_id):
                    pass
        finally:
            assert child.stdin is not None
            child.stdin.write("done\n")
            child.stdin.close()
            assert child.wait(30) == 0
            assert child.stdout is not None
            child.stdout.close()
        assert not store.claimed(run_id)

    def test_a_waiter_in_another_process_is_alive_until_it_exits(
        self, backend: Backend
    ) -> None:
        store = backend.make()
        run_id, key = new_run_id(), new_key()
        env = _envelope(key)
        child = self._child(
            backend,
            "import os, sys\n"
            f"env = dict({env!r}, pid=os.getpid())\n"
            f"store.pending({run_id!r}, env, sub=False)\n"
            "print('waiting', flush=True)\nsys.stdin.readline()\n",
        )
        try:
            assert child.stdout is not None and child.stdout.readline().strip() == "waiting"
            store.put_handoff(run_id, _handoff(run_id, key), sub=False)
            assert store.deliver(run_id, sub=False).state == "waiting"
        finally:
            assert child.stdin is not None
            child.stdin.write("done\n")
            child.stdin.close()
            assert child.wait(30) == 0
            assert child.stdout is not None
            child.stdout.close()
        assert store.reconcile(sub=False) == [store.record_locator(run_id, sub=False)]
        record = store.read(run_id, sub=False)
        assert record is not None and record["status"] == "complete"


class TestSignals:
    def test_a_waiter_wakes_when_the_handoff_is_put(self, store: RunStore) -> None:
        signals = open_signals(store)
        run_id, key = new_run_id(), new_key()
        store.pending(run_id, _envelope(key), sub=True)
        waiter = signals.expect(run_id, sub=True)
        try:
            assert waiter.wait(0) is False
            store.put_handoff(run_id, _handoff(run_id, key), sub=True)
            assert waiter.wait(10) is True
        finally:
            waiter.close()
        waiter.close()  # idempotent


# -- liveness: one rule for reconcile, routing and metrics ------------------------------

_NOW = 2_000_000_000.0


def _at(seconds_ago: float) -> str:
    from datetime import UTC, datetime

    stamp = datetime.fromtimestamp(_NOW - seconds_ago, UTC).isoformat(timespec="milliseconds")
    return stamp.replace("+00:00", "Z")


LIVENESS = [
    ("same host, live pid", {"host": "h1", "pid": 10}, True),
    ("same host, dead pid", {"host": "h1", "pid": 11}, False),
    ("same host, no pid", {"host": "h1"}, False),
    ("no host: taken as this host", {"pid": 10}, True),
    ("no host, dead pid", {"pid": 11}, False),
    ("other host, renewed 10 s ago", {"host": "h2", "pid": 11, "renewed_at": _at(10)}, True),
    ("other host, renewed 100 s ago", {"host": "h2", "pid": 10, "renewed_at": _at(100)}, False),
    ("other host, created 5 s ago", {"host": "h2", "created_at": _at(5)}, True),
    ("other host, no time", {"host": "h2", "pid": 10}, False),
    ("other host, bad time", {"host": "h2", "renewed_at": "yesterday"}, False),
    ("timed out", {"host": "h1", "pid": 10, "outcome": "timeout"}, False),
    ("orphaned", {"host": "h1", "pid": 10, "orphaned": True}, False),
]


@pytest.mark.parametrize(
    ("envelope", "alive"), [(e, a) for _, e, a in LIVENESS], ids=[c for c, _, _ in LIVENESS]
)
def test_waiter_alive(envelope: dict[str, Any], alive: bool) -> None:
    env = {"outcome": "dispatched", **envelope}
    got = waiter_alive(env, host="h1", now=lambda: _NOW, ttl=90.0, alive=lambda pid: pid == 10)
    assert got is alive


# -- the one place `store:` is resolved -------------------------------------------------


def _cfg(tmp_path: Path, **raw: Any) -> Any:
    base = {"agents": {"webster": {"url": "http://127.0.0.1:9", "token_env": "T"}}}
    return config_from_dict({**base, **raw}, path=tmp_path / "orchestrator.yaml")


@pytest.mark.parametrize(
    ("url", "where"),
    [
        ("file://./records", "records"),
        ("file://records", "records"),
        ("file:///ABS/handoffs", "/ABS/handoffs"),
        ("file://localhost/ABS/h", "/ABS/h"),
        ("file://../up", "../up"),
    ],
)
def test_store_key_resolves_to_a_file_store(tmp_path: Path, url: str, where: str) -> None:
    url = url.replace("/ABS", str(tmp_path))
    cfg = _cfg(tmp_path, store=url)
    store = open_store(cfg)
    expected = Path(where.replace("/ABS", str(tmp_path)))
    expected = expected if expected.is_absolute() else tmp_path / expected
    assert isinstance(store, FileRunStore)
    assert cfg.handoffs_dir == expected.resolve() and store.root == cfg.handoffs_dir
    assert store.location == f"file://{expected.resolve()}"


def test_without_store_key_the_handoffs_dir_is_the_store(tmp_path: Path) -> None:
    store = open_store(_cfg(tmp_path, handoffs_dir="h"))
    assert isinstance(store, FileRunStore) and store.root == (tmp_path / "h").resolve()


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (
            {"store": "redis://db/0"},
            "`store`: `redis` is not a known store scheme; use one of `file://`, "
            "`postgresql://` (e.g. `store: file://./handoffs`).",
        ),
        (
            {"store": "postgresql://orch:s3cr3t-pw@db:5432/orch"},
            "`store`: the PostgreSQL URL holds a password; never write it in "
            "orchestrator.yaml. Put it in an environment variable and name it: "
            "`postgresql://user@host:5432/db?password_env=ORCH_DB_PASSWORD` (or set PGPASSWORD).",
        ),
        (
            {"store": "postgresql://orch@db:5432"},
            "`store`: the PostgreSQL URL names no database; write "
            "`postgresql://user@host:5432/db`.",
        ),
        ({"store": "file://"}, "`store`: `file://` has no directory; write `file://./handoffs`."),
        (
            {"store": "file://./h", "handoffs_dir": "h"},
            "`store` and `handoffs_dir` both name where records go; keep one "
            "(`store: file://h` says the same as `handoffs_dir`).",
        ),
    ],
    ids=["scheme", "inline-password", "no-database", "empty", "both"],
)
def test_a_bad_store_key_is_one_clear_problem(
    tmp_path: Path, raw: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        _cfg(tmp_path, **raw)
    assert info.value.problems == [message]


@pytest.fixture(autouse=True)
def _close_watchers() -> Iterator[None]:
    yield
    from engine.watch import close_all

    close_all()
