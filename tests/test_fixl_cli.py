"""Command-line surface fixes: a workflow step's delegation is answered through its
run, empty or repeated options are refused, long values are cut in errors."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from engine.cli import metrics, orchestrate, workflow
from tests.helpers import demo_config, write_config

ASKER = Path(__file__).parent / "peers" / "misbehaving_agent.py"


def _run(group: Any, *args: str) -> Any:
    return CliRunner().invoke(group, list(args), catch_exceptions=False)


def _asker_config(tmp_path: Path) -> tuple[str, Path]:
    raw = demo_config(tmp_path)
    raw["gateway"]["agents"]["asker"] = {
        "kind": "command",
        "argv": [sys.executable, str(ASKER), "ask"],
        "env": {"AGENT_STATE": str(tmp_path / "asker-state")},
        "timeout": 60,
        "fallback_handoff": False,
    }
    raw["agents"]["asker"] = {"url": "local"}
    raw["acl"] = {"manager": ["*"]}
    wf = tmp_path / "wf.yaml"
    wf.write_text(yaml.safe_dump({
        "name": "w-asker", "caller": "manager",
        "steps": [{"id": "s", "agent": "asker", "task": "go"}],
    }), encoding="utf-8")
    return str(write_config(tmp_path, raw)), wf


def test_a_steps_delegation_is_answered_through_its_run(tmp_path: Path) -> None:
    cfg, wf = _asker_config(tmp_path)
    run = _run(workflow, "run", str(wf), "--non-interactive", "--json", "--config", cfg)
    assert run.exit_code == 3, run.output
    rid = json.loads(run.stdout)["runId"]
    shown = _run(orchestrate, "show", f"{rid}-s-1", "--config", cfg)
    assert shown.exit_code == 0, shown.output
    assert f'workflow answer {rid} s "YOUR ANSWER"' in shown.output
    assert "orchestrate answer" not in shown.output

    res = _run(orchestrate, "answer", f"{rid}-s-1", "0-50", "--config", cfg)
    assert res.exit_code == 2, res.output
    assert res.output.strip() == (
        f"error: this delegation is step `s` of workflow run {rid}: answer it with "
        f'`workflow answer {rid} s "..."`, then `workflow resume {rid}`.'
    )
    state = tmp_path / "asker-state"
    assert sorted(p.name for p in state.glob("*.txt")) == [f"{rid}-s-1.1.txt"]  # nothing sent
    status = _run(workflow, "status", rid, "--json", "--config", cfg)
    assert json.loads(status.stdout)["steps"]["s"]["status"] == "waiting_input"

    assert _run(workflow, "answer", rid, "s", "0-50", "--config", cfg).exit_code == 0
    done = _run(workflow, "resume", rid, "--json", "--config", cfg)
    assert done.exit_code == 0, done.output
    sent = sorted(p.name for p in state.glob("*.txt"))
    assert len(sent) == 2, sent  # the task once, then once with the answer


def test_an_abandoned_steps_delegation_is_not_delegated_again_outside_its_run(
    tmp_path: Path,
) -> None:
    import subprocess

    cfg = str(write_config(tmp_path, demo_config(tmp_path)))
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    pending = tmp_path / "handoffs" / ".pending"
    pending.mkdir(parents=True)
    rid = "wf-20261201T000000-0000abcd"
    (pending / f"{rid}-s-1.json").write_text(json.dumps({
        "run_id": f"{rid}-s-1", "target": "webster", "caller": "manager", "task": "go",
        "outcome": "dispatched", "pid": int(gone.stdout), "created_at": "2026-12-01T00:00:00Z",
        "deadline_at": "2026-12-01T00:00:02Z",
        "labels": {"workflow": "w", "workflow_run": rid, "step": "s"},
    }), encoding="utf-8")
    shown = _run(orchestrate, "show", f"{rid}-s-1", "--config", cfg)
    assert shown.exit_code == 0, shown.output
    assert shown.output.startswith(f"abandoned: webster for manager, {rid}-s-1"), shown.output
    assert f"It is step `s` of workflow run {rid}" in shown.output
    assert f"`workflow status {rid}`" in shown.output
    assert "orchestrate webster" not in shown.output


HOST_EMPTY = (
    "error: `--host` is empty: give a name or address of this machine to bind "
    "(e.g. 127.0.0.1), or leave the option out."
)


@pytest.mark.parametrize(
    "args",
    [("gateway", "--host", "", "--port", "0"), ("pool", "serve", "--host", ""),
     ("serve", "--host", " ")],
    ids=["gateway", "pool-serve", "serve"],
)
def test_an_empty_host_is_refused(tmp_path: Path, args: tuple[str, ...]) -> None:
    cfg = str(write_config(tmp_path, demo_config(tmp_path)))
    res = CliRunner(env={"ORCH_POOL_TOKEN": "p" * 40}).invoke(
        orchestrate, [*args, "--config", cfg]
    )
    assert res.exit_code == 2, res.output
    assert res.output.strip() == HOST_EMPTY


def test_an_empty_gateway_host_in_the_config_is_refused(tmp_path: Path) -> None:
    raw = demo_config(tmp_path)
    raw["gateway"]["host"] = ""
    cfg = str(write_config(tmp_path, raw))
    res = _run(orchestrate, "webster", "hi", "--caller", "manager", "--config", cfg)
    assert res.exit_code == 2, res.output
    assert "  - `gateway.host` must not be empty." in res.output.splitlines()


def test_pool_serve_says_an_unresolvable_host_does_not_resolve(tmp_path: Path) -> None:
    cfg = str(write_config(tmp_path, demo_config(tmp_path)))
    res = CliRunner(env={"ORCH_POOL_TOKEN": "p" * 40}).invoke(
        orchestrate, ["pool", "serve", "--host", "nonexistent.invalid", "--port", "0",
                      "--config", cfg]
    )
    assert res.exit_code == 2, res.output
    assert "the host `nonexistent.invalid` does not resolve" in res.output
    assert "give `--host` a name or address of this machine" in res.output
    assert "--port" not in res.output


def test_an_unreachable_steps_agent_points_at_the_steps_timeout(tmp_path: Path) -> None:
    from tests.helpers import free_port

    raw = demo_config(tmp_path)
    raw["agents"]["far"] = {"url": f"http://127.0.0.1:{free_port()}", "token_env": "FAR_TOKEN"}
    raw["acl"] = {"manager": ["*"]}
    raw["retry"] = {"delays": [30], "jitter": 0.0}  # the next try would come after the step's 2 s
    cfg = str(write_config(tmp_path, raw))
    wf = tmp_path / "far.yaml"
    wf.write_text(yaml.safe_dump({
        "name": "w-far", "caller": "manager",
        "steps": [{"id": "s", "agent": "far", "timeout": 2, "task": "go"}],
    }), encoding="utf-8")
    res = CliRunner(env={"FAR_TOKEN": "f" * 32}).invoke(
        workflow, ["run", str(wf), "--json", "--config", cfg]
    )
    assert res.exit_code == 1, res.output
    error = json.loads(res.stdout)["steps"]["s"]["error"]
    assert error.endswith(
        "Check `agents.far.url`, or raise `timeout:` of step `s` in workflow `w-far` "
        "(or `agents.far.timeout`) to wait longer."
    ), error
    assert "--timeout" not in error


def test_progress_to_an_unreachable_receiver_names_the_run_and_the_receiver(
    tmp_path: Path,
) -> None:
    from tests.helpers import free_port

    receiver = f"http://127.0.0.1:{free_port()}/x"
    res = CliRunner(env={"RECV_TOKEN": "r" * 32}).invoke(orchestrate, [
        "handoff", "progress", "--receiver", receiver, "--token-env", "RECV_TOKEN",
        "--run-id", "orch-20261201T000000-abcd1234", "--key", "k", "reading",
    ])
    assert res.exit_code == 4, res.output
    out = res.output.strip()
    assert out.startswith(
        "error: could not dispatch to the progress of `orch-20261201T000000-abcd1234` at "
    ), out
    assert out.endswith(
        f"Check `--receiver {receiver}`, then run the same command again (each run tries "
        "for up to 30 s)."
    ), out
    assert "--timeout" not in out


@pytest.mark.parametrize(
    ("group", "args", "expected"),
    [
        (orchestrate, ("show", "orch-1", "--config", ""),
         "`--config` is empty: give the path of a config file, or leave the option out."),
        (workflow, ("runs", "--server", ""),
         "`--server` is empty: give the URL of `orchestrate serve`, or leave the option out."),
        (metrics, ("json", "--handoffs-dir", ""), "`--handoffs-dir` is empty: give the "
         "`handoffs_dir` of the config, or leave the option out."),
        (metrics, ("json", "--agent", ""),
         "`--agent` is empty: name an agent, or leave the option out."),
        (metrics, ("json", "--workflow", " "),
         "`--workflow` is empty: name a workflow, or leave the option out."),
        (metrics, ("text", "--caller", ""),
         "`--caller` is empty: name a caller, or leave the option out."),
        (workflow, ("reject", "wf-20261201T000000-0000abcd", "b", "--reason", ""),
         "`--reason` is empty: say why the gate is rejected."),
    ],
    ids=["config", "server", "handoffs-dir", "agent", "workflow", "caller", "reason"],
)
def test_an_empty_option_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, group: Any, args: tuple[str, ...],
    expected: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    write_config(tmp_path, demo_config(tmp_path)).rename(tmp_path / "orchestrator.yaml")
    res = _run(group, *args)
    assert res.exit_code == 2, res.output
    assert res.stderr.strip() == f"error: {expected}"


def test_an_empty_required_input_is_refused(tmp_path: Path) -> None:
    cfg = str(write_config(tmp_path, demo_config(tmp_path)))
    wf = tmp_path / "two.yaml"
    wf.write_text(yaml.safe_dump({
        "name": "two", "caller": "manager", "inputs": {"q": {"required": True}},
        "steps": [{"id": "s", "agent": "webster", "task": "go {{ inputs.q }}"}],
    }), encoding="utf-8")
    res = _run(workflow, "run", str(wf), "-i", "q=", "--json", "--config", cfg)
    assert res.exit_code == 2, res.output
    assert json.loads(res.stdout)["problems"] == [
        "required input `q` is empty: pass a value, `--input q=...`."
    ]


LONG = "x" * 5000
CUT = "`" + "x" * 80 + "…" + "x" * 100 + "`"


@pytest.mark.parametrize(
    ("group", "args", "start"),
    [
        (orchestrate, (LONG, "hi", "--caller", "manager"), "error: unknown agent "),
        (orchestrate, ("webster", "hi", "--caller", LONG), "error: unknown caller "),
        (workflow, ("status", LONG), "error: workflow run id "),
        (metrics, ("text", "--agent", LONG), "error: unknown agent "),
        (workflow, ("run", LONG), "error: no workflow "),
        (orchestrate, (LONG, "hi", "--caller", "manager", "--json"), "error: unknown agent "),
        (workflow, ("status", LONG, "--json"), "error: workflow run id "),
    ],
    ids=["agent", "caller", "run-id", "metrics-agent", "workflow-name", "agent-json",
         "run-id-json"],
)
def test_a_long_value_is_cut_in_the_error(
    tmp_path: Path, group: Any, args: tuple[str, ...], start: str
) -> None:
    cfg = str(write_config(tmp_path, demo_config(tmp_path)))
    res = _run(group, *args, "--config", cfg)
    assert res.exit_code == 2, res.output[:500]
    assert res.stderr.startswith(f"{start}{CUT}"), res.stderr[:500]
    assert "x" * 101 not in res.output
    if "--json" in args:
        assert json.loads(res.stdout)["error"] == res.stderr.strip().removeprefix("error: ")


@pytest.mark.parametrize(
    ("group", "args", "option"),
    [
        (orchestrate, ("webster", "hi", "--caller", "nobody", "--caller", "manager"), "--caller"),
        (orchestrate, ("handoff", "write", "--run-id", "a", "--run-id=b", "--agent", "x",
                       "--status", "complete"), "--run-id"),
        (metrics, ("json", "--agent", "a", "--agent", "b"), "--agent"),
        (workflow, ("runs", "--config", "a.yaml", "--config", "b.yaml"), "--config"),
    ],
    ids=["caller", "nested-group", "metrics", "workflow"],
)
def test_a_single_value_option_given_twice_is_refused(
    tmp_path: Path, group: Any, args: tuple[str, ...], option: str
) -> None:
    res = _run(group, *args)
    assert res.exit_code == 2, res.output
    assert res.stderr.strip() == (
        f"error: `{option}` is given 2 times, but it takes one value: give it once (the "
        "command would otherwise use the last one only)."
    )


def test_options_that_take_many_values_or_are_flags_may_repeat(tmp_path: Path) -> None:
    cfg = str(write_config(tmp_path, demo_config(tmp_path)))
    wf = tmp_path / "two.yaml"
    wf.write_text(yaml.safe_dump({
        "name": "two", "caller": "manager", "inputs": {"a": {}, "b": {}},
        "steps": [{"id": "s", "agent": "webster", "task": "go {{ inputs.a }}"}],
    }), encoding="utf-8")
    res = _run(workflow, "run", str(wf), "-i", "a=1", "-i", "b=2", "--dry-run", "--json",
               "--json", "--config", cfg)
    assert res.exit_code == 0, res.output


def test_an_empty_caller_of_a_delegation_is_refused(tmp_path: Path) -> None:
    cfg = str(write_config(tmp_path, demo_config(tmp_path)))
    res = _run(orchestrate, "webster", "hi", "--caller", "", "--config", cfg)
    assert res.exit_code == 2, res.output
    assert res.stderr.strip() == (
        "error: `--caller` is empty: name the agent that delegates (e.g. `--caller manager`)."
    )


def test_the_server_refuses_to_answer_a_steps_delegation_outside_its_run(
    tmp_path: Path,
) -> None:
    from tests.servekit import Served

    srv = Served(tmp_path).start()
    try:
        with srv.client("alice") as alice:
            run_id = alice.post("/v1/runs", json={"workflow": "ask"}).json()["runId"]
            doc = alice.get(f"/v1/runs/{run_id}/wait", params={"until": "parked", "timeout": 60})
            parked = doc.json()
            assert parked["status"] == "waiting_input", parked
            step = parked["steps"]["research"]["delegation_run_id"]
            r = alice.post(f"/v1/delegations/{step}/answer", json={"text": "0-50 °C"})
            assert r.status_code == 400, r.text
            assert r.json()["detail"] == (
                f"this delegation is step `research` of workflow run {run_id}: answer it with "
                f'`workflow answer {run_id} research "..."`, then `workflow resume {run_id}`.'
            )
            again = alice.get(f"/v1/runs/{run_id}").json()
            assert again["status"] == "waiting_input"
    finally:
        srv.stop()
