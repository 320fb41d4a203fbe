"""Model agents: an answer too large for a handoff is kept whole as an artifact, and the
handoff carries its start as `partial`; no corrective message (a second paid call)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from engine.config import load_config
from engine.delegate import DelegationRequest, Outcome, open_delegator
from tests import standins
from tests.helpers import demo_config, write_config

chat_api = standins.chat_api

HUGE = "Zerodur " * (5 * 1024 * 1024 // 8)  # 5 MiB of text


def test_an_oversized_answer_becomes_an_artifact_and_a_partial_handoff(
    tmp_path: Path, chat_api: Any
) -> None:
    api = chat_api(reply=lambda body: HUGE)
    raw = demo_config(tmp_path)
    raw["gateway"]["agents"]["webster"] = {
        "kind": "openai", "base_url": api.base_url, "model": "m",
    }
    cfg = load_config(write_config(tmp_path, raw))
    with open_delegator(cfg) as d:
        result = d.delegate(
            DelegationRequest(target="webster", task="Find CTE", caller="manager", timeout=60)
        )
    assert len(api.completions) == 1  # no repair: one paid call
    assert result.outcome is Outcome.PARTIAL, result.error
    rec = json.loads(result.record_path.read_text())
    assert rec["status"] == "partial"
    assert "repairs" not in rec["envelope"]
    (artifact,) = rec["artifacts"]
    assert Path(artifact).read_text(encoding="utf-8") == HUGE
    assert rec["result"].startswith("Zerodur Zerodur")
    assert len(rec["result"].encode()) < 70 * 1024
    assert f"the whole answer is in `{artifact}`" in rec["result"]
    assert not list((tmp_path / "handoffs").rglob("rejected/*"))


def test_a_base_url_with_a_query_keeps_it_after_the_path(tmp_path: Path, chat_api: Any) -> None:
    api = chat_api()
    raw = demo_config(tmp_path)
    raw["gateway"]["agents"]["webster"] = {
        "kind": "openai", "base_url": api.base_url + "?api-key=QUERYKEY77", "model": "m",
    }
    cfg = load_config(write_config(tmp_path, raw))
    with open_delegator(cfg) as d:
        result = d.delegate(
            DelegationRequest(target="webster", task="Find CTE", caller="manager", timeout=60)
        )
    assert result.outcome is Outcome.COMPLETE, result.error
    (call,) = api.completions
    assert call.query == {"api-key": ["QUERYKEY77"]}
    rec = result.record_path.read_text(encoding="utf-8")
    assert "QUERYKEY77" not in rec
