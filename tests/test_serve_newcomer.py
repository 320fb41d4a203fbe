"""The CLI through `orchestrate serve` as a newcomer meets it: the agent's question, token
problems, bad server URLs, options that do not go with `--server`, hints that can be
copied as printed, `workflow runs` / `resume` of the server's runs (docs/serve.md)."""

from __future__ import annotations

import json
import shlex
from collections.abc import Iterator
from typing import Any

import pytest

from engine.cli import orchestrate, workflow
from tests.servekit import TOKENS, Served, cli, served_module, server_env

QUESTION = "Which temperature range?"


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    yield from served_module(tmp_path_factory, "servenewcomer")


_cli, _server = cli, server_env


def _local(srv: Served, *args: str) -> dict[str, Any]:
    res = _cli(workflow, *args, "--json", "--config", str(srv.path))
    assert res.exit_code == 0, res.output
    data: dict[str, Any] = json.loads(res.stdout)
    return data


def _wait(srv: Served, run_id: str, until: str = "end") -> dict[str, Any]:
    with srv.client("alice") as c:
        doc: dict[str, Any] = c.get(
            f"/v1/runs/{run_id}/wait", params={"timeout": 60, "until": until}
        ).json()
    assert doc["done"], doc
    return doc


def _hint(stderr: str, head: str) -> list[str]:
    """The command of the hint line that starts with ``head``, as a shell would split it."""
    (line,) = [ln for ln in stderr.splitlines() if ln.startswith(head)]
    command = line[len(head) :].split("   (or:")[0]
    return shlex.split(command)


# -- 1 and 5: the question, and the attempts ---------------------------------------------


def test_the_agents_question_and_attempts_as_locally(srv: Served) -> None:
    server = _server(srv)
    res = _cli(workflow, "run", "ask", **server)
    assert res.exit_code == 3, res.output
    assert f"`research` asks: {QUESTION}" in res.stderr
    answer = _hint(res.stderr, "answer with: ")  # copied as printed
    assert answer[:2] == ["workflow", "answer"] and "resume" not in answer
    run_id = answer[2]
    remote = json.loads(_cli(workflow, "status", run_id, "--json", **server).stdout)
    local = _local(srv, "status", run_id)
    assert remote["steps"]["research"]["question"]["text"] == QUESTION
    assert remote["steps"]["research"]["question"] == local["steps"]["research"]["question"]
    for sid, step in local["steps"].items():  # every key the local status has, per step
        assert set(remote["steps"][sid]) == set(step), sid
    plain = _cli(workflow, "status", run_id, **server)
    assert QUESTION in plain.stdout and f"--server {srv.url}" in plain.stdout

    answer[4] = "0-50 °C"
    done = _cli(workflow, *answer[1:], ORCH_SERVER_TOKEN=TOKENS["alice"][1])
    assert done.exit_code == 0, done.output
    _wait(srv, run_id)
    remote = json.loads(_cli(workflow, "status", run_id, "--json", **server).stdout)
    local = _local(srv, "status", run_id)
    research = remote["steps"]["research"]
    assert research["attempts"] == local["steps"]["research"]["attempts"] == 2
    assert research["delegation_run_id"].endswith("-research-2")
    with srv.client("alice") as c:  # the API counts as the CLI does
        assert c.get(f"/v1/runs/{run_id}").json()["steps"]["research"]["attempts"] == 2


# -- 2 and 3: tokens ----------------------------------------------------------------------


def test_a_missing_token_is_named_as_missing(srv: Served) -> None:
    res = _cli(workflow, "run", "gate", "-i", "query=x", "--server", srv.url)
    assert res.exit_code == 2, res.output
    assert "environment variable `ORCH_SERVER_TOKEN` is not set or empty" in res.stderr
    assert "refused" not in res.stderr
    unset = _cli(
        workflow, "run", "gate", "-i", "query=x", "--server", srv.url,
        "--server-token-env", "UNSET_VAR",
    )  # fmt: skip
    assert unset.exit_code == 2
    assert "environment variable `UNSET_VAR` is not set or empty" in unset.stderr


