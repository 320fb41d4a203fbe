"""The delegator takes any Pool: here a TokenPool over the in-memory store, not the file.

A real delegation through the embedded demo gateway holds a token of the injected pool
from dispatch to record, and leaves nothing in the pool directory the config names.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from engine.config import Config
from engine.delegate import DelegationRequest, open_delegator
from engine.pool import MemoryStore, PoolSettings, TokenPool

_T = TypeVar("_T")


def test_a_delegation_holds_a_token_of_the_injected_pool(demo_cfg: Config, tmp_path: Path) -> None:
    seen: list[list[str]] = []

    class Recording(MemoryStore):
        """Every state the pool commits, as the holders it lists (no state is missed,
        however quickly the token is taken and given back)."""

        def transact(self, fn: Callable[[bytes], tuple[_T, bytes | None, bool]]) -> _T:
            def record(data: bytes) -> tuple[_T, bytes | None, bool]:
                result, out, wake = fn(data)
                if out is not None:
                    seen.append([t["run_id"] for t in json.loads(out).get("tokens", [])])
                return result, out, wake

            return super().transact(record)

    store = Recording("seam", shared=True)
    settings = PoolSettings(dir=tmp_path / "never-created", max_tokens=1, adaptive=False)
    pool = TokenPool(settings, store=store, host="this-host")
    with open_delegator(demo_cfg, pool=pool) as delegator:
        result = delegator.delegate(
            DelegationRequest(target="webster", task="Find CTE of Zerodur", caller="manager")
        )
    assert result.outcome.value == "complete", result.record
    assert result.envelope["token_wait_ms"] >= 0
    assert "token_reclaimed" not in result.envelope
    assert [result.run_id] in seen  # the token was held by this delegation
    status = pool.status()
    assert (status["in_use"], status["queue"], status["reclaimed"]) == ([], [], [])
    assert not settings.dir.exists()  # the file store was never touched
