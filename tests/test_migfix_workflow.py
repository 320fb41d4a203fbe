"""Migrating seed pipelines: a seed-style ``{design}`` placeholder in a task is sent as
written, so `workflow validate` (and a run) warn about it. Real CLI (click's runner)."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from engine.cli import workflow
from tests.helpers import demo_config, write_config

NO_ENV: dict[str, str | None] = {"ORCHESTRATOR_CONFIG": None, "ORCH_SERVER": None}

TEMPLATE = """\
name: review
caller: manager
inputs:
  design: {required: true}
steps:
  - id: draft
    agent: webster
    task: "Review {design} and keep {braces} as written"
  - id: check
    agent: tech-lead
    depends_on: [draft]
    task: "Check {draft} against {{ inputs.design }}"
"""


def _validate(tmp_path: Path, text: str) -> object:
    cfg = write_config(tmp_path, demo_config(tmp_path))
    wf = tmp_path / "review.yaml"
    wf.write_text(text, encoding="utf-8")
    return CliRunner(env=NO_ENV).invoke(
        workflow, ["validate", str(wf), "-i", "design=x", "--config", str(cfg)]
    )


def test_single_brace_placeholder_warns_but_validates(tmp_path: Path) -> None:
    res = _validate(tmp_path, TEMPLATE)
    assert res.exit_code == 0, res.output  # type: ignore[attr-defined]
    err = res.stderr  # type: ignore[attr-defined]
    lines = [ln for ln in err.splitlines() if ln.startswith("warning:")]
    assert len(lines) == 2, err
    assert "step `draft`" in lines[0] and "`{design}`" in lines[0]
    assert "`{{ inputs.design }}`" in lines[0]
    assert "step `check`" in lines[1] and "`{{ steps.draft.result }}`" in lines[1]
    assert "{braces}" not in err  # names neither an input nor a step: no warning
    assert "is valid" in res.stdout  # type: ignore[attr-defined]


def test_double_braces_give_no_warning(tmp_path: Path) -> None:
    text = TEMPLATE.replace("{design}", "{{ inputs.design }}").replace(
        "{draft}", "{{ steps.draft.result }}"
    )
    res = _validate(tmp_path, text)
    assert res.exit_code == 0, res.output  # type: ignore[attr-defined]
    assert "warning" not in res.stderr  # type: ignore[attr-defined]


SEED_PIPELINE = """\
name: seed
caller: manager
inputs: [design]
steps:
  - id: a
    agent: webster
    task: "x"
    parallel: true
  - id: b
    agent: webster
    task: "y"
    approval_gate: true
"""


def test_seed_pipeline_keys_get_advice(tmp_path: Path) -> None:
    res = _validate(tmp_path, SEED_PIPELINE)
    out = res.output  # type: ignore[attr-defined]
    assert res.exit_code != 0, out  # type: ignore[attr-defined]
    assert "max_parallel" not in out
    assert "`steps[0].parallel` is not a key: steps without `depends_on`" in out
    assert "already run in parallel" in out and "remove it" in out
    assert "`steps[1].approval_gate` is not a key" in out
    assert 'gate: {prompt: "Approve?"}' in out
    assert "of type an object" not in out
    assert "`inputs` must be a mapping of input names, not a list" in out
    assert "{name: {required: true, default: …}}" in out
    assert "`inputs: {design: {required: true}}`" in out


def test_a_run_warns_too(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, demo_config(tmp_path))
    wf = tmp_path / "review.yaml"
    wf.write_text(TEMPLATE, encoding="utf-8")
    res = CliRunner(env=NO_ENV).invoke(
        workflow, ["run", str(wf), "-i", "design=x", "--config", str(cfg)]
    )
    assert res.exit_code == 0, res.output
    warnings = [ln for ln in res.stderr.splitlines() if ln.startswith("warning: ")]
    assert len(warnings) == 2, res.stderr
    assert "`{{ inputs.design }}`" in warnings[0]
    assert "complete" in res.stdout.splitlines()[0]