def test_a_refused_token_names_the_variable_used(srv: Served) -> None:
    res = _cli(
        workflow, "status", "orch-x", "--server", srv.url, "--server-token-env", "WRONG",
        WRONG="w" * 24,
    )  # fmt: skip
    assert res.exit_code == 2, res.output
    assert "refused the token from environment variable `WRONG`" in res.stderr
    assert "ORCH_SERVER_TOKEN" not in res.stderr and "w" * 24 not in res.stderr
    res = _cli(workflow, "status", "orch-x", ORCH_SERVER=srv.url, ORCH_SERVER_TOKEN="v" * 24)
    assert res.exit_code == 2
    assert "refused the token from environment variable `ORCH_SERVER_TOKEN`" in res.stderr


def test_every_error_reply_has_an_exit_code(srv: Served) -> None:
    with srv.client(None) as anon, srv.client("reader") as reader:
        r = anon.get("/v1/runs")
        assert r.status_code == 401 and r.json()["exit_code"] == 2
        assert r.json()["detail"].startswith("missing or unknown bearer token")
        r = reader.post("/v1/runs", json={"workflow": "gate", "inputs": {"query": "x"}})
        assert r.status_code == 403 and r.json()["exit_code"] == 5
        r = reader.get("/v1/nothing-here")
        assert r.status_code == 404 and r.json() == {"detail": "Not Found", "exit_code": 2}


# -- 4, 7 and 8: what does not go with `--server` ----------------------------------------


def test_config_with_a_server_is_refused(srv: Served) -> None:
    server = _server(srv)
    res = _cli(workflow, "run", "gate", "-i", "query=x", "--config", "missing.yaml", **server)
    assert res.exit_code == 2, res.output
    assert "`--config missing.yaml` and $ORCH_SERVER" in res.stderr
    assert "Drop `--config` to act through the server" in res.stderr
    res = _cli(
        orchestrate, "delegate", "webster", "hi", "--caller", "manager",
        "--server", srv.url, "--config", "nope.yaml", ORCH_SERVER_TOKEN=TOKENS["alice"][1],
    )  # fmt: skip
    assert res.exit_code == 2, res.output
    assert f"`--config nope.yaml` and `--server {srv.url}` do not go together" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("shape", "says"),
    [
        ("{url}/v1", "without a path (`{url}`)"),
        ("htp://{host}", "give the scheme `http://` or `https://`"),
        ("{host}", "give the scheme `http://` or `https://`"),
        ("http://", "give the scheme `http://` or `https://`"),
    ],
    ids=["path", "scheme", "no-scheme", "no-host"],
)
def test_a_bad_server_url_is_refused_up_front(srv: Served, shape: str, says: str) -> None:
    host = srv.url.split("://", 1)[1]
    given = shape.format(url=srv.url, host=host)
    res = _cli(workflow, "run", "gate", "-i", "query=x", "--server", given,
               ORCH_SERVER_TOKEN=TOKENS["alice"][1])  # fmt: skip
    assert res.exit_code == 2, res.output
    assert res.stderr.startswith(f"error: `--server {given}`")
    assert says.format(url=srv.url) in res.stderr
    assert "Not Found" not in res.stderr and "UnsupportedProtocol" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_a_password_in_the_server_url_is_refused_unseen(srv: Served) -> None:
    host = srv.url.split("://", 1)[1]
    given = f"http://ops:hunter2-secret@{host}"
    res = _cli(workflow, "status", "wf-x", "--server", given, ORCH_SERVER_TOKEN=TOKENS["alice"][1])
    assert res.exit_code == 2, res.output
    assert "carries a user or password" in res.stderr and f"`http://{host}`" in res.stderr
    assert "hunter2" not in res.output


def test_dry_run_with_a_server_is_refused_as_orchestrate_does(
    srv: Served, tmp_path: Any, monkeypatch: Any
) -> None:
    monkeypatch.chdir(tmp_path)  # no config here: the refusal comes first
    server = _server(srv)
    res = _cli(workflow, "run", "gate", "-i", "query=x", "--dry-run", **server)
    assert res.exit_code == 2, res.output
    said = res.stderr
    assert said.startswith("error: `--dry-run` is local (acting on this host)")
    assert "drop `--dry-run` to act through the server, or drop the server" in said
    res = _cli(orchestrate, "webster", "x", "--caller", "manager", "--dry-run", **server)
    assert res.exit_code == 2 and res.stderr == said  # in the same words
    res = _cli(workflow, "resume", "wf-x", "--force", "--approve-all", **server)
    assert res.exit_code == 2
    assert res.stderr.startswith("error: `--force` and `--approve-all` are local")


# -- 6: hints copied as printed ----------------------------------------------------------


