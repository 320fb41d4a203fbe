"""The CLI beside and through `orchestrate serve`: idempotency keys, `--server` as a client."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from click.testing import CliRunner

from engine.cli import orchestrate, workflow
from engine.serve.settings import ServeSettings
from tests.servekit import GATEWAY_TOKEN, TOKENS, Served


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    served = Served(tmp_path_factory.mktemp("servecli")).start()
    try:
        yield served
    finally:
        served.stop()
    assert "Traceback" not in "".join(served.log), "".join(served.log)


def _cli(group: Any, *args: str, **env: str) -> Any:
    runner = CliRunner(env={"ORCH_TEST_GW_TOKEN": GATEWAY_TOKEN, **env})
    return runner.invoke(group, list(args), catch_exceptions=False)


def test_idempotency_key_returns_the_first_result_unsent(srv: Served) -> None:
    c = ["--config", str(srv.path)]
    before = srv.gateway.stats()["dispatched"].get("secretary", 0)
    args = ["delegate", "secretary", "file the minutes", "--caller", "manager"]
    first = _cli(orchestrate, *args, "--idempotency-key", "minutes-1", "--json", *c)
    assert first.exit_code == 0, first.output
    again = _cli(orchestrate, *args, "--idempotency-key", "minutes-1", "--json", *c)
    assert again.exit_code == 0, again.output
    one, two = json.loads(first.stdout), json.loads(again.stdout)
    assert one["runId"] == two["runId"] and one == two
    assert srv.gateway.stats()["dispatched"]["secretary"] == before + 1
    other = _cli(
        orchestrate,
        "delegate", "secretary", "another task", "--caller", "manager",
        "--idempotency-key", "minutes-1", *c,
    )  # fmt: skip
    assert other.exit_code == 2
    assert "idempotency key 'minutes-1' was already used for a different delegate request" in (
        other.stderr
    )
    refused = _cli(
        orchestrate,
        "delegate", "secretary", "x", "--caller", "webster", "--idempotency-key", "k-2", *c,
    )  # fmt: skip
    assert refused.exit_code == 5  # the ACL refuses before any key is claimed
    ok = _cli(orchestrate, *args, "--idempotency-key", "k-2", *c)
    assert ok.exit_code == 0, ok.output


def _keys(doc: dict[str, Any]) -> tuple[set[str], set[str]]:
    step_keys = {k for s in doc["steps"].values() for k in s}
    return set(doc), step_keys


def test_workflow_commands_through_the_server(srv: Served) -> None:
    server = {"ORCH_SERVER": srv.url, "ORCH_SERVER_TOKEN": TOKENS["alice"][1]}
    res = _cli(workflow, "run", "gate", "-i", "query=CTE", "--json", **server)
    assert res.exit_code == 3, res.output  # parked at its gate, as locally
    remote = json.loads(res.stdout)
    run_id = remote["runId"]
    local = json.loads(_cli(workflow, "status", run_id, "--json", "--config", str(srv.path)).stdout)
    status = _cli(workflow, "status", run_id, "--json", **server)
    assert status.exit_code == 0, status.output
    assert _keys(json.loads(status.stdout)) == _keys(local)
    assert set(remote) == set(local) - {"live"}

    bad = _cli(workflow, "approve", run_id, "review", **{**server, "ORCH_SERVER_TOKEN": "x" * 20})
    assert bad.exit_code == 2 and "refused the token" in bad.stderr  # a wrong credential
    reader = {**server, "ORCH_SERVER_TOKEN": TOKENS["reader"][1]}
    res = _cli(workflow, "approve", run_id, "review", **reader)
    assert res.exit_code == 5 and "has the `read` role" in res.stderr
    res = _cli(
        workflow, "approve", run_id, "review", "--server", srv.url,
        "--server-token-env", "BOB", BOB=TOKENS["bob"][1],
    )  # fmt: skip
    assert res.exit_code == 0 and res.stdout.strip() == (
        f"approved `review`; the server continues run {run_id}."
    )
    with srv.client("alice") as c:
        assert c.get(f"/v1/runs/{run_id}/wait", params={"timeout": 60}).json()["done"]
    done = json.loads(_cli(workflow, "status", run_id, "--json", **server).stdout)
    assert done["status"] == "complete" and done["steps"]["review"]["gate"]["by"] == "bob"

    parked = json.loads(_cli(workflow, "run", "gate", "-i", "query=y", "--json", **server).stdout)
    res = _cli(workflow, "cancel", parked["runId"], **server)
    assert res.exit_code == 0 and res.stdout.strip() == f"cancelled {parked['runId']}."
    parked = json.loads(_cli(workflow, "run", "gate", "-i", "query=z", "--json", **server).stdout)
    res = _cli(workflow, "reject", parked["runId"], "review", "--reason", "no", **server)
    assert res.exit_code == 0 and res.stdout.startswith("rejected `review`; the server concludes")
    with srv.client("alice") as c:
        doc = c.get(f"/v1/runs/{parked['runId']}/wait", params={"timeout": 60}).json()
    assert doc["status"] == "failed" and doc["steps"]["review"]["status"] == "rejected"
    res = _cli(workflow, "run", "gate", "--json", **server)
    assert res.exit_code == 2 and "query" in res.stderr


def test_delegate_through_the_server_keeps_the_record_shape(srv: Served) -> None:
    server = {"ORCH_SERVER": srv.url, "ORCH_SERVER_TOKEN": TOKENS["alice"][1]}
    args = ["delegate", "webster", "CTE of Zerodur", "--caller", "manager", "--json"]
    remote = _cli(orchestrate, *args, "--idempotency-key", "z-1", **server)
    assert remote.exit_code == 0, remote.output
    local = _cli(orchestrate, *args, "--config", str(srv.path))
    r, loc = json.loads(remote.stdout), json.loads(local.stdout)
    assert set(r) == set(loc) and set(r["envelope"]) == set(loc["envelope"])
    again = _cli(orchestrate, *args, "--idempotency-key", "z-1", **server)
    assert json.loads(again.stdout)["runId"] == r["runId"]
    res = _cli(orchestrate, *args, "--validate", **server)
    assert res.exit_code == 2 and "`--validate` is local" in res.stderr
    res = _cli(orchestrate, *args, "--server", "http://127.0.0.1:9", **server)
    assert res.exit_code == 2 and "cannot reach the server `http://127.0.0.1:9`" in res.stderr


def test_non_loopback_without_tokens_is_refused(tmp_path: Any) -> None:
    from engine.config import config_from_dict
    from tests.helpers import demo_config

    cfg = config_from_dict(demo_config(tmp_path))
    with pytest.raises(Exception) as err:
        ServeSettings.from_config(cfg, host="0.0.0.0").check_bind()
    assert "refusing to serve on `0.0.0.0` without tokens" in str(err.value)
    ServeSettings.from_config(cfg, host="127.0.0.1").check_bind()
    ServeSettings.from_config(cfg, host="::1").check_bind()


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("alice:admin:" + "t" * 20, "role 'admin' of `alice` must be one of: read, operate"),
        ("alice:read:short", "the token of `alice` must have at least 16 characters"),
        ("just-a-token-without-name", "entry 1 is not `NAME:ROLE:TOKEN`"),
        ("a:read:" + "t" * 20 + " b:operate:" + "t" * 20, "is also the token of another name"),
        ("", "environment variable `SRV_TOKENS` is not set or empty"),
    ],
    ids=["bad-role", "short", "no-name", "shared", "empty"],
)
def test_token_settings_problems(tmp_path: Any, value: str, message: str, monkeypatch: Any) -> None:
    from engine.config import config_from_dict
    from engine.errors import ConfigError
    from tests.helpers import demo_config

    monkeypatch.setenv("SRV_TOKENS", value)
    cfg = config_from_dict(demo_config(tmp_path, serve={"tokens_env": "SRV_TOKENS"}))
    with pytest.raises(ConfigError) as err:
        ServeSettings.from_config(cfg)
    assert message in str(err.value)
    assert "t" * 20 not in str(err.value)


def test_tokens_from_env_authenticate_by_name(tmp_path: Any, monkeypatch: Any) -> None:
    from engine.config import config_from_dict
    from tests.helpers import demo_config

    a, b = "a" * 24, "b" * 24
    monkeypatch.setenv("SRV_TOKENS", f"ops:operate:{a}, viewer:read:{b}")
    cfg = config_from_dict(demo_config(tmp_path, serve={"tokens_env": "SRV_TOKENS"}))
    s = ServeSettings.from_config(cfg, port=0)
    assert [(t.name, t.role) for t in s.tokens] == [("ops", "operate"), ("viewer", "read")]
    assert s.authenticate(f"Bearer {b}") == s.tokens[1]
    assert s.authenticate(f"Bearer {a}x") is None and s.authenticate(None) is None
    assert a not in repr(s)


def test_serve_refuses_a_busy_port_and_an_open_address(srv: Served, tmp_path: Any) -> None:
    from tests.helpers import demo_config, write_config

    port = srv.url.rsplit(":", 1)[1]
    res = _cli(orchestrate, "serve", "--port", port, "--config", str(srv.path))
    assert res.exit_code == 2
    assert res.stderr.startswith(f"error: cannot listen on 127.0.0.1:{port}: ")
    bare = write_config(tmp_path, demo_config(tmp_path))
    res = _cli(orchestrate, "serve", "--host", "0.0.0.0", "--config", str(bare))
    assert res.exit_code == 2 and "refusing to serve on `0.0.0.0` without tokens" in res.stderr


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("- name: a\n  role: operate\n  token: SECRETTOKENVALUE0001: x\n", "is not valid YAML"),
        (
            "- name: a\n  role: operate\n  token: SECRETTOKENVALUE0001\n"
            "  token: SECRETTOKENVALUE0002\n",
            "key `[0].token` is written twice",
        ),
        ("tokens: {a: SECRETTOKENVALUE0001}\n", "must be a list of `{name, role, token}`"),
        ("- SECRETTOKENVALUE0001\n", "item 1 is not a mapping with `name`, `role` and `token`"),
    ],
    ids=["syntax", "duplicate", "not-a-list", "not-a-mapping"],
)
def test_tokens_file_problems_never_show_a_token(tmp_path: Any, text: str, message: str) -> None:
    from engine.config import config_from_dict
    from engine.errors import ConfigError
    from tests.helpers import demo_config

    path = tmp_path / "tokens.yaml"
    path.write_text(text)
    cfg = config_from_dict(demo_config(tmp_path, serve={"tokens_file": str(path)}))
    with pytest.raises(ConfigError) as err:
        ServeSettings.from_config(cfg)
    assert message in str(err.value) and "SECRETTOKEN" not in str(err.value)


def test_the_record_line_of_a_served_delegation_is_its_url(srv: Served) -> None:
    server = {"ORCH_SERVER": srv.url, "ORCH_SERVER_TOKEN": TOKENS["alice"][1]}
    res = _cli(orchestrate, "delegate", "secretary", "file the notes", "--caller", "manager",
               **server)
    assert res.exit_code == 0, res.output
    (line,) = [ln for ln in res.stdout.splitlines() if ln.startswith("record: ")]
    assert line.startswith(f"record: {srv.url}/v1/delegations/orch-"), line  # `http://`


def test_status_names_the_server_as_the_runner(srv: Served) -> None:
    server = {"ORCH_SERVER": srv.url, "ORCH_SERVER_TOKEN": TOKENS["alice"][1]}
    parked = json.loads(_cli(workflow, "run", "gate", "-i", "query=q", "--json", **server).stdout)
    run_id = parked["runId"]
    res = _cli(workflow, "status", run_id, **server)
    assert res.exit_code == 0, res.output
    head = res.stdout.splitlines()[0]
    assert head == f"{run_id}: gate — waiting_approval (the server {srv.url} runs it)", head
    assert _cli(workflow, "approve", run_id, "review", **server).exit_code == 0
    with srv.client("alice") as c:
        assert c.get(f"/v1/runs/{run_id}/wait", params={"timeout": 60}).json()["done"]
    head = _cli(workflow, "status", run_id, **server).stdout.splitlines()[0]
    assert head == f"{run_id}: gate — complete", head  # finished: no runner to name
