"""The delegator takes any Pool: here a TokenPool over the in-memory store, not the file.

A real delegation through the embedded demo gateway holds a token of the injected pool
from dispatch to record, and leaves nothing in the pool directory the config names.
"""

from __future__ import annotations

import threading
from pathlib import Path

from engine.config import Config
from engine.delegate import DelegationRequest, open_delegator
from engine.pool import MemoryStore, PoolSettings, TokenPool


def test_a_delegation_holds_a_token_of_the_injected_pool(demo_cfg: Config, tmp_path: Path) -> None:
    store = MemoryStore("seam", shared=True)
    settings = PoolSettings(dir=tmp_path / "never-created", max_tokens=1, adaptive=False)
    pool = TokenPool(settings, store=store, host="this-host")
    seen: list[list[str]] = []
    feed = store.changes()
    assert feed is not None
    stop = threading.Event()

    def watch() -> None:  # every state the pool goes through, as the holders it lists
        gen = feed.generation()
        while not stop.is_set():
            if feed.wait(gen, 0.2):
                gen = feed.generation()
                seen.append([t["run_id"] for t in pool.status()["in_use"]])

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    with open_delegator(demo_cfg, pool=pool) as delegator:
        result = delegator.delegate(
            DelegationRequest(target="webster", task="Find CTE of Zerodur", caller="manager")
        )
    stop.set()
    watcher.join(10)
    assert result.outcome.value == "complete", result.record
    assert result.envelope["token_wait_ms"] >= 0
    assert "token_reclaimed" not in result.envelope
    assert [result.run_id] in seen  # the token was held by this delegation
    status = pool.status()
    assert (status["in_use"], status["queue"], status["reclaimed"]) == ([], [], [])
    assert not settings.dir.exists()  # the file store was never touched
