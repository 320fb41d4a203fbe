"""The CLI through `orchestrate serve`, second pass: `show`, `tree` and `pool status`
through the server (never on this host while `$ORCH_SERVER` is set), what `workflow run
--server` prints as the run, run options the server does not take, and the order of
runs started in the same second (docs/serve.md, "The CLI as a client")."""

from __future__ import annotations

import json
import shlex
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from engine.cli import orchestrate, workflow
from engine.config import load_config
from tests.servekit import TOKENS, Served, cli, served_module, server_env, sse


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    yield from served_module(tmp_path_factory, "servenewcomer2")


_cli, _server = cli, server_env


def _local_json(srv: Served, group: Any, *args: str) -> Any:
    res = _cli(group, *args, "--json", "--config", str(srv.path))
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


# -- 1: show, tree and pool status through the server ------------------------------------


def test_show_and_tree_act_through_the_server(
    srv: Served, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # no config here: acting on this host would fail
    server = _server(srv)
    parent = _cli(orchestrate, "tech-lead", "Study the CTE of ULE", "--caller", "manager",
                  "--json", **server)  # fmt: skip
    assert parent.exit_code == 0, parent.output
    run_id = json.loads(parent.stdout)["runId"]
    child = _cli(
        orchestrate, "webster", "Find CTE of ULE", "--caller", "tech-lead",
        "--parent-run-id", run_id, "--json", **server,
    )  # fmt: skip
    assert child.exit_code == 0, child.output
    child_id = json.loads(child.stdout)["runId"]

    shown = _cli(orchestrate, "show", run_id, "--json", **server)
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.stdout) == _local_json(srv, orchestrate, "show", run_id)
    plain = _cli(orchestrate, "show", run_id, **server)
    assert plain.exit_code == 0, plain.output
    assert plain.stdout.startswith("complete (confidence ")
    assert f"): tech-lead for manager, {run_id}" in plain.stdout.splitlines()[0]
    assert f"record: {srv.url}/v1/delegations/{run_id}\n" in plain.stdout
    assert str(srv.tmp) not in plain.stdout  # nothing of the server's host

    tree = _cli(orchestrate, "tree", run_id, "--json", **server)
    assert tree.exit_code == 0, tree.output
    remote = json.loads(tree.stdout)
    assert [n["run_id"] for n in remote["children"]] == [child_id]
    assert remote == _local_json(srv, orchestrate, "tree", run_id)
    lines = _cli(orchestrate, "tree", run_id, "--server", srv.url,
                 ORCH_SERVER_TOKEN=TOKENS["alice"][1]).stdout.splitlines()  # fmt: skip
    assert lines[0].startswith(f"{run_id}  manager -> tech-lead  complete")
    assert lines[1].startswith(f"└── {child_id}  tech-lead -> webster  complete")

    missing = _cli(orchestrate, "show", "orch-nothing-here", **server)
    assert missing.exit_code == 2, missing.output
    assert "no delegation `orch-nothing-here`" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1
    both = _cli(orchestrate, "tree", run_id, "--config", "x.yaml", **server)
    assert both.exit_code == 2 and "`--config x.yaml` and $ORCH_SERVER" in both.stderr


def test_show_of_a_delegation_in_flight_through_the_server(srv: Served) -> None:
    server = _server(srv)
    with srv.client("alice") as alice:
        cursor = alice.get("/v1/events").json()["cursor"]
        body = {"target": "slowpoke", "task": "hold on", "caller": "manager"}
        run_id = alice.post("/v1/delegations", json=body).json()["runId"]

        def dispatched(ev: dict[str, Any]) -> bool:
            return bool(ev["runId"] == run_id and ev["event"] == "delegation_dispatched")

        feed = list(sse(alice, f"/v1/events/stream?after={cursor}", until=dispatched))
        assert feed and dispatched(feed[-1])
        try:
            shown = _cli(orchestrate, "show", run_id, **server)
            assert shown.exit_code == 0, shown.output
            first, pending = shown.stdout.splitlines()
            assert first.startswith(f"in flight: slowpoke for manager, {run_id} (dispatched ")
            assert pending == f"pending: {srv.url}/v1/delegations/{run_id}"
            remote = json.loads(_cli(orchestrate, "show", run_id, "--json", **server).stdout)
            assert "status" not in remote and remote["envelope"]["target"] == "slowpoke"
            assert remote == _local_json(srv, orchestrate, "show", run_id)
        finally:
            srv.go.touch()
        done = alice.get(f"/v1/delegations/{run_id}/wait", params={"timeout": 60}).json()
    assert done["done"] and done["status"] == "complete"


