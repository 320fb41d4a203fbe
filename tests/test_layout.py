"""The package's layout: one module per program, packages found, no dead names, the
repository's own links not mistaken for the user's templates."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import engine
from engine.errors import UsageError
from engine.workflow import list_workflows, search_path, shipped_workflows_dir

ROOT = Path(__file__).parent.parent


def test_every_engine_package_is_found_by_setuptools() -> None:
    from setuptools import find_packages

    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    find = project["tool"]["setuptools"]["packages"]["find"]
    found = set(find_packages(str(ROOT), include=find["include"]))
    on_disk = {
        ".".join(p.parent.relative_to(ROOT).parts)
        for p in (ROOT / "engine").rglob("__init__.py")
    }
    assert on_disk <= found and {"engine.cli", "engine.gateway", "engine.pool"} <= found
    assert not any(p.startswith("tests") for p in found)


def test_the_programs_are_importable_from_engine_cli() -> None:
    from engine import cli
    from engine.cli import metrics as metrics_module_or_group

    for name in ("orchestrate_main", "workflow_main", "metrics_main"):
        assert callable(getattr(cli, name))
    assert metrics_module_or_group is cli.metrics  # the click group, not the module
    assert cli.workflow.name == "workflow" and cli.orchestrate.name == "orchestrate"


def test_each_program_loads_only_its_own_module() -> None:
    code = (
        "import sys; from engine.cli import workflow_main; import engine.cli.workflow as w; "
        "import engine.cli as c; print(sorted(m for m in sys.modules if m.startswith("
        "'engine.cli')), type(w).__name__, c.workflow is w, c.workflow.name)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == [
        "['engine.cli',",
        "'engine.cli.common',",
        "'engine.cli.workflow']",
        "EngineGroup",
        "True",
        "workflow",
    ]


def test_standalone_mode_false_returns_instead_of_exiting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from engine.cli import workflow
    from engine.errors import ConfigError

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ORCHESTRATOR_CONFIG", raising=False)
    assert workflow.main(["list"], standalone_mode=False) == 0
    with pytest.raises(ConfigError, match="no `orchestrator.yaml`"):  # raised, not exited
        workflow.main(["run", "quick-research"], standalone_mode=False)


def test_importing_engine_cli_loads_no_subcommand_dependencies() -> None:
    code = (
        "import sys, engine.cli; mods = ('engine.runner', 'engine.delegate', 'engine.dag', "
        "'engine.renderer', 'engine.retry', 'httpx'); print([m for m in mods if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("extra", [["validate"], ["run", "--dry-run"]])
def test_validate_and_dry_run_load_no_executor(tmp_path: Path, extra: list[str]) -> None:
    (tmp_path / "orchestrator.yaml").write_text(
        f"handoffs_dir: {tmp_path / 'handoffs'}\npool: {{enabled: false}}\n"
        "gateway: {embedded: true, agents: {manager: {kind: echo}, webster: {kind: echo}}}\n"
        "agents: {manager: {url: local}, webster: {url: local}}\n",
        encoding="utf-8",
    )
    (tmp_path / "wf.yaml").write_text(
        "name: wf\ncaller: manager\nsteps:\n"
        "  - {id: a, agent: webster, task: 'look up {{ inputs.q }}'}\n"
        "  - {id: b, agent: webster, depends_on: [a], task: 'sum up {{ steps.a.result }}'}\n"
        "inputs:\n  q: {required: true}\n",
        encoding="utf-8",
    )
    code = (
        "import sys; from engine.cli import workflow\n"
        "rc = workflow.main(sys.argv[1:], standalone_mode=False)\n"
        "mods = ('engine.runner', 'engine.runs', 'engine.store', 'engine.delegate', "
        "'engine.hooks', 'engine.pool', 'httpx', 'engine.cli.orchestrate', "
        "'engine.cli.metrics', 'engine.redact', 'logging', 'importlib.resources')\n"
        "print(rc, [m for m in mods if m in sys.modules])"
    )
    args = [*extra, "wf.yaml", "--config", "orchestrator.yaml", "--input", "q=x"]
    command = [sys.executable, "-c", code, *args]
    out = subprocess.run(command, capture_output=True, text=True, check=True, cwd=tmp_path)
    # the dry run prints the inputs and tasks with secrets masked, as a run does
    loaded = "['engine.redact', 'logging']" if "--dry-run" in extra else "[]"
    assert out.stdout.strip().splitlines()[-1] == f"0 {loaded}", out.stdout + out.stderr


@pytest.mark.parametrize(
    "module",
    ["engine.runs", "engine.metrics", "engine.metrics.scan", "engine.metrics.render"],
)
def test_the_read_side_loads_no_executor(module: str) -> None:
    code = (
        f"import sys, {module}; mods = ('engine.runner', 'engine.delegate', 'engine.hooks', "
        "'engine.dag', 'httpx'); print([m for m in mods if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("module", "name"),
    [
        ("engine.handoff", "record_path"),
        ("engine.files", "append_jsonl"),
        ("engine.files", "RUN_ID"),
        ("engine.reporter", "JsonReporter"),
        ("engine.gateway.server", "_Stopping"),
        ("engine.workflow", "NAME_RE"),
        ("engine.workflow", "STEP_FIELDS"),
        ("engine.schemas", "SCHEMA_NAMES"),
        ("engine.runner", "RETRYABLE"),
        ("engine.gateway.models", "RETRYABLE"),
        ("engine.hooks", "RETRYABLE_STATUS"),
    ],
)
def test_dead_and_clashing_names_are_gone(module: str, name: str) -> None:
    import importlib

    assert not hasattr(importlib.import_module(module), name)


def test_the_repository_workflows_link_is_not_the_users_own(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    shipped = shipped_workflows_dir()
    monkeypatch.chdir(ROOT)
    assert (ROOT / "workflows").resolve() == shipped.resolve()  # the layout users asked for
    assert search_path(None) == (shipped,)
    assert {p.parent for _, p, _ in list_workflows(None)} == {shipped}


def test_a_real_workflows_directory_still_comes_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    own = tmp_path / "workflows"
    own.mkdir()
    (own / "quick-research.yaml").write_text("name: mine\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    assert search_path(None) == (own, shipped_workflows_dir())
    rows = {n: p for n, p, _ in list_workflows(None)}
    assert rows["quick-research"] == own / "quick-research.yaml"


def test_a_symlink_to_the_shipped_directory_elsewhere_is_skipped_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    os.symlink(shipped_workflows_dir(), tmp_path / "workflows")
    monkeypatch.chdir(tmp_path)
    assert search_path(None) == (shipped_workflows_dir(),)


def test_validator_for_names_the_config_when_there_is_none(tmp_path: Path) -> None:
    from engine.config import load_config
    from engine.validate import validator_for
    from tests.helpers import demo_config, write_config

    raw = demo_config(tmp_path)
    cfg = load_config(write_config(tmp_path, raw))
    assert validator_for(cfg, None) == "tech-lead"
    assert validator_for(cfg, "auditor") == "auditor"
    del raw["validator"]
    bare = load_config(write_config(tmp_path, raw))
    with pytest.raises(UsageError, match=r"`--validate` needs a validator: pass `--validator"):
        validator_for(bare, None)


def test_engine_package_lists_its_modules() -> None:
    names = {p.stem for p in Path(engine.__file__).parent.glob("*.py")}
    assert {"states", "retry", "renderer", "planview", "dag", "workflow"} <= names
    assert not (Path(engine.__file__).parent / "cli.py").exists()


def test_metrics_replays_a_run_without_loading_the_executor(tmp_path: Path) -> None:
    from engine.store import FileRunStore

    store = FileRunStore(tmp_path)
    meta = {
        "runId": "wf-1",
        "workflow": "w",
        "plan": {"groups": [["a"]], "steps": {"a": {"agent": "x", "depends_on": []}}},
    }
    store.create_run("wf-1", meta)
    journal = store.journal("wf-1")
    journal.append("run_started", run_id="wf-1", workflow="w", pid=1)
    journal.close()
    code = (
        "import sys; from pathlib import Path; from engine.metrics import compute_metrics; "
        f"doc = compute_metrics(Path({str(tmp_path)!r})); "
        "mods = ('engine.runner', 'engine.delegate', 'engine.hooks', 'httpx'); "
        "print(doc['workflows']['w']['runs'], doc['files']['invalid'], "
        "[m for m in mods if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "1 0 []"
