"""`orchestrate inbox submit` refuses what the inbox would cut or refuse, before posting.

The Discord stand-in of ``tests/standins.py`` and the real CLI (click's ``CliRunner``).
"""

from __future__ import annotations

from click.testing import CliRunner

from engine.cli import orchestrate
from engine.config import Config
from tests.standins import DiscordAPI
from tests.test_discord_inbox import QUEUE, api, cfg, discord_api

__all__ = ["api", "cfg", "discord_api"]


def _submit(cfg: Config, *args: str) -> tuple[int, str]:
    res = CliRunner().invoke(orchestrate, ["inbox", "submit", *args, "--config", str(cfg.path)])
    assert "Traceback" not in res.output
    return res.exit_code, res.output


def test_a_task_over_discords_limit_is_refused_not_cut(cfg: Config, api: DiscordAPI) -> None:
    code, out = _submit(cfg, "x" * 5000, "--agent", "webster")
    assert code == 2, out
    assert "2,000-character limit" in out and "Nothing was posted" in out
    assert "queued" not in out
    assert api.posted(QUEUE) == []
    # one that fits is posted whole
    code, out = _submit(cfg, "y" * 1900, "--agent", "webster")
    assert code == 0, out
    (queued,) = api.posted(QUEUE)
    assert queued["content"] == "webster: " + "y" * 1900


def test_an_unknown_agent_is_refused_at_submit(cfg: Config, api: DiscordAPI) -> None:
    code, out = _submit(cfg, "find it", "--agent", "websterr")
    assert code == 2, out
    assert "no agent `websterr`" in out and "did you mean `webster`?" in out
    code, out = _submit(cfg, "websterr: find it")
    assert code == 2 and "did you mean `webster`?" in out
    assert api.posted(QUEUE) == []


def test_a_task_without_an_agent_says_to_add_one(cfg: Config, api: DiscordAPI) -> None:
    code, out = _submit(cfg, "find it")
    assert code == 2, out
    assert "--agent NAME" in out
    assert api.posted(QUEUE) == []


def test_a_second_inbox_on_one_directory_says_bots_may_be_shared(
    cfg: Config, api: DiscordAPI
) -> None:
    from engine.discord import DiscordClient
    from engine.errors import ConfigError
    from engine.inbox import DiscordInbox

    def client() -> DiscordClient:
        return DiscordClient.from_config(cfg, sleep=lambda s: None)

    with DiscordInbox(cfg, client()):
        second = DiscordInbox(cfg, client())
        try:
            second.__enter__()
        except ConfigError as exc:
            text = exc.message
        else:  # pragma: no cover - the lock must refuse it
            raise AssertionError("a second inbox on one handoffs directory ran")
        finally:
            second.client.close()
    assert "one inbox runs per handoffs directory" in text
    assert "may share one bot token" in text
    assert "each host with its own bot" not in text


def test_refusal_replies_name_workflows_not_server_paths(cfg: Config, api: DiscordAPI) -> None:
    from engine.discord import DiscordClient
    from engine.inbox import DiscordInbox
    from tests.test_discord_inbox import MANAGER

    nosuch = api.add_message(QUEUE, "workflow nosuch x=1", author_id=MANAGER)
    a_file = api.add_message(QUEUE, "workflow /etc/hostname", author_id=MANAGER)
    with DiscordInbox(cfg, DiscordClient.from_config(cfg, sleep=lambda s: None)) as inbox:
        inbox.poll_once()
        inbox.drain()
    replies = {
        m["message_reference"]["message_id"]: m["content"]
        for m in api.posted(QUEUE)
        if m.get("message_reference")
    }
    assert replies[nosuch].startswith("⛔ not run: no workflow `nosuch`. Known workflows: ")
    assert "`material-trade-study`" in replies[nosuch]
    assert "is not a workflow name" in replies[a_file]
    for text in replies.values():
        assert "Looked in" not in text
        assert str(cfg.path.parent) not in text and "/engine/workflows" not in text
