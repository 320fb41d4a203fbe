"""The demo agents answer a step's `result_schema` with `data`, so the shipped
`material-survey` template completes on the demo gateway."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from engine.cli import workflow
from engine.gateway.demo_agent import demo_data, schema_of
from engine.runner import with_schema
from engine.workflow import value_problems
from tests.helpers import demo_config, write_config

ROOT = Path(__file__).resolve().parent.parent


def test_the_schema_in_the_task_is_answered_with_matching_data() -> None:
    schema = {
        "type": "object",
        "required": ["name", "n", "tags", "unit"],
        "properties": {
            "name": {"type": "string", "minLength": 12},
            "n": {"type": "integer", "minimum": 3},
            "x": {"type": "number", "exclusiveMinimum": 0},
            "tags": {"type": "array", "items": {"type": "string"}, "minItems": 2},
            "unit": {"enum": ["ppm/K", "ppb/K"]},
        },
    }
    task = with_schema("Find it.", schema) + "\n\n--- HANDOFF (required) ---\nrun_id: r1\n"
    assert schema_of(task) == schema
    data = demo_data(schema)
    assert value_problems(schema, data) == []
    assert data == {
        "name": "demo name...",
        "n": 3,
        "x": 1,
        "tags": ["demo tags", "demo tags"],
        "unit": "ppm/K",
    }
    assert schema_of("Find it.") is None


def test_material_survey_completes_on_the_demo_gateway(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, demo_config(tmp_path))
    res = CliRunner().invoke(
        workflow,
        [
            "run",
            str(ROOT / "engine" / "workflows" / "material-survey.yaml"),
            "-i",
            "materials=Zerodur, ULE, Invar 36",
            "-i",
            "requirements=CTE < 0.01 ppm/K",
            "--config",
            str(cfg),
            "--json",
            "-q",
        ],
        catch_exceptions=False,
    )
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["status"] == "complete"
    assert {k: v["status"] for k, v in summary["steps"].items()} == {
        "research": "complete",
        "rank": "complete",
        "file-note": "complete",
    }
    items = json.loads((Path(summary["run_dir"]) / "research.json").read_text())["items"]
    assert [i["handoff"]["data"]["material"] for i in items] == ["demo material"] * 3
    assert all("[demo output from webster" in i["handoff"]["result"] for i in items)
