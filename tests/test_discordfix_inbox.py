"""The Discord inbox when Discord's side changes under it: deleted notices and tasks, runs
cancelled at a terminal, host paths in posts, rate limits, approvers' notifications.

The Discord stand-in of ``tests/standins.py`` on 127.0.0.1 (Discord's REST routes and
error codes), demo agents on the embedded gateway, real files.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from engine.cli import orchestrate, workflow
from engine.config import Config, load_config
from engine.discord import CLAIM, DiscordNotFound, message_gone
from engine.inbox import DiscordInbox
from tests.helpers import demo_config, write_config
from tests.standins import DiscordAPI, Recorded, Scripted
from tests.test_discord_inbox import (
    BOSS,
    GATES,
    MANAGER,
    POOL,
    QUEUE,
    RESULTS,
    api,
    cfg,
    client_for,
    discord_api,
    inbox_config,
    state_of,
)

__all__ = ["api", "cfg", "discord_api"]

GATED = (
    'workflow material-trade-study materials=Zerodur requirements="CTE < 0.01 ppm/K '
    'DEMO_CONFIDENCE=low"'
)


def delete(api: DiscordAPI, channel: str, message_id: str) -> None:
    """Someone (a moderator, the author) deletes a message in Discord."""
    with api.state:
        api.channels[channel] = [m for m in api.channels[channel] if m["id"] != message_id]


def run_once(cfg: Config) -> Any:
    return CliRunner().invoke(
        orchestrate, ["inbox", "discord", "--once", "--config", str(cfg.path)]
    )


# -- 1. a deleted gate notice ---------------------------------------------------------------


def test_a_deleted_gate_notice_is_posted_again_and_other_tasks_go_on(
    cfg: Config, api: DiscordAPI
) -> None:
    mid = api.add_message(QUEUE, GATED, author_id=MANAGER)
    logged: list[str] = []
    with DiscordInbox(cfg, client_for(cfg), log=logged.append) as inbox:
        inbox.poll_once()
        inbox.drain()
        (notice,) = api.posted(GATES)
        run_id = state_of(cfg, mid)["run_id"]
        delete(api, GATES, notice["id"])
        task = api.add_message(QUEUE, "webster: new task after deletion", author_id=MANAGER)
        assert inbox.poll_once() == [task]  # the gate's 404 stops nothing
        inbox.drain()
        assert state_of(cfg, task)["state"] == "posted"
        (again,) = api.posted(GATES)
        assert again["content"].startswith(
            f"⏸ approval needed: workflow `material-trade-study`, step `audit` (agent "
            f"`auditor`), run `{run_id}`, task {mid}."
        )
        assert again["content"].endswith("(posted again: the first notice was deleted)")
        inbox.poll_once()
        assert len(api.posted(GATES)) == 1  # posted again once
        api.react_as(BOSS, again["id"], CLAIM)
        inbox.poll_once()
        inbox.drain()
    state = state_of(cfg, mid)
    assert state["state"] == "posted", state
    assert state["gates"]["audit"]["decision"] == "approved"
    assert state["gates"]["audit"]["deleted_message_id"] == notice["id"]
    assert [m["content"][:12] for m in api.posted(RESULTS)] == ["**complete**"] * 2
    assert not any("poll failed" in line for line in logged)


def test_a_notice_deleted_twice_points_at_the_terminal(cfg: Config, api: DiscordAPI) -> None:
    mid = api.add_message(QUEUE, GATED, author_id=MANAGER)
    with DiscordInbox(cfg, client_for(cfg)) as inbox:
        inbox.poll_once()
        inbox.drain()
        run_id = state_of(cfg, mid)["run_id"]
        delete(api, GATES, api.posted(GATES)[0]["id"])
        inbox.poll_once()
        delete(api, GATES, api.posted(GATES)[0]["id"])
        inbox.poll_once()
        (line,) = api.posted(GATES)
        assert line["content"] == (
            f"⏸ the approval notice of workflow `material-trade-study`, step `audit`, run "
            f"`{run_id}` was deleted twice: decide at a terminal with `workflow approve "
            f"{run_id} audit` or `workflow reject {run_id} audit --reason ...`."
        )
        sent = len(api.requests)
        inbox.poll_once()
        assert len(api.posted(GATES)) == 1  # said once, and no reactions read any more
        assert not any("/reactions/" in r.path for r in api.requests[sent:])
        res = CliRunner().invoke(workflow, ["approve", run_id, "audit", "--config", str(cfg.path)])
        assert res.exit_code == 0, res.output
        inbox.poll_once()
        inbox.drain()
    assert state_of(cfg, mid)["state"] == "posted"
    assert api.posted(RESULTS)[0]["content"].startswith("**complete**")


def test_once_exits_0_after_a_gate_notice_was_deleted(cfg: Config, api: DiscordAPI) -> None:
    api.add_message(QUEUE, GATED, author_id=MANAGER)
    assert run_once(cfg).exit_code == 0
    delete(api, GATES, api.posted(GATES)[0]["id"])
    task = api.add_message(QUEUE, "webster: new task after deletion", author_id=MANAGER)
    res = run_once(cfg)
    assert res.exit_code == 0, res.output
    assert state_of(cfg, task)["state"] == "posted"


# -- 2. a run cancelled at a terminal -------------------------------------------------------


def test_a_run_cancelled_at_a_terminal_is_reported(cfg: Config, api: DiscordAPI) -> None:
    mid = api.add_message(QUEUE, GATED, author_id=MANAGER)
    with DiscordInbox(cfg, client_for(cfg)) as inbox:
        inbox.poll_once()
        inbox.drain()
        run_id = state_of(cfg, mid)["run_id"]
        res = CliRunner().invoke(workflow, ["cancel", run_id, "--config", str(cfg.path)])
        assert res.exit_code == 0, res.output
        inbox.poll_once()
        inbox.drain()
        inbox.poll_once()
    state = state_of(cfg, mid)
    assert state["state"] == "posted", state
    assert state["result"]["status"] == "cancelled"
    (result,) = api.posted(RESULTS)
    head, task_line, *body = result["content"].split("\n")
    assert head.startswith("**cancelled** · agent `workflow material-trade-study`")
    assert f"run `{run_id}`" in head
    assert task_line.startswith(f"Task {mid} from <@{MANAGER}>: ")
    assert "- audit: skipped" in body
    assert api.posted(POOL)[-1]["content"].startswith(
        f"■ `workflow material-trade-study` finished task {mid}: cancelled in "
    )


# -- 3. a task deleted before it is claimed ---------------------------------------------------


def test_a_task_deleted_before_its_claim_is_skipped(
    cfg: Config, api: DiscordAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    gone = api.add_message(QUEUE, "webster: to be deleted", author_id=MANAGER)
    stays = api.add_message(QUEUE, "webster: stays", author_id=MANAGER)
    answer = api.answer

    def deleted_after_listing(rec: Recorded, step: Scripted | None) -> Any:
        out = answer(rec, step)
        if rec.method == "GET" and rec.path.endswith(f"/channels/{QUEUE}/messages"):
            delete(api, QUEUE, gone)  # the author deletes it while the inbox looks
        return out

    monkeypatch.setattr(api, "answer", deleted_after_listing)
    res = run_once(cfg)
    assert res.exit_code == 0, res.output
    assert f"message {gone}: deleted before it was claimed; skipped" in res.output
    assert "channels.map" not in res.output
    assert not (cfg.handoffs_dir / "inbox-discord" / f"{gone}.json").exists()
    assert state_of(cfg, stays)["state"] == "posted"
    (result,) = api.posted(RESULTS)
    assert f"Task {stays} from" in result["content"]


def test_a_task_deleted_after_the_claims_reaction_is_let_go(
    cfg: Config, api: DiscordAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    gone = api.add_message(QUEUE, "webster: to be deleted", author_id=MANAGER)
    stays = api.add_message(QUEUE, "webster: stays", author_id=MANAGER)
    answer = api.answer

    def deleted_after_reaction(rec: Recorded, step: Scripted | None) -> Any:
        out = answer(rec, step)
        if rec.method == "PUT" and f"/messages/{gone}/reactions/" in rec.path:
            delete(api, QUEUE, gone)
        return out

    monkeypatch.setattr(api, "answer", deleted_after_reaction)
    logged: list[str] = []
    with DiscordInbox(cfg, client_for(cfg), log=logged.append) as inbox:
        assert inbox.poll_once() == [stays]
        inbox.drain()
        assert inbox.poll_once() == []
    assert f"message {gone}: deleted before it was claimed; skipped" in logged
    assert not (cfg.handoffs_dir / "inbox-discord" / f"{gone}.json").exists()
    assert state_of(cfg, stays)["state"] == "posted"


def test_a_404_says_what_is_missing(cfg: Config, api: DiscordAPI) -> None:
    client = client_for(cfg)
    with pytest.raises(DiscordNotFound) as err:
        client.messages("1234")  # an id no key of `channels.map` has
    assert err.value.gone == "channel" and not message_gone(err.value)
    assert "check the channel ids in `channels.map`: none of them is `1234`" in str(err.value)
    api.script.append(404)  # Unknown Channel, on a mapped id
    with pytest.raises(DiscordNotFound) as err:
        client.post(RESULTS, "x")
    assert (
        f"Discord channel {RESULTS} (`results` in `channels.map`) not found (404: Unknown "
        f'Channel): check the channel ids in `channels.map` (`results: "{RESULTS}"`; in '
        "Discord: right-click the channel > Copy Channel ID), and that the bot is in that "
        "server."
    ) == str(err.value)
    with pytest.raises(DiscordNotFound) as err:
        client.react(QUEUE, "1480000000000000999", CLAIM)
    assert message_gone(err.value)
    assert str(err.value) == (
        f"Discord message 1480000000000000999 in channel {QUEUE} (`task-queue` in "
        "`channels.map`) not found (404: Unknown Message): it was deleted."
    )
    assert client.message(QUEUE, "1480000000000000999") is None
    with pytest.raises(DiscordNotFound):
        client.message("1234", "1480000000000000999")  # a wrong channel is not "deleted"
    client.close()


# -- 4. no host path in a post ----------------------------------------------------------------


def test_posts_name_no_directory_of_the_host(tmp_path: Path, api: DiscordAPI) -> None:
    raw = demo_config(tmp_path)
    raw["agents"]["webster"]["timeout"] = 1
    raw["channels"] = inbox_config(tmp_path, api.base_url).channels
    cfg = load_config(write_config(tmp_path, raw))
    mid = api.add_message(QUEUE, "webster: slow one DEMO_SLEEP=30", author_id=MANAGER)
    with DiscordInbox(cfg, client_for(cfg)) as inbox:
        inbox.poll_once()
        inbox.drain()
    state = state_of(cfg, mid)
    assert state["result"]["status"] == "timeout"
    assert str(cfg.handoffs_dir) in state["result"]["text"]  # the record keeps the path
    (result,) = api.posted(RESULTS)
    assert "still recorded (marked late) in .../handoffs" in result["content"]
    for channel in (QUEUE, RESULTS, POOL, GATES):
        for msg in api.posted(channel):
            assert str(tmp_path) not in msg["content"], msg["content"]


# -- 5. exit codes of `inbox discord --once` ------------------------------------------------


def documented_exit_codes() -> dict[int, str]:
    """The exit-code table of docs/discord.md's "Exit codes" section."""
    text = (Path(__file__).parent.parent / "docs" / "discord.md").read_text(encoding="utf-8")
    section = text.split("\n## Exit codes\n", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| (\d+) \| (.+) \|$", section, flags=re.M)
    return {int(code): meaning for code, meaning in rows}


def test_once_exit_codes_are_the_documented_ones(cfg: Config, api: DiscordAPI) -> None:
    codes = documented_exit_codes()
    assert sorted(codes) == [0, 2, 4]
    api.add_message(QUEUE, "webster: find the CTE of ULE", author_id=MANAGER)
    assert run_once(cfg).exit_code == 0
    api.script.append(
        Scripted(429, {"message": "You are being rate limited.", "retry_after": 3600,
                       "global": True})
    )  # fmt: skip
    res = run_once(cfg)
    assert res.exit_code == 4 and "rate-limits the bot" in codes[4]
    assert "rate-limits every request of this bot (a global limit)" in res.output
    assert "`inbox discord --once`, `inbox submit`) exits 4: run it again after then" in (
        " ".join(res.output.split())
    )
    api.script.append(403)
    res = run_once(cfg)
    assert res.exit_code == 2 and "403" in codes[2]


# -- 6. approvers named in a notice are notified ----------------------------------------------


def notice_mentions(api: DiscordAPI, channel: str) -> list[Any]:
    return [
        r.body.get("allowed_mentions")
        for r in api.requests
        if r.method == "POST" and r.path.endswith(f"/channels/{channel}/messages")
    ]


def test_the_approvers_a_notice_names_are_notified(cfg: Config, api: DiscordAPI) -> None:
    mid = api.add_message(QUEUE, GATED, author_id=MANAGER)
    with DiscordInbox(cfg, client_for(cfg)) as inbox:
        inbox.poll_once()
        inbox.drain()
        (notice,) = api.posted(GATES)
        assert f"(<@{BOSS}>)" in notice["content"]
        assert notice_mentions(api, GATES) == [{"parse": [], "users": [BOSS]}]
        api.react_as(BOSS, notice["id"], CLAIM)
        inbox.poll_once()
        inbox.drain()
    assert state_of(cfg, mid)["state"] == "posted"
    # results, claim replies and notices name nobody else to notify: never @everyone
    for channel in (QUEUE, RESULTS, POOL):
        assert notice_mentions(api, channel), channel
        assert all(m == {"parse": []} for m in notice_mentions(api, channel))


def test_a_question_notifies_the_author_and_the_approvers(
    tmp_path: Path, api: DiscordAPI
) -> None:
    from tests.test_discord_inbox import asker_config

    cfg = asker_config(tmp_path, api)
    api.add_message(QUEUE, "workflow ask", author_id=MANAGER)
    with DiscordInbox(cfg, client_for(cfg)) as inbox:
        inbox.poll_once()
        inbox.drain()
    (notice,) = api.posted(GATES)
    assert f"(<@{MANAGER}>, <@{BOSS}>)." in notice["content"]
    assert notice_mentions(api, GATES) == [{"parse": [], "users": [MANAGER, BOSS]}]
