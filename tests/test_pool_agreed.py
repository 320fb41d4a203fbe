"""Every host of a shared pool gives the same ``pool:`` settings (cap, queue, liveness).

Two hosts (``host`` names, one PostgreSQL pool) whose configs differ: the second is refused
with one paragraph (exit code 2) while the first holds a token, and the pool takes the
second's settings once it is idle. Two configs sharing one file pool agree the same way.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.errors import ConfigError
from engine.pool import PoolSettings, TokenPool
from engine.pool.postgres import PostgresPoolStore
from engine.pool.state import parse
from engine.store.postgres_db import Database


def _pool(url: str, host: str, tmp_path: Path, **settings: float) -> TokenPool:
    cfg = PoolSettings(dir=tmp_path / host, adaptive=False, **settings)  # type: ignore[arg-type]
    return TokenPool(cfg, store=PostgresPoolStore(Database.from_url(url)), host=host)


def test_a_host_with_other_settings_is_refused_while_the_pool_is_in_use(
    pg_url: str, tmp_path: Path
) -> None:
    a = _pool(pg_url, "orch-a", tmp_path, max_tokens=4, lease_ttl=60)
    b = _pool(pg_url, "orch-b", tmp_path, max_tokens=6, lease_ttl=30)
    held = a.acquire(run_id="a1", agent="webster", timeout=0)
    with pytest.raises(ConfigError) as refused:
        b.acquire(run_id="b1", agent="webster", timeout=0)
    text = refused.value.message
    assert refused.value.exit_code == 2
    assert "`pool.max_tokens` is 6 here but 4 there" in text
    assert "`pool.lease_ttl` is 30 here but 60 there" in text
    assert "host `orch-a`" in text and "queue_limit" in text
    assert "\n" not in text
    # nothing of b's was queued or held
    assert [t["run_id"] for t in a.status()["in_use"]] == ["a1"]
    assert a.status()["queue"] == []
    held.release()
    # idle now: b's settings become the pool's, and a is the one refused
    b_lease = b.acquire(run_id="b2", agent="webster", timeout=0)
    state = parse(PostgresPoolStore(Database.from_url(pg_url)).peek())
    assert state["agreed"]["by"] == "orch-b" and state["agreed"]["max_tokens"] == 6
    with pytest.raises(ConfigError, match="`pool.max_tokens` is 4 here but 6 there"):
        a.acquire(run_id="a2", agent="webster", timeout=0)
    b_lease.release()
    a.close()
    b.close()


def test_hosts_with_the_same_settings_share_the_pool(pg_url: str, tmp_path: Path) -> None:
    a = _pool(pg_url, "orch-a", tmp_path, max_tokens=2)
    b = _pool(pg_url, "orch-b", tmp_path, max_tokens=2)
    leases = [a.acquire(run_id="a1", agent="x", timeout=0),
              b.acquire(run_id="b1", agent="x", timeout=0)]  # fmt: skip
    assert sorted(t["run_id"] for t in a.status()["in_use"]) == ["a1", "b1"]
    for lease in leases:
        lease.release()
    a.close()
    b.close()


def test_configs_sharing_a_file_pool_must_agree_too(tmp_path: Path) -> None:
    """Two configs with one ``handoffs_dir`` share one file pool: as hosts of a shared
    store, the second is refused while the first holds a token under other settings."""
    a = TokenPool(PoolSettings(dir=tmp_path / "pool", adaptive=False, max_tokens=2))
    b = TokenPool(PoolSettings(dir=tmp_path / "pool", adaptive=False, max_tokens=6))
    held = a.acquire(run_id="a1", agent="x", timeout=0)
    doc = json.loads((tmp_path / "pool" / "state.json").read_text(encoding="utf-8"))
    assert doc["agreed"]["max_tokens"] == 2
    with pytest.raises(ConfigError) as refused:
        b.acquire(run_id="b1", agent="x", timeout=0)
    text = refused.value.message
    assert text.startswith(
        f"the token pool `{tmp_path / 'pool'}` is in use under other settings: "
        "`pool.max_tokens` is 6 here but 2 there (another config with the same "
        "`handoffs_dir`, or `pool.dir`, uses it)."
    )
    assert "\n" not in text
    assert [t["run_id"] for t in a.status()["in_use"]] == ["a1"]
    held.release()
    b.acquire(run_id="b2", agent="x", timeout=0).release()  # idle: b's settings now
    a.close()
    b.close()


def test_the_documented_refusal_is_the_one_given(pg_url: str, tmp_path: Path) -> None:
    import re

    doc = (Path(__file__).resolve().parents[1] / "docs" / "pool.md").read_text(encoding="utf-8")
    (shown,) = [b for b in re.findall(r"```text\n(.*?)```", doc, flags=re.S)
                if b.startswith("error: the shared token pool")]  # fmt: skip
    a = _pool(pg_url, "orch-a", tmp_path, max_tokens=4)
    b = _pool(pg_url, "orch-b", tmp_path, max_tokens=6)
    held = a.acquire(run_id="a1", agent="x", timeout=0)
    with pytest.raises(ConfigError) as refused:
        b.acquire(run_id="b1", agent="x", timeout=0)
    assert shown.strip() == f"error: {refused.value.message}"
    held.release()
    a.close()
    b.close()