def test_the_gate_hint_is_copyable(srv: Served) -> None:
    res = _cli(
        workflow, "run", "gate", "-i", "query=q", "--server", srv.url,
        "--server-token-env", "BOB", BOB=TOKENS["bob"][1],
    )  # fmt: skip
    assert res.exit_code == 3, res.output
    head = "waiting for approval at `review`: "
    (line,) = [ln for ln in res.stderr.splitlines() if ln.startswith(head)]
    flags = f"--server {srv.url} --server-token-env BOB"
    assert "(or: workflow reject " in line and line.endswith(f"--reason ... {flags})")
    assert "resume" not in line and "--server URL" not in line
    approve = _hint(res.stderr, head)
    assert approve[-4:] == flags.split()
    done = _cli(workflow, *approve[1:], BOB=TOKENS["bob"][1])
    assert done.exit_code == 0, done.output
    run_id = approve[2]
    assert _wait(srv, run_id)["status"] == "complete"
    default = _cli(workflow, "run", "gate", "-i", "query=r", **_server(srv))
    line = next(ln for ln in default.stderr.splitlines() if ln.startswith(head))
    assert f"--server {srv.url}   (or:" in line and "--server-token-env" not in line
    typed = _cli(workflow, "run", "typed-gate", "-i", "query=t", **_server(srv))
    line = next(ln for ln in typed.stderr.splitlines() if ln.startswith(head))
    assert f" review --input VALUE --server {srv.url}   (or:" in line  # the server's plan


def test_the_answer_hint_of_a_served_delegation_is_copyable(srv: Served) -> None:
    res = _cli(orchestrate, "asker", "Find CTE of ULE", "--caller", "manager", **_server(srv))
    assert res.exit_code == 3, res.output  # blocked: waiting for the answer
    answer = _hint(res.stderr, "continue with: ")
    assert answer[-2:] == ["--server", srv.url]
    assert answer[:2] == ["orchestrate", "answer"] and answer[3] == "YOUR ANSWER"
    answer[3] = "0-50 °C"
    done = _cli(orchestrate, *answer[1:], "--json", ORCH_SERVER_TOKEN=TOKENS["alice"][1])
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout)["result"] == "CTE over 0-50 °C"


# -- 9: the server's runs ------------------------------------------------------------------


def test_runs_lists_the_servers_runs(srv: Served, tmp_path: Any, monkeypatch: Any) -> None:
    parked = _cli(workflow, "run", "gate", "-i", "query=listed", "--json", **_server(srv))
    run_id = json.loads(parked.stdout)["runId"]
    monkeypatch.chdir(tmp_path)  # no config here: `$ORCH_SERVER` is not ignored
    res = _cli(workflow, "runs", "--json", "--limit", "100", **_server(srv))
    assert res.exit_code == 0, res.output
    remote = json.loads(res.stdout)
    (row,) = [r for r in remote if r["runId"] == run_id]
    assert row["status"] == "waiting_approval" and row["workflow"] == "gate"
    assert remote == _local(srv, "runs", "--limit", "100")
    few = json.loads(_cli(workflow, "runs", "--json", "--limit", "2", **_server(srv)).stdout)
    assert few == remote[:2]
    table = _cli(workflow, "runs", "--server", srv.url, ORCH_SERVER_TOKEN=TOKENS["alice"][1])
    here = _cli(workflow, "runs", "--config", str(srv.path))
    assert table.exit_code == 0 and table.stdout == here.stdout
    assert "gate" in table.stdout and "waiting_approval" in table.stdout


def test_resume_through_the_server(srv: Served) -> None:
    server = _server(srv)
    parked = json.loads(
        _cli(workflow, "run", "gate", "-i", "query=resumed", "--json", **server).stdout
    )
    run_id = parked["runId"]
    res = _cli(workflow, "resume", run_id, "--retry-failed", **server)
    assert res.exit_code == 2 and "`--retry-failed` is local" in res.stderr, res.output
    res = _cli(workflow, "resume", run_id, **server)
    assert res.exit_code == 3, res.output  # taken over, parked at its gate again
    assert f"workflow approve {run_id} review --server {srv.url}" in res.stderr
    assert _cli(workflow, "approve", run_id, "review", **server).exit_code == 0
    _wait(srv, run_id)
    res = _cli(workflow, "resume", run_id, **server)
    assert res.exit_code == 2 and "has already ended (complete)" in res.stderr
