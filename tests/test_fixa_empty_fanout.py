"""An empty `for_each` skips the step, and a dependent that reads `steps.<id>.results`
still runs (docs/workflows.md, Fan-out: the `survey` example with no materials)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from click.testing import CliRunner

from engine.cli import workflow
from tests.helpers import demo_config, write_config

ROOT = Path(__file__).resolve().parent.parent


def _survey_example() -> str:
    text = (ROOT / "docs" / "workflows.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```yaml\n(name: survey\n.*?)```", text, flags=re.S)
    assert len(blocks) == 1
    return blocks[0]


def test_an_empty_fan_out_leaves_results_empty_for_its_dependents(tmp_path: Path) -> None:
    path = tmp_path / "survey.yaml"
    path.write_text(_survey_example(), encoding="utf-8")
    cfg = write_config(tmp_path, demo_config(tmp_path))
    res = CliRunner().invoke(
        workflow,
        ["run", str(path), "-i", "materials= , ", "--config", str(cfg), "--json", "-q"],
        catch_exceptions=False,
    )
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["status"] == "complete"
    assert summary["steps"]["research"]["status"] == "skipped"
    assert summary["steps"]["rank"]["status"] == "complete"
    drid = summary["steps"]["rank"]["delegation_run_id"]
    task = json.loads((tmp_path / "handoffs" / f"{drid}.json").read_text())["envelope"]["task"]
    assert task.startswith("Rank these 0 materials by CTE:")
