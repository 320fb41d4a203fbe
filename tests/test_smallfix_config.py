"""Config values an operator could get silently wrong: a placeholder in `operations.logs`
nothing fills (one literal log file for every unit), and a `handoffs_dir` under a file
(reads found "no runs", a pool under the file). Real CLI processes on a real config."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.test_cfgfix_config import REMOTE, base, program, write

# ------------------------------------------- 1. placeholders of every templated value


def test_unknown_placeholder_in_logs_is_refused_at_load(tmp_path: Path) -> None:
    cfg = write(tmp_path, {"handoffs_dir": "hg", "agents": REMOTE, "operations": {
        "logs": "logs/{agnt}.log",
        "systemd": {"exec_start": "/usr/bin/gw --port {port}", "unit_name": "oc-{name}"}}})
    res = program("orchestrate", "agents", "systemd", "--out", "out", "--config", str(cfg),
                  cwd=tmp_path)  # fmt: skip
    assert res.returncode == 2, res.stdout + res.stderr
    assert "`operations.logs` has the unknown placeholder `{agnt}`; the known ones are " \
        "`{agent}`, `{name}` (both the agent's name)." in res.stderr
    assert "Traceback" not in res.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("logs", ["logs/{agent}.log", "logs/{name}.log"])
def test_logs_fill_agent_and_its_synonym_name(tmp_path: Path, logs: str) -> None:
    cfg = write(tmp_path, {"handoffs_dir": "hg", "agents": REMOTE, "operations": {
        "logs": logs, "systemd": {"exec_start": "/usr/bin/gw --port {port}",
                                  "unit_name": "oc-{name}"}}})  # fmt: skip
    res = program("orchestrate", "agents", "systemd", "--out", "out", "--config", str(cfg),
                  cwd=tmp_path)  # fmt: skip
    assert res.returncode == 0, res.stderr
    text = (tmp_path / "out" / "oc-webster.service").read_text().splitlines()
    assert f"StandardOutput=append:{tmp_path}/logs/webster.log" in text
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "webster.log").write_text("line one\n")
    shown = program("orchestrate", "agents", "logs", "webster", "--config", str(cfg),
                    cwd=tmp_path)  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.splitlines() == ["line one"]


def test_unknown_placeholders_of_every_template_are_reported_together(tmp_path: Path) -> None:
    """Any command loading the config refuses them, not only `agents systemd`."""
    cfg = write(tmp_path, {"handoffs_dir": "hg", "agents": REMOTE, "operations": {
        "logs": {"webster": "/var/log/{who}.log"},
        "systemd": {"state_dir": "/srv/{agent}"}}})  # fmt: skip
    res = program("workflow", "runs", "--config", str(cfg), cwd=tmp_path)
    assert res.returncode == 2, res.stdout + res.stderr
    assert "`operations.logs.webster` has the unknown placeholder `{who}`" in res.stderr
    assert "`operations.systemd.state_dir` has the unknown placeholder `{agent}`; the " \
        "known ones are `{name}`, `{port}`" in res.stderr


# ------------------------------------------------ 2. a `handoffs_dir` under a file

UNDER_A_FILE = {
    "workflow-runs": ("workflow", "runs"),
    "metrics-json": ("metrics", "json"),
    "pool-status": ("orchestrate", "pool", "status"),
    "delegation": ("orchestrate", "webster", "hi", "--caller", "manager"),
}


@pytest.mark.parametrize("command", UNDER_A_FILE, ids=list(UNDER_A_FILE))
def test_handoffs_dir_under_a_file_is_refused_by_every_command(
    tmp_path: Path, command: str
) -> None:
    (tmp_path / "afile").write_text("not a directory\n")
    cfg = write(tmp_path, base(handoffs_dir="./afile/sub"))
    name, *args = UNDER_A_FILE[command]
    res = program(name, *args, "--config", str(cfg), cwd=tmp_path)
    assert res.returncode == 2, res.stdout + res.stderr
    assert (
        f"`handoffs_dir` of `{cfg}` names `{tmp_path / 'afile' / 'sub'}`, under "
        f"`{tmp_path / 'afile'}`, which is a file: records go into a directory." in res.stderr
    )
    assert "Traceback" not in res.stderr
    assert (tmp_path / "afile").read_text() == "not a directory\n"
