"""Option checks of `metrics` and `orchestrate agents systemd`: one `error:` paragraph,
exit 2, never click's usage block."""

from __future__ import annotations

from pathlib import Path

from engine.cli import orchestrate
from engine.cli.metrics import metrics
from tests.helpers import demo_config, write_config
from tests.servekit import cli


def _config(tmp_path: Path) -> Path:
    (tmp_path / "handoffs").mkdir()
    return write_config(tmp_path, demo_config(tmp_path))


def _one_paragraph(output: str) -> None:
    assert output.startswith("error: "), output
    assert "Usage:" not in output and "Traceback" not in output, output


def test_an_empty_since_is_refused(tmp_path: Path) -> None:
    res = cli(metrics, "text", "--since", "", "--config", str(_config(tmp_path)))
    assert res.exit_code == 2, res.output
    _one_paragraph(res.output)
    assert "`--since` is empty" in res.output


def test_an_unknown_workflow_is_reported_as_an_unknown_agent_is(tmp_path: Path) -> None:
    config = str(_config(tmp_path))
    res = cli(metrics, "json", "--workflow", "nonexistent-wf", "--config", config)
    assert res.exit_code == 2, res.output
    _one_paragraph(res.output)
    assert "unknown workflow `nonexistent-wf` (`--workflow`)" in res.output
    agent = cli(metrics, "json", "--agent", "nonexistent-agent", "--config", config)
    assert agent.exit_code == 2 and "unknown agent" in agent.output
    # a workflow the config can run, with no run yet, is no error
    from engine.config import load_config
    from engine.workflow import list_workflows

    known = [row[0] for row in list_workflows(load_config(Path(config)))]
    assert known, "the demo config finds workflows"
    ok = cli(metrics, "json", "--workflow", known[0], "--config", config)
    assert ok.exit_code == 0, ok.output


def test_a_file_given_for_a_directory_is_one_paragraph(tmp_path: Path) -> None:
    config = str(_config(tmp_path))
    afile = tmp_path / "afile"
    afile.write_text("x")
    res = cli(metrics, "text", "--handoffs-dir", str(afile))
    assert res.exit_code == 2, res.output
    _one_paragraph(res.output)
    assert "is not an existing directory" in res.output
    res = cli(orchestrate, "agents", "systemd", "--out", str(afile), "--config", config)
    assert res.exit_code == 2, res.output
    _one_paragraph(res.output)
    assert f"--out `{afile}` is a file" in res.output
