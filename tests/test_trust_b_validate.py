"""The validator's verdict: exactly `APPROVED:` approves; a question is shown, not lost.

``parse_verdict`` is held to a table; then the real CLI runs `--validate` with a command
agent as the validator on the embedded gateway.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from engine.cli import orchestrate
from engine.validate import parse_verdict
from tests.helpers import demo_config, write_config


def _h(result: str, status: str = "complete", **more: Any) -> dict[str, Any]:
    return {"status": status, "result": result, **more}


@pytest.mark.parametrize(
    ("handoff", "approved", "reasons"),
    [
        (_h("APPROVED: right and complete"), True, "right and complete"),
        (_h("  APPROVED:ok"), True, "ok"),
        (_h("REJECTED: CTE is off"), False, "CTE is off"),
        (_h("approved: looks fine"), False, "starts with neither `APPROVED:`"),
        (_h("Approved: looks fine"), False, "starts with neither `APPROVED:`"),
        (_h("APPROVEDISH nothing"), False, "starts with neither `APPROVED:`"),
        (_h("APPROVED: fine", status="failed"), False, "the validator answered failed"),
        (
            _h("need more", status="blocked", question="Which temperature range?"),
            False,
            "the validator asked a question instead of giving a verdict: Which temperature",
        ),
        (None, False, "the validator gave no answer"),
    ],
)
def test_parse_verdict(handoff: dict[str, Any] | None, approved: bool, reasons: str) -> None:
    got = parse_verdict(handoff)
    assert got[0] is approved
    assert reasons in got[1]


ASKER = """import os
from pathlib import Path
from engine.handoff import make_handoff, write_handoff
h = make_handoff(run_id=os.environ["ORCH_RUN_ID"], agent=os.environ["ORCH_AGENT"],
                 status="blocked", result="cannot judge yet", confidence="low",
                 key=os.environ["ORCH_HANDOFF_KEY"])
h["question"] = "Which temperature range counts?"
write_handoff(Path(os.environ["ORCH_HANDOFF_PATH"]), h)
"""


def _validate_with(tmp_path: Path, argv: list[str]) -> Any:
    raw = demo_config(tmp_path)
    raw["gateway"]["agents"]["auditor"] = {"kind": "command", "argv": argv}
    cfg = write_config(tmp_path, raw)
    args = ["webster", "Find CTE of Zerodur", "--caller", "manager", "--config", str(cfg)]
    return CliRunner().invoke(orchestrate, [*args, "--validate", "--validator", "auditor"])


def test_lowercase_approved_is_not_an_approval(tmp_path: Path) -> None:
    res = _validate_with(tmp_path, [sys.executable, "-c", "print('approved: looks fine')"])
    assert res.exit_code == 1, res.output
    assert "validation by auditor: REJECTED: the validator's answer starts with neither" in (
        res.output
    )


def test_a_validator_question_is_shown(tmp_path: Path) -> None:
    res = _validate_with(tmp_path, [sys.executable, "-c", ASKER])
    assert res.exit_code == 1, res.output
    assert "gave no answer" not in res.output
    assert (
        "REJECTED: the validator asked a question instead of giving a verdict: "
        "Which temperature range counts?"
    ) in res.output
    records = [
        json.loads(p.read_text())
        for p in (tmp_path / "handoffs").glob("orch-*.json")
        if "validation" in json.loads(p.read_text())["envelope"]
    ]
    assert (
        records
        and "Which temperature range counts?" in (records[0]["envelope"]["validation"]["reasons"])
    )
