"""Seed 004's handoffs: a 1.0 handoff whose `timestamp` has no zone. Under
`handoff_key: optional` (agents on old instructions) it is read as UTC; otherwise the
refusal says the zone is missing. Real HTTP hooks stand-in, real files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from engine.config import load_config
from engine.delegate import DelegationRequest, Outcome, open_delegator
from engine.files import write_json_atomic
from tests.helpers import remote_config, write_config

NAIVE = "2026-02-15T10:00:00"


def _old_agent(block: dict[str, str]) -> None:
    """A seed-004 agent: version 1.0, no key, a timestamp without a zone."""
    write_json_atomic(
        Path(block["handoff_path"]),
        {
            "schemaVersion": "1.0",
            "runId": block["run_id"],
            "agent": block["agent"],
            "status": "complete",
            "result": "the answer",
            "confidence": "high",
            "timestamp": NAIVE,
        },
    )


def _delegate(tmp_path: Path, stand_in: Any, monkeypatch: pytest.MonkeyPatch, **extra: Any) -> Any:
    monkeypatch.setenv("STANDIN_TOKEN", "stand-in-token")
    server = stand_in(agent=_old_agent)
    cfg = load_config(write_config(tmp_path, remote_config(tmp_path, server.url, **extra)))
    with open_delegator(cfg) as d:
        return d.delegate(
            DelegationRequest(task="Find CTE", target="webster", caller="manager", timeout=60)
        )


def test_naive_timestamp_is_utc_under_optional_keys(
    tmp_path: Path, stand_in: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = _delegate(tmp_path, stand_in, monkeypatch, handoff_key="optional")
    assert result.outcome is Outcome.COMPLETE, result.error
    assert result.record["result"] == "the answer"
    assert result.record["timestamp"] == NAIVE + "Z"


def test_naive_timestamp_refusal_says_the_zone_is_missing(
    tmp_path: Path, stand_in: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = _delegate(tmp_path, stand_in, monkeypatch)
    assert result.outcome is Outcome.UNUSABLE and result.exit_code == 6
    text = str(result.error) + repr(result.envelope.get("rejected"))
    assert f"`{NAIVE}` has no time zone: add `Z` (UTC) or an offset such as `+00:00`" in text
