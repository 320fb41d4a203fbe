"""A workflow task from the Discord queue whose inputs hold secrets.

Every input the workflow declares secret (``secret: true``, or a name that says so:
``engine.secretnames``) is masked in every post and in the inbox's state file; the run
gets the real values, which the inbox holds in memory while it runs (a gate decided in
Discord resumes it with them). An inbox restarted meanwhile holds them no more: the run
ends ``failed`` with the paragraph that names ``workflow resume RUN -i NAME=VALUE``, as
``orchestrate serve`` does. Real parts: the Discord stand-in of ``tests/standins.py``
on 127.0.0.1, a command agent on the embedded gateway, real files.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from engine.config import Config, load_config
from engine.discord import CLAIM
from engine.inbox import DiscordInbox
from engine.runs import run_status
from tests.helpers import write_config
from tests.standins import DiscordAPI
from tests.test_discord_inbox import (
    BOSS,
    GATES,
    MANAGER,
    QUEUE,
    RESULTS,
    api,
    client_for,
    discord_api,
    inbox_config,
    state_of,
)

__all__ = ["api", "discord_api"]

SEC = """\
name: sec
inputs:
  q: {required: true}
  api_key: {required: true}
  acct: {required: true, secret: true}
steps:
  - id: a
    agent: recorder
    task: "use {{ inputs.api_key }} and {{ inputs.acct }} for {{ inputs.q }}"
  - id: b
    agent: tech-lead
    depends_on: [a]
    gate: {prompt: "Go on?"}
    task: "check the result"
"""
KEY, ACCT = "KEYVAL_disc_123456", "ACCT_disc_98765"
TASK = f"workflow sec q=hello api_key={KEY} acct={ACCT}"


@pytest.fixture
def cfg(tmp_path: Path, api: DiscordAPI) -> Config:
    own = tmp_path / "wf"
    own.mkdir()
    (own / "sec.yaml").write_text(SEC, encoding="utf-8")
    base = inbox_config(tmp_path, api.base_url)
    raw: dict[str, Any] = json.loads(json.dumps(_raw(base)))
    raw["workflow_dirs"] = [str(own)]
    seen = tmp_path / "seen.txt"
    script = (
        "import os, pathlib\n"
        f"pathlib.Path({str(seen)!r}).write_text(os.environ['ORCH_TASK'])\n"
        "print('recorded')\n"
    )
    raw["gateway"]["agents"]["recorder"] = {
        "kind": "command",
        "argv": [sys.executable, "-c", script],
        "timeout": 60,
    }
    raw["agents"]["recorder"] = {"url": "local"}
    return load_config(write_config(tmp_path, raw))


def _raw(cfg: Config) -> dict[str, Any]:
    import yaml

    assert cfg.path is not None
    data: dict[str, Any] = yaml.safe_load(cfg.path.read_text(encoding="utf-8"))
    return data


def _everything(cfg: Config, api: DiscordAPI) -> str:
    """Every post of the inbox and every file of its state directory."""
    posts = [m["content"] for ch in api.channels for m in api.posted(ch) if ch != QUEUE]
    replies = [m["content"] for m in api.posted(QUEUE) if m.get("message_reference")]
    files = [p.read_text() for p in (cfg.handoffs_dir / "inbox-discord").glob("*.json")]
    return "\n".join(posts + replies + files)


def test_secret_inputs_are_masked_in_posts_and_state_and_the_run_gets_them(
    cfg: Config, api: DiscordAPI, tmp_path: Path
) -> None:
    mid = api.add_message(QUEUE, TASK, author_id=MANAGER)
    with DiscordInbox(cfg, client_for(cfg)) as inbox:
        inbox.poll_once()
        inbox.drain()
        assert state_of(cfg, mid)["state"] == "waiting"
        # the agent got the real values in its task
        assert (tmp_path / "seen.txt").read_text() == f"use {KEY} and {ACCT} for hello"
        state = state_of(cfg, mid)
        assert state["text"] == "workflow sec q=hello api_key=*** acct=***"
        assert state["request"]["inputs"] == {"q": "hello", "api_key": "***", "acct": "***"}
        (notice,) = api.posted(GATES)
        api.react_as(BOSS, notice["id"], CLAIM)  # approved: resumed with the held values
        inbox.poll_once()
        inbox.drain()
    state = state_of(cfg, mid)
    assert state["state"] == "posted", state
    (result,) = api.posted(RESULTS)
    assert result["content"].startswith("**complete**"), result["content"]
    assert f"Task {mid} from <@{MANAGER}>: " in result["content"]
    assert 'acct="***"' in result["content"] and 'q="hello"' in result["content"]
    written = _everything(cfg, api)
    assert KEY not in written and ACCT not in written


def test_a_restarted_inbox_ends_the_run_and_says_how_to_give_them_again(
    cfg: Config, api: DiscordAPI
) -> None:
    mid = api.add_message(QUEUE, TASK, author_id=MANAGER)
    with DiscordInbox(cfg, client_for(cfg)) as inbox:
        inbox.poll_once()
        inbox.drain()
        (notice,) = api.posted(GATES)
        run_id = state_of(cfg, mid)["run_id"]
    api.react_as(BOSS, notice["id"], CLAIM)
    with DiscordInbox(cfg, client_for(cfg)) as inbox:  # restarted: holds no value
        inbox.recover()
        inbox.poll_once()
        inbox.drain()
        inbox.poll_once()
        inbox.drain()
    assert state_of(cfg, mid)["state"] == "posted"
    (result,) = api.posted(RESULTS)
    text = result["content"]
    assert text.startswith("**errored**"), text
    assert f"workflow resume {run_id} -i acct=VALUE -i api_key=VALUE" in text, text
    assert run_status(cfg, run_id)["status"] == "failed"
    assert not [f for f in (cfg.handoffs_dir / "inbox-discord").glob("run-*.json")]
    written = _everything(cfg, api)
    assert KEY not in written and ACCT not in written


def test_a_task_claimed_before_a_restart_but_not_started_is_refused(
    cfg: Config, api: DiscordAPI
) -> None:
    mid = api.add_message(QUEUE, TASK, author_id=MANAGER)
    state_dir = cfg.handoffs_dir / "inbox-discord"
    state_dir.mkdir(parents=True)
    # what a claim left when the inbox stopped before the run started
    (state_dir / f"{mid}.json").write_text(
        json.dumps(
            {
                "message_id": mid,
                "channel_id": QUEUE,
                "author_id": MANAGER,
                "author": "someone",
                "text": "workflow sec q=hello api_key=*** acct=***",
                "secret_inputs": ["acct", "api_key"],
                "state": "claimed",
            }
        )
    )
    with DiscordInbox(cfg, client_for(cfg)) as inbox:
        assert inbox.recover() == [mid]
        inbox.drain()
    state = state_of(cfg, mid)
    assert state["state"] == "refused"
    assert "secret inputs `acct`, `api_key` only masked (***): post the task again" in (
        state["reason"]
    )
    assert not api.posted(RESULTS) and not (cfg.handoffs_dir / "workflows").exists()
