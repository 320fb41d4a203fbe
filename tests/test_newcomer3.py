"""A newcomer's third trial: advice the CLIs print must hold once it is followed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from engine.cli import orchestrate
from tests.servekit import Served, cli, served_module, server_env


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    yield from served_module(tmp_path_factory, "newcomer3")


def _local(srv: Served, group: Any, *args: str) -> Any:
    return cli(group, *args, "--config", str(srv.path))


# -- 1: an answered question is shown as answered ----------------------------------------


def test_show_of_an_answered_question_names_the_continuation(srv: Served) -> None:
    server = server_env(srv, "carol")
    asked = cli(orchestrate, "asker", "Find CTE of Zerodur", "--caller", "manager",
                "--json", **server)  # fmt: skip
    record = json.loads(asked.stdout)
    assert record["status"] == "blocked", asked.output
    run_id = record["runId"]
    before = _local(srv, orchestrate, "show", run_id)
    assert f'continue with: orchestrate answer {run_id} "YOUR ANSWER"' in before.stderr
    res = cli(orchestrate, "answer", run_id, "0 to 50 C", "--json", **server)
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["status"] == "complete"
    follow = f"{run_id}-a1"
    for shown in (
        _local(srv, orchestrate, "show", run_id),
        cli(orchestrate, "show", run_id, **server),
    ):
        assert shown.exit_code == 0, shown.output
        assert "continue with" not in shown.output
        assert "answered by carol at " in shown.stdout
        assert f"it continued as {follow} (follow it: orchestrate show {follow}" in shown.stdout
    again = cli(orchestrate, "answer", run_id, "twice", **server)
    assert again.exit_code == 2 and "was answered already" in again.stderr
    for tree in (
        _local(srv, orchestrate, "tree", run_id),
        cli(orchestrate, "tree", run_id, **server),
    ):
        assert tree.exit_code == 0, tree.output
        assert tree.stdout.splitlines()[0].endswith(f", answered: continued as {follow}")


# -- 2: a run the server owns is not advised to be resumed on this host -------------------


def _parked(srv: Served, workflow_name: str, **inputs: str) -> str:
    with srv.client("alice") as alice:
        body = {"workflow": workflow_name, "inputs": inputs}
        run_id = str(alice.post("/v1/runs", json=body).json()["runId"])
        doc = alice.get(f"/v1/runs/{run_id}/wait", params={"until": "parked", "timeout": 60})
        assert doc.json()["status"] in ("waiting_input", "waiting_approval"), doc.text
    return run_id


def _ended(srv: Served, run_id: str) -> str:
    with srv.client("alice") as alice:
        doc = alice.get(f"/v1/runs/{run_id}/wait", params={"timeout": 60}).json()
    assert doc["done"], doc
    return str(doc["status"])


def test_local_commands_on_a_run_the_server_owns_say_it_continues_by_itself(
    srv: Served,
) -> None:
    from engine.cli import workflow

    owns = "owns it; it continues by itself"
    run_id = _parked(srv, "ask")
    status = _local(srv, workflow, "status", run_id)
    assert status.exit_code in (0, 3), status.output
    first = status.stdout.splitlines()[0]
    assert f"(the server {srv.url} (pid " in first and owns in first, first
    assert "no process running it" not in status.stdout
    answered = _local(srv, workflow, "answer", run_id, "research", "0-50 °C")
    assert answered.exit_code == 0, answered.output
    assert owns in answered.stdout and "workflow resume" not in answered.stdout
    assert _ended(srv, run_id) == "complete"
    done = _local(srv, workflow, "status", run_id)
    assert done.stdout.splitlines()[0].endswith("complete"), done.stdout

    run_id = _parked(srv, "gate", query="CTE of ULE")
    approved = _local(srv, workflow, "approve", run_id, "review")
    assert approved.exit_code == 0, approved.output
    assert owns in approved.stdout and "workflow resume" not in approved.stdout
    assert _ended(srv, run_id) == "complete"


# -- 3: a second handoff's note names where to look, not a file name that changes ---------


def test_a_second_handoff_write_points_at_the_record(tmp_path: Path) -> None:
    from tests.test_cli_newcomer import _in_flight, _write

    for d in _in_flight(tmp_path):
        first = _write(d, "--key", d.key)
        assert first.exit_code == 0, first.output
        second = _write(d, "--key", d.key)
        assert second.exit_code == 0, second.output
        note = second.stderr
        assert "already held a handoff" in note and ".2.json" not in note
        assert f"listed in the record: see `orchestrate show {d.run_id}`" in note
        d.finish()
        shown = cli(orchestrate, "show", d.run_id, "--config", str(tmp_path / "orchestrator.yaml"))
        assert shown.exit_code == 0, shown.output
        assert f"{d.run_id}.1.json" in shown.stdout, shown.stdout


# -- 4: the skill's example block is a real message's ---------------------------------------


def test_the_skills_example_handoff_path_is_where_real_messages_point(tmp_path: Path) -> None:
    """The installed skill's example `handoff_path` has the shape of the one a real
    delegation gives its agent (the `inbox/` file), and its block lines match."""
    import re

    from tests.test_cli_newcomer import _in_flight

    config = tmp_path / "orchestrator.yaml"
    for d in _in_flight(tmp_path):
        ws = tmp_path / "ws"
        ws.mkdir()
        res = cli(orchestrate, "agent-skill", "install", "--workspace", str(ws),
                  "--agent", "webster", "--config", str(config))  # fmt: skip
        assert res.exit_code == 0, res.output
        skill = (ws / "skills" / "orchestrator-handoff" / "SKILL.md").read_text()
        (example,) = re.findall(r"^ +handoff_path: (.+)$", skill, flags=re.M)
        real = d.inbox / f"{d.run_id}.json"  # ORCH_HANDOFF_PATH, as the message names it
        assert Path(example).parent == real.parent, (example, real)
        assert Path(example).name.endswith(".json") and "/inbox/" in example
        for label in ("run_id: orch-", "agent: webster", "key: ", "--- HANDOFF (required) ---"):
            assert re.search(rf"^ +{re.escape(label)}", skill, flags=re.M), label
        d.finish()


# -- 5: $ORCH_SERVE_TOKENS without a `serve:` section that names it -------------------------


def _serve_start(config: Path, **env: str) -> tuple[subprocess.Popen[str], list[str]]:
    """`orchestrate serve` on a free port; its stderr lines up to `serving on URL`."""
    exe = Path(sys.executable).parent / "orchestrate"
    proc = subprocess.Popen(
        [str(exe), "serve", "--config", str(config), "--port", "0"],
        env={**os.environ, **env},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    lines: list[str] = []
    for line in proc.stderr:  # ends when the server says it listens, or exits
        lines.append(line.rstrip("\n"))
        if line.startswith("serving on "):
            break
    return proc, lines


def _serve_stop(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=60)


def test_serve_warns_that_an_exported_token_variable_is_not_read(tmp_path: Path) -> None:
    from tests.helpers import demo_config, write_config

    config = write_config(tmp_path, demo_config(tmp_path))
    tokens = "alice:read:alice-tok-41d8cd98f00b204e9800"
    proc, lines = _serve_start(config, ORCH_SERVE_TOKENS=tokens)
    try:
        assert lines and lines[-1].startswith("serving on "), lines
        (warning,) = [line for line in lines if line.startswith("warning: ")]
        assert warning == (
            f"warning: $ORCH_SERVE_TOKENS is set, but the `serve:` section of `{config}` "
            "names no tokens (add `tokens_env: ORCH_SERVE_TOKENS` to it to use them): the "
            "server accepts any caller on 127.0.0.1 as the operator `local`."
        )
        assert tokens.split(":")[2] not in "\n".join(lines)
    finally:
        _serve_stop(proc)
    raw = demo_config(tmp_path)
    raw["serve"] = {"tokens_env": "ORCH_SERVE_TOKENS"}
    config = write_config(tmp_path, raw)
    proc, lines = _serve_start(config, ORCH_SERVE_TOKENS=tokens)
    try:
        assert lines[-1].startswith("serving on ") and not any("warning" in x for x in lines)
    finally:
        _serve_stop(proc)


# -- 6: bench/delegation.py names the engine's whole time `engine_p50_ms` -------------------


def test_the_delegation_bench_names_the_engines_time_and_compare_reads_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.test_bench_peers import _load

    bench = Path(__file__).resolve().parents[1] / "bench" / "delegation.py"
    out = subprocess.run(
        [sys.executable, str(bench), "--json", "-n", "20", "--batch", "5", "--concurrency", "4",
         "--workdir", str(tmp_path)],
        capture_output=True, text=True, timeout=300, check=True,
    )  # fmt: skip
    fig = json.loads(out.stdout.strip().splitlines()[-1])
    assert fig["engine_p50_ms"] > 0 and fig["engine_p99_ms"] >= fig["engine_p50_ms"]
    assert fig["ratio_p50"] == pytest.approx(fig["engine_p50_ms"] / fig["bare_p50_ms"], rel=0.05)
    assert fig["overhead_p50_ms"] == fig["engine_p50_ms"]  # the old name, for one release
    assert "  engine   p50 " in out.stdout

    monkeypatch.setenv("TMPDIR", str(tmp_path))
    medians: dict[str, object] = {}
    (row,) = _load("compare").delegation_rows(medians)
    assert row.ours == f"{medians['delegation']['engine_p50_ms']} ms", row  # type: ignore[index]


# -- 7: a step waiting for an answer has the same confidence in `run` and `status` ----------


def _research_row(output: str) -> list[str]:
    (row,) = [line for line in output.splitlines() if line.startswith("research ")]
    return row.split()


def test_run_and_status_tables_agree_on_a_waiting_steps_confidence(srv: Served) -> None:
    import re

    from engine.cli import workflow

    ran = _local(srv, workflow, "run", "ask", "--non-interactive")
    assert ran.exit_code == 3, ran.output
    match = re.search(r"run (wf-\S+) \(ask\)", ran.output)
    assert match, ran.output
    run_id = match.group(1)
    status = _local(srv, workflow, "status", run_id)
    assert status.exit_code in (0, 3), status.output
    row = _research_row(ran.output)
    assert row[:5] == ["research", "asker", "?", "waiting_input", "1"], row
    assert _research_row(status.stdout)[:5] == row[:5]
