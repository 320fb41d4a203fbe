"""A token wait that ends in emergency mode says why (the load), when it ends, and that
the delegation timed out; its seconds are rounded.

A real ``TokenPool`` (file store) whose load source reads 9 (above ``emergency_load``), and
the real delegator with the embedded gateway's demo agents.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from engine.config import load_config
from engine.delegate import DelegationRequest, open_delegator
from engine.errors import DelegationTimeoutError
from engine.pool import PoolSettings, TokenPool
from engine.states import Outcome
from tests.helpers import demo_config, write_config


def _pool(tmp_path: Path) -> TokenPool:
    settings = PoolSettings(
        dir=tmp_path / "handoffs" / ".pool", max_tokens=2, adaptive=True, emergency_load=5.0,
        cooldown=30.0,
    )  # fmt: skip
    return TokenPool(settings, load_source=lambda: 9.0)


def test_the_message_says_emergency_and_when_it_ends(tmp_path: Path) -> None:
    pool = _pool(tmp_path)
    with pytest.raises(DelegationTimeoutError) as info:
        pool.acquire(run_id="orch-x", agent="webster", timeout=0.2349)
    text = info.value.message
    assert "emergency mode" in text
    assert "load was above `pool.emergency_load` (5)" in text
    ends = re.search(r"cooldown ends in (\d+) s\.", text)  # 30 s from the first look
    assert ends and 20 <= int(ends.group(1)) <= 30, text  # (a busy host takes a while)
    assert "within 0.2 s" in text
    assert not re.search(r"\d\.\d{2,}", text), text  # no 0.2349, no 29.9965
    assert "Raise the timeout or `pool.max_tokens`" not in text
    assert "raise `pool.emergency_load`" in text


def test_the_delegation_times_out_rather_than_errs(tmp_path: Path) -> None:
    raw = demo_config(tmp_path)
    raw["pool"] = {"max_tokens": 2, "adaptive": True, "emergency_load": 5.0, "cooldown": 30}
    cfg = load_config(write_config(tmp_path, raw))
    with open_delegator(cfg, pool=_pool(tmp_path)) as d:
        result = d.delegate(
            DelegationRequest(target="webster", task="t", caller="manager", timeout=0.5)
        )
    assert result.outcome is Outcome.TIMEOUT
    assert result.exit_code == 4
    assert (result.record.get("envelope") or result.record)["outcome"] == "timeout"