def test_pool_status_acts_through_the_server(
    srv: Served, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # no config here: acting on this host would fail
    res = _cli(orchestrate, "pool", "status", "--json", **_server(srv))
    assert res.exit_code == 0, res.output
    with srv.client("alice") as c:
        assert json.loads(res.stdout) == c.get("/v1/pool").json() == {"enabled": False}
    plain = _cli(orchestrate, "pool", "status", **_server(srv))
    assert plain.exit_code == 0, plain.output
    assert plain.stdout == (
        f"the server {srv.url} runs without a token pool (`pool.enabled: false` in its "
        "config).\n"
    )
    here = _cli(orchestrate, "pool", "status", "--config", str(srv.path))
    assert here.exit_code == 0 and here.stdout.startswith("pool     ")  # locally: the state


# -- 2: what `run:` says through a server -------------------------------------------------


def test_the_run_line_names_the_run_and_how_to_see_it(srv: Served) -> None:
    res = _cli(workflow, "run", "gate", "-i", "query=where", **_server(srv))
    assert res.exit_code == 3, res.output
    (line,) = [ln for ln in res.stdout.splitlines() if ln.startswith("run: ")]
    handoffs = str(load_config(srv.path).handoffs_dir)
    assert handoffs not in res.stdout and str(srv.tmp) not in res.stdout
    head, see = line.split(" (see it with: ")
    run_id = head.removeprefix("run: ").removesuffix(" on the server")
    assert run_id.startswith("wf-") and " " not in run_id
    command = shlex.split(see.removesuffix(")"))
    assert command == ["workflow", "status", run_id, "--server", srv.url]
    status = _cli(workflow, *command[1:], ORCH_SERVER_TOKEN=TOKENS["alice"][1])
    assert status.exit_code == 0, status.output
    assert status.stdout.startswith(f"{run_id}: gate — waiting_approval")
    here = _cli(workflow, "run", "gate", "-i", "query=here", "--config", str(srv.path))
    assert f"\nrun: {handoffs}/workflows/wf-" in here.stdout  # locally: its directory


# -- 3: run options the server does not take ----------------------------------------------


def test_interactive_and_max_parallel_are_refused_with_a_server(srv: Served) -> None:
    server = _server(srv)
    with srv.client("alice") as c:
        before = {r["runId"] for r in c.get("/v1/runs", params={"limit": 500}).json()["runs"]}
    res = _cli(workflow, "run", "gate", "-i", "query=x", "--interactive", "--max-parallel", "2",
               **server)  # fmt: skip
    assert res.exit_code == 2, res.output
    said = res.stderr
    assert said.startswith("error: `--interactive` and `--max-parallel` are local")
    assert "drop `--interactive` and `--max-parallel` to act through the server" in said
    assert "`serve.max_parallel`" in said and len(said.strip().splitlines()) == 1
    one = _cli(workflow, "run", "gate", "-i", "query=x", "--max-parallel", "4", **server)
    assert one.exit_code == 2 and one.stderr.startswith("error: `--max-parallel` is local")
    res = _cli(workflow, "resume", "wf-x", "--interactive", **server)
    assert res.exit_code == 2 and res.stderr.startswith("error: `--interactive` is local")
    with srv.client("alice") as c:  # nothing was started
        after = {r["runId"] for r in c.get("/v1/runs", params={"limit": 500}).json()["runs"]}
    assert after == before
    quiet = _cli(workflow, "run", "gate", "-i", "query=x", "--non-interactive", "-q", **server)
    assert quiet.exit_code == 3, quiet.output  # what the server does anyway: taken
    assert "waiting for approval at `review`" in quiet.stderr


# -- 4: runs started in the same second ----------------------------------------------------


def _same_second_copies(srv: Served, source: str) -> list[str]:
    """Three copies of run ``source`` made in one second (ids of that second), whose
    run.json says they were created at .100, .500 and .900 s in the order that their
    random tails sort the other way round; the ids, newest first."""
    runs = load_config(srv.path).handoffs_dir / "workflows"
    made = []
    for tail, ms in (("aaaaaaaa", 900), ("bbbbbbbb", 500), ("cccccccc", 100)):
        rid = f"wf-20991231T235959-{tail}"
        shutil.copytree(runs / source, runs / rid)
        meta = json.loads((runs / rid / "run.json").read_text())
        meta.update(runId=rid, created_at=f"2099-12-31T23:59:59.{ms:03d}Z")
        (runs / rid / "run.json").write_text(json.dumps(meta))
        made.append(rid)
    return made


def test_runs_of_one_second_are_listed_by_their_start(srv: Served) -> None:
    server = _server(srv)
    done = _cli(workflow, "run", "gate", "-i", "query=copied", "--approve-all", "--json",
                **server)  # fmt: skip
    assert done.exit_code == 0, done.output
    newest = _same_second_copies(srv, json.loads(done.stdout)["runId"])
    local = _local_json(srv, workflow, "runs", "--limit", "100")
    assert [r["runId"] for r in local[:3]] == newest
    remote = _cli(workflow, "runs", "--json", "--limit", "100", **server)
    assert remote.exit_code == 0, remote.output
    assert json.loads(remote.stdout) == local
    two = _cli(workflow, "runs", "--json", "--limit", "2", **server)
    assert json.loads(two.stdout) == local[:2]
    with srv.client("alice") as c:  # one run a page: each cursor goes on where it stopped
        seen: list[str] = []
        cursor: str | None = None
        for _ in range(5):
            params: dict[str, Any] = {"limit": 1, **({"cursor": cursor} if cursor else {})}
            page = c.get("/v1/runs", params=params).json()
            seen += [r["runId"] for r in page["runs"]]
            cursor = page["next"]
            if cursor is None:  # the last page (this test alone makes four runs)
                break
    assert seen == [r["runId"] for r in local[:5]]
