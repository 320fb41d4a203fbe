"""Seed 002's queue holds tasks that name no agent; `channels.default_agent` delegates
them. The Discord stand-in on 127.0.0.1, demo agents on the embedded gateway."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from engine.cli import orchestrate
from engine.inbox import DiscordInbox, InboxError, parse_task
from tests import standins
from tests.standins import DiscordAPI
from tests.test_discord_inbox import (
    MANAGER,
    POOL,
    QUEUE,
    RESULTS,
    TOKEN,
    client_for,
    inbox_config,
    state_of,
)

discord_api = standins.discord_api
SEED_TASK = "Summarize the latest NX release notes model=cheap thinking=low"


@pytest.fixture
def api(discord_api: Callable[..., DiscordAPI], monkeypatch: pytest.MonkeyPatch) -> DiscordAPI:
    monkeypatch.setenv("INBOX_DISCORD_TOKEN", TOKEN)
    return discord_api(token=TOKEN, channels={QUEUE: [], RESULTS: [], POOL: [], "400": []})


def test_parse_with_a_default_agent() -> None:
    req = parse_task(SEED_TASK, default_agent="webster")
    assert (req.kind, req.target, req.task, req.model, req.thinking) == (
        "delegation", "webster", "Summarize the latest NX release notes", "cheap", "low",
    )  # fmt: skip
    assert parse_task("nx-expert: do it", default_agent="webster").target == "nx-expert"
    with pytest.raises(InboxError, match="not a task"):
        parse_task(SEED_TASK)


def test_a_task_naming_no_agent_goes_to_the_default_agent(tmp_path: Path, api: DiscordAPI) -> None:
    cfg = inbox_config(tmp_path, api.base_url, default_agent="webster")
    mid = api.add_message(QUEUE, SEED_TASK, author_id=MANAGER)
    with DiscordInbox(cfg, client_for(cfg)) as inbox:
        assert inbox.poll_once() == [mid]
        inbox.drain()
    state = state_of(cfg, mid)
    assert state["state"] == "posted", state
    assert state["request"]["target"] == "webster"
    assert state["request"]["task"] == "Summarize the latest NX release notes"
    assert state["request"]["model"] == "cheap" and state["request"]["thinking"] == "low"
    (result,) = api.posted(RESULTS)
    assert "agent `webster`" in result["content"]
    record = json.loads((cfg.handoffs_dir / f"{state['run_id']}.json").read_text())
    assert record["envelope"]["caller"] == "manager"


def test_default_agent_must_be_an_agent(tmp_path: Path, api: DiscordAPI) -> None:
    with pytest.raises(Exception, match="`channels.default_agent` `webstr` is not an agent"):
        inbox_config(tmp_path, api.base_url, default_agent="webstr")


def test_submit_without_agent_uses_the_default(tmp_path: Path, api: DiscordAPI) -> None:
    cfg = inbox_config(tmp_path, api.base_url, default_agent="webster")
    res = CliRunner().invoke(
        orchestrate, ["inbox", "submit", "Summarize it", "--model", "cheap", "--config",
                      str(cfg.path)],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    (posted,) = api.posted(QUEUE)
    assert posted["content"] == "Summarize it model=cheap"
