"""A newcomer's third trial: advice the CLIs print must hold once it is followed."""

from __future__ import annotations

import json
from collections.abc import Iterator
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
