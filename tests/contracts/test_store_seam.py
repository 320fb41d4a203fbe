"""The delegator takes any RunStore and any HandoffSignals: injected, never found globally.

A real delegation through the embedded demo gateway runs over a store that counts what
the delegator asks of it, and wakes through polling signals instead of inotify: the
shared inotify watchers are never created, and every store operation is a semantic one.
"""

from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from engine import watch
from engine.config import Config
from engine.delegate import DelegationRequest, open_delegator
from engine.store import FileRunStore, RunStore, Waiter


class CountingStore(FileRunStore):
    """The file store, counting each operation the engine calls on it."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.calls: Counter[str] = Counter()

    def __getattribute__(self, name: str) -> Any:
        attr = super().__getattribute__(name)
        if callable(attr) and not name.startswith("_") and name != "calls":
            super().__getattribute__("calls")[name] += 1
        return attr


class PollingWaiter:
    """Wakes when the store says a handoff is there; looks every 20 ms."""

    def __init__(self, store: RunStore, run_id: str, sub: bool) -> None:
        self._store, self._run_id, self._sub = store, run_id, sub
        self._closed = threading.Event()
        self._woken = threading.Event()

    def wait(self, timeout: float | None) -> bool:
        limit = 60.0 if timeout is None else timeout
        for _ in range(max(1, int(limit / 0.02))):
            if self._store.has_handoff(self._run_id, sub=self._sub) or self._woken.is_set():
                self._woken.clear()
                return True
            if self._closed.wait(0.02):
                return False
        return False

    def wake(self) -> None:
        self._woken.set()

    def close(self) -> None:
        self._closed.set()


class PollingSignals:
    """A second HandoffSignals: no inotify, no watcher registry."""

    def __init__(self, store: RunStore) -> None:
        self.store = store
        self.expected: list[str] = []

    def expect(self, run_id: str, *, sub: bool) -> Waiter:
        self.expected.append(run_id)
        return PollingWaiter(self.store, run_id, sub)


def test_a_delegation_runs_over_the_injected_store_and_signals(demo_cfg: Config) -> None:
    store = CountingStore(demo_cfg.handoffs_dir)
    signals = PollingSignals(store)
    with open_delegator(demo_cfg, store=store, signals=signals) as delegator:
        assert delegator.store is store and delegator.signals is signals
        result = delegator.delegate(
            DelegationRequest(target="webster", task="Find CTE of Zerodur", caller="manager")
        )
    assert result.outcome.value == "complete", result.record
    assert signals.expected == [result.run_id]
    assert store.calls["pending"] == 1  # one envelope write before dispatch, none after
    assert store.calls["deliver"] >= 1
    assert store.calls["finalize"] == 0
    record = store.read(result.run_id, sub=False)
    assert record is not None and record["status"] == "complete"
    assert record["envelope"]["host"] and record["envelope"]["renewed_at"]
    assert watch._registry == {}  # no shared inotify watcher was created


def test_a_long_wait_renews_its_envelope(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Readers on other hosts see a waiter alive by ``renewed_at``: a long wait rewrites it."""
    import engine.delegate
    from engine.config import load_config
    from engine.files import new_run_id, parse_iso
    from tests.helpers import demo_config, gated_agent, write_config

    go = tmp_path / "go"
    raw = demo_config(tmp_path)
    raw["gateway"]["agents"]["webster"] = gated_agent(go)
    cfg = load_config(write_config(tmp_path, raw))
    monkeypatch.setattr(engine.delegate, "RENEW_EVERY", 0.05)
    run_id = new_run_id()
    store = FileRunStore(cfg.handoffs_dir)
    pending_dir = store.records_dir(sub=False) / ".pending"
    waiter = watch.watcher_for(pending_dir).expect(f"{run_id}.json")
    results: list[Any] = []
    with open_delegator(cfg, store=store) as delegator:
        worker = threading.Thread(
            target=lambda: results.append(
                delegator.delegate(
                    DelegationRequest(target="webster", task="t", caller="manager", run_id=run_id)
                )
            )
        )
        worker.start()
        try:
            stamps: list[str] = []
            for _ in range(200):  # each write of the envelope wakes the watch
                waiter.wait(10)
                env = store.read_pending(run_id, sub=False)
                if env is not None and env["renewed_at"] not in stamps:
                    stamps.append(env["renewed_at"])
                if len(stamps) >= 3:
                    break
        finally:
            go.touch()
            worker.join(60)
            waiter.close()
    assert len(stamps) >= 3, stamps
    assert [parse_iso(s) for s in stamps] == sorted(parse_iso(s) for s in stamps)
    assert results and results[0].outcome.value == "complete", results
    assert store.read_pending(run_id, sub=False) is None
