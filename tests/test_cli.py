"""The `orchestrate` command: exit codes and exact message lines, via click's CliRunner."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from engine.cli import orchestrate
from engine.config import load_config
from engine.gateway.server import LocalGateway
from tests.helpers import demo_config, write_config

GATEWAY_TOKEN = "gw-secret-token-0123456789abcdef"
WRONG_TOKEN = "wrong-token-fedcba9876543210"


def run(*args: str, env: dict[str, str] | None = None) -> Any:
    return CliRunner().invoke(orchestrate, list(args), env=env, catch_exceptions=False)


@pytest.fixture
def cfg_path(tmp_path: Path) -> Path:
    return write_config(tmp_path, demo_config(tmp_path))


@pytest.fixture
def standalone(tmp_path: Path) -> Iterator[tuple[Path, LocalGateway]]:
    """A standalone local gateway, and a config whose agents reach it with $GW_TOKEN."""
    raw = demo_config(tmp_path)
    raw["gateway"]["embedded"] = False
    raw["gateway"]["token_env"] = "GW_TOKEN"
    path = write_config(tmp_path, raw)
    gw = LocalGateway(load_config(path), token=GATEWAY_TOKEN).start()
    raw["gateway"]["port"] = int(gw.url.rsplit(":", 1)[1])
    write_config(tmp_path, raw)
    try:
        yield path, gw
    finally:
        gw.stop()


def test_delegate_happy_path_text(cfg_path: Path) -> None:
    res = run("webster", "Find CTE of Zerodur", "--caller", "manager", "--config", str(cfg_path))
    assert res.exit_code == 0, res.output
    lines = res.stdout.splitlines()
    assert lines[0].startswith("complete (confidence medium): webster for manager, orch-")
    assert lines[-1].startswith("record: ") and lines[-1].endswith(".json")
    assert "dispatched" in res.stderr


def test_delegate_json_is_the_record(cfg_path: Path) -> None:
    res = run(
        "delegate", "webster", "task", "--caller", "manager", "--json", "--config", str(cfg_path)
    )
    assert res.exit_code == 0
    rec = json.loads(res.stdout)
    assert rec["status"] == "complete" and rec["envelope"]["target"] == "webster"
    assert res.stderr == ""


def test_exit_codes_for_agent_outcomes(cfg_path: Path) -> None:
    c = ["--caller", "manager", "--config", str(cfg_path), "-q"]
    assert run("webster", "DEMO_STATUS=partial", *c).exit_code == 0
    assert run("webster", "DEMO_STATUS=blocked", *c).exit_code == 1
    assert run("webster", "DEMO_STATUS=failed", *c).exit_code == 1
    res = run("webster", "DEMO_SLEEP=2", "--timeout", "0.3", *c)
    assert res.exit_code == 4
    assert "error: no handoff from `webster` within 0.3 s" in res.stderr


def test_partial_warns(cfg_path: Path) -> None:
    res = run("webster", "DEMO_STATUS=partial", "--caller", "manager", "--config", str(cfg_path))
    assert "warning: the agent finished only part of the task (status partial)." in res.stderr


def test_acl_refusal_exit_5(cfg_path: Path) -> None:
    res = run("manager", "do it", "--caller", "tech-lead", "--config", str(cfg_path))
    assert res.exit_code == 5
    assert res.stderr.strip() == (
        "error: ACL refuses `tech-lead` -> `manager`: `tech-lead` may delegate to: "
        "`secretary`, `study-builder`, `nx-expert`, `webster`. Nothing was sent."
    )


def test_unknown_agent_exit_2(cfg_path: Path) -> None:
    res = run("webstr", "x", "--caller", "manager", "--config", str(cfg_path))
    assert res.exit_code == 2
    assert res.stderr.startswith("error: unknown agent `webstr`; did you mean `webster`?")
    assert "Traceback" not in res.output


def test_path_like_ids_exit_2(cfg_path: Path) -> None:
    res = run(
        "webster", "x", "--caller", "manager", "--parent-run-id", "../x", "--config", str(cfg_path)
    )
    assert res.exit_code == 2
    assert "parent run id `../x` is not allowed" in res.stderr
    res = run(
        "handoff",
        "write",
        "--run-id",
        "../x",
        "--agent",
        "webster",
        "--status",
        "complete",
        "--result",
        "r",
        "--config",
        str(cfg_path),
    )
    assert res.exit_code == 2 and "run id `../x` is not allowed" in res.stderr


def test_missing_config_is_explained(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ORCHESTRATOR_CONFIG", raising=False)
    res = run("webster", "x", "--caller", "manager")
    assert res.exit_code == 2
    assert f"error: no `orchestrator.yaml` in {tmp_path}" in res.stderr


def test_invalid_config_lists_every_problem(tmp_path: Path) -> None:
    p = tmp_path / "orchestrator.yaml"
    p.write_text(
        "agents:\n  webster:\n    url: http://x\n    tokn_env: A\n    timeout: fast\n"
        "handoff_dir: x\n"
    )
    res = run("webster", "x", "--caller", "manager", "--config", str(p))
    assert res.exit_code == 2
    assert f"error: `{p}` is not a valid config:" in res.stderr
    for line in (
        "`agents.webster.timeout` must be a number.",
        "`agents.webster.tokn_env` is not a known key; did you mean `token_env`?",
        "`handoff_dir` is not a known key; did you mean `handoffs_dir`?",
    ):
        assert line in res.stderr


def test_malformed_yaml_config(tmp_path: Path) -> None:
    p = tmp_path / "orchestrator.yaml"
    p.write_text("agents: [unclosed\n")
    res = run("webster", "x", "--caller", "manager", "--config", str(p))
    assert res.exit_code == 2 and "is not valid YAML at line 2" in res.stderr


def test_wrong_token_401_never_shows_a_token(standalone: tuple[Path, LocalGateway]) -> None:
    path, gw = standalone
    res = run(
        "webster", "x", "--caller", "manager", "--config", str(path), env={"GW_TOKEN": WRONG_TOKEN}
    )
    assert res.exit_code == 2
    assert "rejected the hooks token for `webster` (401 Unauthorized)" in res.stderr
    assert "`GW_TOKEN`" in res.stderr
    records = "".join(p.read_text() for p in path.parent.glob("handoffs/**/*.json"))
    for secret in (WRONG_TOKEN, GATEWAY_TOKEN):
        assert secret not in res.output and secret not in records
    assert gw.stats()["dispatched"].get("webster", 0) == 0


def test_right_token_through_standalone_gateway(standalone: tuple[Path, LocalGateway]) -> None:
    path, gw = standalone
    res = run(
        "webster",
        "x",
        "--caller",
        "manager",
        "--config",
        str(path),
        "-q",
        env={"GW_TOKEN": GATEWAY_TOKEN},
    )
    assert res.exit_code == 0, res.output
    assert gw.stats()["dispatched"]["webster"] == 1
    assert GATEWAY_TOKEN not in res.output


def test_missing_token_env_says_which(
    standalone: tuple[Path, LocalGateway], monkeypatch: Any
) -> None:
    path, _ = standalone
    monkeypatch.delenv("GW_TOKEN", raising=False)
    res = run("webster", "x", "--caller", "manager", "--config", str(path))
    assert res.exit_code == 2
    assert "environment variable `GW_TOKEN` is not set" in res.stderr


def test_handoff_write_then_show(cfg_path: Path, tmp_path: Path) -> None:
    run_id = "orch-20260101T000000-00c0ffee"
    res = run(
        "handoff",
        "write",
        "--run-id",
        run_id,
        "--agent",
        "webster",
        "--status",
        "complete",
        "--result",
        "CTE 0 ± 0.007 ppm/K",
        "--confidence",
        "high",
        "--artifact",
        "a.csv",
        "--key",
        "0123456789abcdef0123456789abcdef",
        "--config",
        str(cfg_path),
    )
    assert res.exit_code == 0
    path = tmp_path / "handoffs" / "inbox" / f"{run_id}.json"
    assert res.stdout.strip() == str(path)
    data = json.loads(path.read_text())
    assert data["result"] == "CTE 0 ± 0.007 ppm/K" and data["artifacts"] == ["a.csv"]
    res = run("show", run_id, "--json", "--config", str(cfg_path))
    assert json.loads(res.stdout)["runId"] == run_id


def test_handoff_write_to_receiver(standalone: tuple[Path, LocalGateway], tmp_path: Path) -> None:
    _, gw = standalone
    run_id = "orch-20260101T000000-00000001"
    args = [
        "handoff",
        "write",
        "--run-id",
        run_id,
        "--agent",
        "webster",
        "--status",
        "complete",
        "--result",
        "remote",
        "--receiver",
        f"{gw.url}/handoffs/{run_id}",
        "--token-env",
        "GW_TOKEN",
    ]
    res = run(*args, env={"GW_TOKEN": WRONG_TOKEN})
    assert res.exit_code == 2 and "401" in res.stderr
    assert not (tmp_path / "handoffs" / "inbox" / f"{run_id}.json").exists()
    res = run(*args, env={"GW_TOKEN": GATEWAY_TOKEN})  # nothing waits for that run: refused
    assert res.exit_code == 2 and f"no delegation `{run_id}` is waiting" in res.stderr
    assert not (tmp_path / "handoffs" / "inbox" / f"{run_id}.json").exists()
    from engine.record import write_pending

    write_pending(tmp_path / "handoffs", run_id, {"target": "webster", "pid": os.getpid(),
                                                  "handoff_key": "optional"})  # fmt: skip
    res = run(*args, env={"GW_TOKEN": GATEWAY_TOKEN})
    assert res.exit_code == 0, res.output
    delivered = tmp_path / "handoffs" / "inbox" / f"{run_id}.json"
    assert json.loads(delivered.read_text())["result"] == "remote"


def test_help_on_every_command() -> None:
    for args in ([], ["delegate"], ["handoff", "write"], ["show"], ["gateway"]):
        res = run(*args, "--help")
        assert res.exit_code == 0 and "Usage:" in res.stdout


def test_console_script_help_is_fast_to_import() -> None:
    code = (
        "import sys, engine.cli; heavy = {'httpx', 'jsonschema', 'networkx', 'jinja2', "
        "'yaml', 'engine.progress', 'engine.reporter'} & set(sys.modules); "
        "print(sorted(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_help_footers_list_every_exit_code() -> None:
    """Both programs' footers name codes 0-6 (docs/protocol.md's table), 3 with the answer."""
    import re

    from engine.cli import workflow

    table = (Path(__file__).parent.parent / "docs" / "protocol.md").read_text(encoding="utf-8")
    documented = set(re.findall(r"^\| (\d) \|", table, flags=re.M))
    assert documented == {str(n) for n in range(7)}
    for group in (orchestrate, workflow):
        res = CliRunner().invoke(group, ["--help"])
        footer = res.stdout.split("Exit codes:", 1)[1]
        listed = set(re.findall(r"(?:^|·|\s)(\d) (?=\S)", footer))
        assert listed == documented, (group.name, footer)
        assert "3 waiting: for approval, or for the answer" in footer
        assert "6 unusable" in footer or "6 (unusable)" in footer
