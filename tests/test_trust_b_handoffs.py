"""Handoffs that are not what they seem: a key written twice in one JSON object.

Python's ``json`` keeps the last of two equal keys, so ``"status": "failed", "status":
"complete"`` would read as complete. Refused wherever a handoff is parsed: the file the
engine waits for (engine/handoff.py) and the local gateway's receiver.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from engine.cli import orchestrate
from engine.files import new_run_id
from engine.gateway.server import LocalGateway
from engine.handoff import HandoffProblem, make_handoff, parse_handoff
from engine.store.file import handoff_path
from tests.helpers import demo_config, write_config
from tests.test_gateway import AUTH, client, demo_gw, start_gateway  # noqa: F401 - fixtures


def _twice(handoff: dict[str, Any]) -> str:
    """``handoff`` as JSON text with ``"status": "failed"`` written before its status."""
    text = json.dumps(handoff)
    return text.replace('"status": ', '"status": "failed", "status": ', 1)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('{"status": "failed", "status": "complete"}', "status"),
        ('{"usage": {"cost": 1, "cost": 0}}', "cost"),  # nested objects too
        ('[{"a": 1}, {"b": 1, "b": 2}]', "b"),
        ('{"\\u001b]0;x": 1, "\\u001b]0;x": 2}', "\\x1b]0;x"),  # named, escaped
    ],
)
def test_a_key_written_twice_is_refused_and_named(text: str, key: str) -> None:
    with pytest.raises(HandoffProblem) as info:
        parse_handoff(text, path=Path("h.json"))
    assert info.value.kind == "parse"
    assert f"key `{key}` is written twice" in str(info.value)


def test_equal_values_in_other_objects_are_fine() -> None:
    assert parse_handoff('{"a": {"x": 1}, "b": {"x": 2}}', path=Path("h.json")) == {
        "a": {"x": 1},
        "b": {"x": 2},
    }


#: A command agent that writes its handoff with ``"status": "failed"`` and then
#: ``"status": "complete"``: read naively, a failure recorded as a success.
TWICE = """import json, os
from pathlib import Path
from engine.handoff import make_handoff
h = make_handoff(run_id=os.environ["ORCH_RUN_ID"], agent=os.environ["ORCH_AGENT"],
                 status="complete", result="all good", confidence="high",
                 key=os.environ["ORCH_HANDOFF_KEY"])
text = json.dumps(h).replace('"status": ', '"status": "failed", "status": ', 1)
path = Path(os.environ["ORCH_HANDOFF_PATH"])
tmp = path.with_name(path.name + ".tmp")
tmp.write_text(text)
os.replace(tmp, path)
"""


def test_delegation_refuses_a_handoff_with_a_key_written_twice(tmp_path: Path) -> None:
    raw = demo_config(tmp_path)
    raw["gateway"]["agents"]["webster"] = {
        "kind": "command",
        "argv": [sys.executable, "-c", TWICE],
    }
    cfg = write_config(tmp_path, raw)
    res = CliRunner().invoke(
        orchestrate, ["webster", "go", "--caller", "manager", "--config", str(cfg), "--json"]
    )
    assert res.exit_code == 6, res.output  # unusable: refused, and again after the repair
    record = json.loads(res.output[res.output.index("{") :])
    assert record["envelope"]["outcome"] == "unusable"
    assert "key `status` is written twice" in record["envelope"]["error"]
    assert record["envelope"]["repairs"][0]["why"] == "parse"


def test_receiver_refuses_a_body_with_a_key_written_twice(
    demo_gw: LocalGateway,  # noqa: F811
    client: httpx.Client,  # noqa: F811
) -> None:
    run_id = new_run_id()
    body = make_handoff(run_id=run_id, agent="webster", status="complete", result="x")
    resp = client.post(
        f"{demo_gw.url}/handoffs/{run_id}",
        content=_twice(body).encode(),
        headers={**AUTH, "Content-Type": "application/json"},
    )
    assert resp.status_code == 400, resp.text
    assert "key `status` is written twice" in resp.json()["error"]
    assert not handoff_path(demo_gw.cfg.handoffs_dir, run_id).exists()
