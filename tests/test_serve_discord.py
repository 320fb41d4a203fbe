"""`orchestrate serve` with `serve.discord_inbox: true`: one process takes tasks from
Discord, and a gate of a Discord task approved in the API (the dashboard's call) finishes
with its result posted back. A real server process and the Discord stand-in."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from tests import standins
from tests.helpers import write_config
from tests.servekit import Served
from tests.standins import DiscordAPI

discord_api = standins.discord_api

TOKEN = "discord-bot-token-serve-93c1d7"
QUEUE, RESULTS, GATES = "100", "200", "400"
MANAGER = "111"


@pytest.fixture
def api(discord_api: Callable[..., DiscordAPI]) -> DiscordAPI:
    return discord_api(token=TOKEN, channels={QUEUE: [], RESULTS: [], GATES: []})


@pytest.fixture
def srv(tmp_path: Path, api: DiscordAPI) -> Iterator[Served]:
    served = Served(tmp_path, discord_inbox=True)
    raw = yaml.safe_load(served.path.read_text())
    raw["channels"] = {
        "provider": "discord",
        "base_url": api.base_url,
        "token_env": "SERVE_DISCORD_TOKEN",
        "map": {"task-queue": QUEUE, "results": RESULTS, "gates": GATES},
        "queue": "task-queue",
        "results": "results",
        "gates": "gates",
        "callers": {MANAGER: "manager"},
        "poll_interval": 0.05,
        "post_delays": [0.01, 0.01, 0.01],
    }
    write_config(tmp_path, raw)
    served.env["SERVE_DISCORD_TOKEN"] = TOKEN
    served.start()
    try:
        yield served
    finally:
        served.stop()


def test_a_discord_task_runs_in_the_server(srv: Served, api: DiscordAPI) -> None:
    mid = api.add_message(QUEUE, "webster: CTE of ULE", author_id=MANAGER)
    (result,) = api.wait_posts(RESULTS, 1)
    assert str(result["content"]).startswith("**complete**")
    assert f"Task {mid} from <@{MANAGER}>" in str(result["content"])


def test_a_discord_gate_approved_in_the_api_posts_the_result(srv: Served, api: DiscordAPI) -> None:
    api.add_message(QUEUE, "workflow gate query=CTE", author_id=MANAGER)
    (notice,) = api.wait_posts(GATES, 1)
    content = str(notice["content"])
    assert content.startswith("⏸ approval needed: workflow `gate`, step `review`")
    run_id = content.split("run `", 1)[1].split("`", 1)[0]
    with srv.client("bob") as bob:
        r = bob.post(f"/v1/runs/{run_id}/steps/review/approve", json={"reason": "ok"})
        assert r.status_code == 200, r.text
    (result,) = api.wait_posts(RESULTS, 1)
    assert str(result["content"]).startswith("**complete**"), result
    assert f"run `{run_id}`" in str(result["content"])
