"""The Discord inbox end to end: a Discord stand-in on 127.0.0.1, demo agents on the
embedded gateway, real files. Retry delays are tiny; nothing sleeps for real."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from engine.cli import orchestrate, workflow
from engine.config import Config, load_config
from engine.discord import CLAIM, REJECT, DiscordClient, RetrySchedule
from engine.errors import ConfigError, HookUnreachableError
from engine.inbox import DiscordInbox, InboxError, parse_task, submission_text
from tests import standins
from tests.helpers import demo_config, write_config
from tests.standins import DiscordAPI, Scripted

discord_api = standins.discord_api

TOKEN = "discord-bot-token-inbox-77aa31"
OTHER_TOKEN = "discord-bot-token-other-55bb42"
QUEUE, RESULTS, POOL, GATES = "100", "200", "300", "400"
MANAGER, SECRETARY, STRANGER, BOSS = "111", "222", "333", "444"
OTHER_BOT = "900000000000000002"


def inbox_config(tmp_path: Path, base_url: str, **channels: Any) -> Config:
    raw = demo_config(
        tmp_path,
        channels={
            "provider": "discord",
            "base_url": base_url,
            "token_env": "INBOX_DISCORD_TOKEN",
            "map": {"task-queue": QUEUE, "results": RESULTS, "worker-pool": POOL, "gates": GATES},
            "queue": "task-queue",
            "results": "results",
            "worker_pool": "worker-pool",
            "gates": "gates",
            "callers": {MANAGER: "manager", SECRETARY: "secretary"},
            "approvers": [BOSS],
            "poll_interval": 0.05,
            "post_delays": [0.01, 0.01, 0.01, 0.01, 0.01],
            **channels,
        },
    )
    return load_config(write_config(tmp_path, raw))


@pytest.fixture
def api(discord_api: Callable[..., DiscordAPI], monkeypatch: pytest.MonkeyPatch) -> DiscordAPI:
    monkeypatch.setenv("INBOX_DISCORD_TOKEN", TOKEN)
    return discord_api(
        token=TOKEN,
        channels={QUEUE: [], RESULTS: [], POOL: [], GATES: []},
        bots={OTHER_TOKEN: {"id": OTHER_BOT, "username": "orchestrator-2", "bot": True}},
    )


@pytest.fixture
def cfg(tmp_path: Path, api: DiscordAPI) -> Config:
    return inbox_config(tmp_path, api.base_url)


def client_for(cfg: Config, **kw: Any) -> DiscordClient:
    return DiscordClient.from_config(cfg, sleep=lambda s: None, **kw)


def state_of(cfg: Config, mid: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(
        (cfg.handoffs_dir / "inbox-discord" / f"{mid}.json").read_text()
    )
    return data


# -- syntax -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "webster: find the CTE of ULE",
            ("delegation", "webster", "find the CTE of ULE", {}, None, None),
        ),
        (
            "webster: find the CTE of ULE model=cheap thinking=low",
            ("delegation", "webster", "find the CTE of ULE", {}, "cheap", "low"),
        ),
        (
            "  tech-lead:review: the margins ",
            ("delegation", "tech-lead", "review: the margins", {}, None, None),
        ),
        (
            'workflow material-trade-study materials="Zerodur, ULE" '
            'requirements="CTE < 0.01 ppm/K"',
            (
                "workflow",
                "material-trade-study",
                "",
                {"materials": "Zerodur, ULE", "requirements": "CTE < 0.01 ppm/K"},
                None,
                None,
            ),
        ),
    ],
    ids=["delegation", "options", "colon-in-task", "workflow"],
)
def test_parse_task(text: str, expected: tuple[Any, ...]) -> None:
    req = parse_task(text)
    assert (req.kind, req.target, req.task, req.inputs, req.model, req.thinking) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("find the CTE of ULE", "not a task: write `AGENT: task text`"),
        ("webster:   model=cheap", "the task for `webster` is empty"),
        ("webster: x thinking=max", "`thinking=max`: use low, medium or high."),
        ('workflow quick-research query="open', "cannot read the workflow's inputs"),
        ("workflow", "name the workflow"),
        ("workflow quick-research query", 'workflow input `query` is not `key="value"`.'),
        ("workflow quick-research query=x model=cheap", "apply to delegations only"),
    ],
    ids=["no-agent", "empty", "thinking", "quote", "no-name", "bare-input", "wf-model"],
)
def test_parse_errors(text: str, message: str) -> None:
    with pytest.raises(InboxError) as err:
        parse_task(text)
    assert message in err.value.message


def test_submission_text_round_trips() -> None:
    text = submission_text("find X", agent="webster", model="cheap", thinking="low")
    assert text == "webster: find X model=cheap thinking=low"
    assert parse_task(text).model == "cheap"
    with pytest.raises(InboxError):
        submission_text("no agent here", agent=None)


# -- intake end to end --------------------------------------------------------------------


def test_a_delegation_end_to_end(cfg: Config, api: DiscordAPI) -> None:
    mid = api.add_message(QUEUE, "webster: find the CTE of ULE", author_id=MANAGER)
    with DiscordInbox(cfg, client_for(cfg)) as inbox:
        assert inbox.poll_once() == [mid]
        inbox.drain()
        assert inbox.poll_once() == []  # claimed: never again
    assert api.reactors_of(mid, CLAIM) == [DiscordAPI.BOT_ID]
    (result,) = api.posted(RESULTS)
    head, task_line, *body = result["content"].split("\n")
    state = state_of(cfg, mid)
    run_id = state["run_id"]
    assert head.startswith("**complete** · agent `webster` · model demo · tokens ")
    assert head.endswith(f" · cost $0.0000 · {head.split(' · ')[-2]} · run `{run_id}`")
    assert task_line == f"Task {mid} from <@{MANAGER}>: find the CTE of ULE"
    record = json.loads((cfg.handoffs_dir / f"{run_id}.json").read_text())
    assert "\n".join(body) == record["result"]
    assert record["envelope"]["caller"] == "manager"
    assert state["state"] == "posted" and state["result_message_id"] == result["id"]
    assert state["caller"] == "manager" and state["request"]["target"] == "webster"
    notices = [m["content"] for m in api.posted(POOL)]
    assert notices[0] == (f"▶ spawned `webster` for task {mid} (run `{run_id}`, caller `manager`)")
    assert notices[1].startswith(f"■ `webster` finished task {mid}: complete in ")
    assert TOKEN not in json.dumps(state)


def test_a_workflow_end_to_end(cfg: Config, api: DiscordAPI) -> None:
    mid = api.add_message(
        QUEUE,
        'workflow material-trade-study materials="Zerodur, ULE" requirements="CTE < 0.01 ppm/K"',
        author_id=MANAGER,
    )
    with DiscordInbox(cfg, client_for(cfg)) as inbox:
        inbox.poll_once()
        inbox.drain()
    state = state_of(cfg, mid)
    assert state["state"] == "posted", state
    (result,) = api.posted(RESULTS)
    head = result["content"].split("\n")[0]
    assert head.startswith("**complete** · agent `workflow material-trade-study` · model demo")
    assert f"run `{state['run_id']}`" in head
    summary = json.loads(
        (cfg.handoffs_dir / "workflows" / state["run_id"] / "summary.json").read_text()
    )
    assert summary["caller"] == "manager" and summary["status"] == "complete"
    assert [m["content"][:2] for m in api.posted(POOL)] == ["▶ ", "■ "]


def test_acl_refusal_unmapped_author_and_bad_syntax(cfg: Config, api: DiscordAPI) -> None:
    denied = api.add_message(QUEUE, "webster: look this up", author_id=SECRETARY)
    stranger = api.add_message(QUEUE, "webster: look this up", author_id=STRANGER)
    garbled = api.add_message(QUEUE, "please find the CTE", author_id=MANAGER)
    unknown = api.add_message(QUEUE, "workflow materal-trade-study x=1", author_id=MANAGER)
    with DiscordInbox(cfg, client_for(cfg)) as inbox:
        assert inbox.poll_once() == [denied, stranger, garbled, unknown]
        inbox.drain()
        assert inbox.poll_once() == []  # its own replies are not tasks
    replies = {
        m["message_reference"]["message_id"]: m["content"]
        for m in api.posted(QUEUE)
        if m.get("message_reference")
    }
    assert replies[denied].startswith("⛔ not run: ")
    assert "`secretary`" in replies[denied] and "`webster`" in replies[denied]
    assert replies[stranger] == (
        f"⛔ not run: your Discord user id {STRANGER} is not mapped to an agent in "
        "`channels.callers`, so nothing runs on your behalf: ask an operator to add "
        '`channels.callers: {"<your id>": <agent>}`.'
    )
    assert replies[garbled].startswith("⛔ not run: not a task: write `AGENT: task text`")
    assert "did you mean `material-trade-study`?" in replies[unknown]
    assert api.posted(RESULTS) == [] and api.posted(POOL) == []
    for mid in (denied, stranger, garbled, unknown):
        assert state_of(cfg, mid)["state"] == "refused"
    assert not list(cfg.handoffs_dir.glob("orch-*.json"))  # nothing was dispatched


def test_the_bot_token_never_leaves_in_posts_or_records(cfg: Config, api: DiscordAPI) -> None:
    mid = api.add_message(QUEUE, f"webster: echo {TOKEN} please", author_id=MANAGER)
    leaked = api.add_message(QUEUE, f"{TOKEN}: hello", author_id=STRANGER)
    with DiscordInbox(cfg, client_for(cfg)) as inbox:
        inbox.poll_once()
        inbox.drain()
    assert state_of(cfg, mid)["state"] == "posted"
    assert state_of(cfg, leaked)["state"] == "refused"
    for channel in (QUEUE, RESULTS, POOL):
        for m in api.posted(channel):
            if m["id"] not in (mid, leaked):
                assert TOKEN not in m["content"], m["content"]
    for path in cfg.handoffs_dir.rglob("*"):
        if path.is_file():
            assert TOKEN not in path.read_text(errors="replace"), path


def test_two_inboxes_on_one_queue_never_run_a_task_twice(
    tmp_path: Path, api: DiscordAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two hosts (own handoffs directory, own bot) poll one queue at the same time."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    cfg_a = inbox_config(tmp_path / "a", api.base_url)
    monkeypatch.setenv("INBOX_DISCORD_TOKEN_B", OTHER_TOKEN)
    raw_b = demo_config(tmp_path / "b")
    raw_b["channels"] = {**cfg_a.channels, "token_env": "INBOX_DISCORD_TOKEN_B"}
    cfg_b = load_config(write_config(tmp_path / "b", raw_b))
    mids = [
        api.add_message(QUEUE, f"webster: task number {i}", author_id=MANAGER) for i in range(6)
    ]
    barrier = threading.Barrier(2)
    claimed: dict[str, list[str]] = {}
    taken: set[str] = set()
    lock = threading.Lock()

    def run(name: str, c: Config) -> None:
        with DiscordInbox(c, client_for(c)) as inbox:
            barrier.wait(10)
            got: list[str] = []
            # Bounded, but as long as needed: a task both inboxes backed off from (both
            # reacted at once) is taken on a later poll, which a loaded host may delay.
            for _ in range(200):
                new = inbox.poll_once()
                got += new
                with lock:
                    taken.update(new)
                    if len(taken) >= len(mids):
                        break
            inbox.drain()
            claimed[name] = got

    threads = [
        threading.Thread(target=run, args=("a", cfg_a)),
        threading.Thread(target=run, args=("b", cfg_b)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    both = claimed["a"] + claimed["b"]
    assert sorted(both) == sorted(set(both))  # no task claimed by both
    results = [m["content"].split("\n")[1] for m in api.posted(RESULTS)]
    assert len(results) == len(set(results)) == len(both)
    for mid in both:
        owner = cfg_a if mid in claimed["a"] else cfg_b
        assert state_of(owner, mid)["state"] == "posted"
        assert len(api.reactors_of(mid, CLAIM)) == 1
    # every task ran, once
    assert sorted(both) == sorted(mids)


def test_two_inbox_processes_never_run_a_task_twice(tmp_path: Path, api: DiscordAPI) -> None:
    """The same with real processes: `orchestrate inbox discord --once`, side by side."""
    import os
    import subprocess
    import sys

    configs = []
    for name, token_env in (("a", "INBOX_DISCORD_TOKEN"), ("b", "INBOX_DISCORD_TOKEN_B")):
        (tmp_path / name).mkdir()
        raw = demo_config(tmp_path / name)
        raw["channels"] = {
            **inbox_config(tmp_path / name, api.base_url).channels,
            "token_env": token_env,
        }
        configs.append(load_config(write_config(tmp_path / name, raw)))
    mids = [
        api.add_message(QUEUE, f"webster: process task {i}", author_id=MANAGER) for i in range(4)
    ]
    env = {**os.environ, "INBOX_DISCORD_TOKEN": TOKEN, "INBOX_DISCORD_TOKEN_B": OTHER_TOKEN}
    for _ in range(20):  # bounded: a task both backed off from is taken in a later round
        procs = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    "from engine.cli import orchestrate_main; orchestrate_main()",
                    "inbox",
                    "discord",
                    "--once",
                    "--config",
                    str(c.path),
                ],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for c in configs
        ]
        for proc in procs:
            out, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err
        if len(api.posted(RESULTS)) >= len(mids):
            break
    tasks = [m["content"].split("\n")[1] for m in api.posted(RESULTS)]
    assert len(tasks) == len(set(tasks)) == len(mids)
    owners = {
        mid: [c for c in configs if (c.handoffs_dir / "inbox-discord" / f"{mid}.json").exists()]
        for mid in mids
    }
    assert all(len(o) == 1 for o in owners.values()), owners
    assert all(len(api.reactors_of(mid, CLAIM)) == 1 for mid in mids)


def test_one_inbox_per_handoffs_directory(cfg: Config, api: DiscordAPI) -> None:
    with DiscordInbox(cfg, client_for(cfg)):
        with pytest.raises(ConfigError) as err:
            DiscordInbox(cfg, client_for(cfg)).__enter__()
    assert "another `orchestrate inbox discord` is running" in err.value.message


def test_a_message_claimed_by_someone_else_is_left_alone(cfg: Config, api: DiscordAPI) -> None:
    taken = api.add_message(QUEUE, "webster: one", author_id=MANAGER)
    api.react_as(OTHER_BOT, taken, CLAIM)
    with DiscordInbox(cfg, client_for(cfg)) as inbox:
        assert inbox.poll_once() == []
    assert api.reactors_of(taken, CLAIM) == [OTHER_BOT]
    assert not (cfg.handoffs_dir / "inbox-discord" / f"{taken}.json").exists()


def test_a_429_storm_still_posts_results(cfg: Config, api: DiscordAPI) -> None:
    mid = api.add_message(QUEUE, "webster: storm test", author_id=MANAGER)
    waits: list[float] = []
    storm = [
        Scripted(429, {"message": "rate limited", "retry_after": 0.002, "global": False})
        for _ in range(4)
    ]
    with DiscordInbox(cfg, DiscordClient.from_config(cfg, sleep=waits.append)) as inbox:
        # the claim reply, start notice, finish notice and result each meet four 429s
        api.post_script.extend([*storm, 200, *storm, 200, *storm, 200, *storm])
        inbox.poll_once()
        inbox.drain()
    assert api.posted(RESULTS)[0]["content"].startswith("**complete**")
    assert len(api.posted(POOL)) == 2
    assert state_of(cfg, mid)["state"] == "posted"
    assert waits == [0.002] * 16  # each 429 waited what Discord asked, no more


def test_posts_that_keep_failing_are_posted_by_a_later_poll(cfg: Config, api: DiscordAPI) -> None:
    mid = api.add_message(QUEUE, "webster: flaky", author_id=MANAGER)
    with DiscordInbox(cfg, client_for(cfg)) as inbox:
        # the claim reply goes through; start notice, finish notice and result do not
        api.post_script.extend([200, *[Scripted(503)] * 6 * 3])
        inbox.poll_once()
        inbox.drain()
        assert state_of(cfg, mid)["state"] == "finished"
        assert api.posted(RESULTS) == []
        inbox.poll_once()
    assert state_of(cfg, mid)["state"] == "posted"
    assert state_of(cfg, mid)["post_attempts"] == 2
    assert len(api.posted(RESULTS)) == 1


def test_a_restarted_inbox_posts_a_recorded_result_once(cfg: Config, api: DiscordAPI) -> None:
    mid = api.add_message(QUEUE, "webster: crash test", author_id=MANAGER)
    with DiscordInbox(cfg, client_for(cfg)) as inbox:
        api.post_script.extend([200, *[Scripted(500)] * 6 * 3])  # all but the claim reply fail
        inbox.poll_once()
        inbox.drain()
    assert state_of(cfg, mid)["state"] == "finished"  # "crashed" before the post
    with DiscordInbox(cfg, client_for(cfg)) as inbox:
        assert inbox.recover() == []
        assert inbox.poll_once() == []
    assert state_of(cfg, mid)["state"] == "posted"
    assert len(api.posted(RESULTS)) == 1
    assert len(list((cfg.handoffs_dir).glob("orch-*.json"))) == 1  # ran once


def test_a_restarted_inbox_finishes_a_claimed_task(cfg: Config, api: DiscordAPI) -> None:
    mid = api.add_message(QUEUE, "webster: claimed then crashed", author_id=MANAGER)
    api.react_as(DiscordAPI.BOT_ID, mid, CLAIM)
    state_dir = cfg.handoffs_dir / "inbox-discord"
    state_dir.mkdir(parents=True)
    (state_dir / f"{mid}.json").write_text(
        json.dumps(
            {
                "message_id": mid,
                "channel_id": QUEUE,
                "author_id": MANAGER,
                "text": "webster: claimed then crashed",
                "state": "claiming",
            }
        )
    )
    with DiscordInbox(cfg, client_for(cfg)) as inbox:
        assert inbox.recover() == [mid]
        inbox.drain()
    assert state_of(cfg, mid)["state"] == "posted"
    assert len(api.posted(RESULTS)) == 1


def test_a_claim_left_unconfirmed_is_confirmed_by_the_next_poll(
    cfg: Config, api: DiscordAPI
) -> None:
    mid = api.add_message(QUEUE, "webster: confirm me", author_id=MANAGER)
    with DiscordInbox(cfg, client_for(cfg)) as inbox:
        # list and react go through; listing the reactions fails past every retry
        api.script.extend([200, 200, *[500] * 6])
        with pytest.raises(HookUnreachableError):
            inbox.poll_once()
        assert state_of(cfg, mid)["state"] == "claiming"
        assert inbox.poll_once() == []  # already ours: not claimed again...
        inbox.drain()  # ...but confirmed and run
    assert state_of(cfg, mid)["state"] == "posted"
    assert api.reactors_of(mid, CLAIM) == [DiscordAPI.BOT_ID]
    assert len(api.posted(RESULTS)) == 1


def test_a_long_result_is_attached(tmp_path: Path, api: DiscordAPI) -> None:
    cfg = inbox_config(tmp_path, api.base_url, attach_over=100)
    mid = api.add_message(QUEUE, "webster: " + "word " * 120, author_id=MANAGER)
    with DiscordInbox(cfg, client_for(cfg)) as inbox:
        inbox.poll_once()
        inbox.drain()
    (result,) = api.posted(RESULTS)
    run_id = state_of(cfg, mid)["run_id"]
    name = f"result-{run_id}.md"
    assert result["content"].endswith(f"(full result attached: {name})")
    shown = result["content"].split("\n", 2)[2].rsplit("\n", 1)[0]
    assert len(shown) <= 102 and shown.endswith(" …")
    record = json.loads((cfg.handoffs_dir / f"{run_id}.json").read_text())
    assert api.files[result["id"]][name].decode() == record["result"]


# -- gates --------------------------------------------------------------------------------


def test_a_gate_approved_by_reaction(cfg: Config, api: DiscordAPI) -> None:
    mid = api.add_message(
        QUEUE,
        "workflow material-trade-study materials=Zerodur "
        'requirements="CTE < 0.01 ppm/K DEMO_CONFIDENCE=low"',
        author_id=MANAGER,
    )
    with DiscordInbox(cfg, client_for(cfg)) as inbox:
        inbox.poll_once()
        inbox.drain()
        state = state_of(cfg, mid)
        assert state["state"] == "waiting"
        (notice,) = api.posted(GATES)
        assert notice["content"].startswith(
            f"⏸ approval needed: workflow `material-trade-study`, step `audit` (agent "
            f"`auditor`), run `{state['run_id']}`, task {mid}."
        )
        assert f"React {CLAIM} to approve or {REJECT} to reject (<@{BOSS}>)." in notice["content"]
        api.react_as(STRANGER, notice["id"], CLAIM)  # not an approver: ignored
        inbox.poll_once()
        inbox.drain()
        assert state_of(cfg, mid)["state"] == "waiting"
        api.react_as(BOSS, notice["id"], CLAIM)
        inbox.poll_once()
        inbox.drain()
    state = state_of(cfg, mid)
    assert state["state"] == "posted"
    assert state["gates"]["audit"]["decision"] == "approved"
    assert state["gates"]["audit"]["by"] == BOSS
    events = [
        json.loads(line)
        for line in (cfg.handoffs_dir / "workflows" / state["run_id"] / "events.jsonl")
        .read_text()
        .splitlines()
    ]
    decided = [e for e in events if e.get("event", e.get("kind")) == "gate_decided"]
    assert decided and decided[0]["by"] == f"discord:{BOSS}"
    assert decided[0]["decision"] == "approved"
    assert api.posted(RESULTS)[0]["content"].startswith("**complete**")


def test_a_gate_rejected_by_reaction(tmp_path: Path, api: DiscordAPI) -> None:
    cfg = inbox_config(
        tmp_path, api.base_url, approvers=[], gate_approvers={"material-trade-study/audit": [BOSS]}
    )
    mid = api.add_message(
        QUEUE,
        'workflow material-trade-study materials=Zerodur requirements="DEMO_CONFIDENCE=low"',
        author_id=MANAGER,
    )
    with DiscordInbox(cfg, client_for(cfg)) as inbox:
        inbox.poll_once()
        inbox.drain()
        (notice,) = api.posted(GATES)
        api.react_as(BOSS, notice["id"], REJECT)
        inbox.poll_once()
        inbox.drain()
    state = state_of(cfg, mid)
    assert state["gates"]["audit"]["decision"] == "rejected"
    assert api.posted(RESULTS)[0]["content"].startswith("**failed**")


def test_a_gate_decided_at_a_terminal_is_resumed_by_the_inbox(
    tmp_path: Path, api: DiscordAPI
) -> None:
    cfg = inbox_config(tmp_path, api.base_url, approvers=[])
    mid = api.add_message(
        QUEUE,
        'workflow material-trade-study materials=Zerodur requirements="DEMO_CONFIDENCE=low"',
        author_id=MANAGER,
    )
    with DiscordInbox(cfg, client_for(cfg)) as inbox:
        inbox.poll_once()
        inbox.drain()
        (notice,) = api.posted(GATES)
        run_id = state_of(cfg, mid)["run_id"]
        assert f"use `workflow approve {run_id} audit`" in notice["content"]
        api.react_as(BOSS, notice["id"], CLAIM)  # no approvers configured: ignored
        inbox.poll_once()
        inbox.drain()
        assert state_of(cfg, mid)["state"] == "waiting"
        res = CliRunner().invoke(workflow, ["approve", run_id, "audit", "--config", str(cfg.path)])
        assert res.exit_code == 0, res.output
        inbox.poll_once()
        inbox.drain()
    state = state_of(cfg, mid)
    assert state["state"] == "posted"
    assert state["gates"]["audit"]["decision"] == "approved"
    assert state["gates"]["audit"]["by"] == "cli"
    assert api.posted(RESULTS)[0]["content"].startswith("**complete**")


def test_a_run_parked_at_the_command_line_is_announced_and_resumed(
    cfg: Config, api: DiscordAPI
) -> None:
    res = CliRunner().invoke(
        workflow,
        [
            "run",
            "material-trade-study",
            "-i",
            "materials=Zerodur",
            "-i",
            "requirements=DEMO_CONFIDENCE=low",
            "--non-interactive",
            "--json",
            "--config",
            str(cfg.path),
        ],
    )
    assert res.exit_code == 3, res.output
    run_id = json.loads(res.output)["runId"]
    with DiscordInbox(cfg, client_for(cfg)) as inbox:
        inbox.poll_once()
        (notice,) = api.posted(GATES)
        assert notice["content"].startswith(
            "⏸ approval needed: workflow `material-trade-study`, step `audit` (agent "
            f"`auditor`), run `{run_id}`, started from the command line."
        )
        inbox.poll_once()
        assert len(api.posted(GATES)) == 1  # announced once
        api.react_as(BOSS, notice["id"], CLAIM)
        inbox.poll_once()
        inbox.drain()
    state = state_of(cfg, f"run-{run_id}")
    assert state["state"] == "posted" and state["gates"]["audit"]["by"] == BOSS
    (result,) = api.posted(RESULTS)
    assert result["content"].startswith("**complete** · agent `workflow material-trade-study`")
    assert f"Run `{run_id}` (started from the command line)" in result["content"]
    summary = json.loads((cfg.handoffs_dir / "workflows" / run_id / "summary.json").read_text())
    assert summary["status"] == "complete"


def test_parked_runs_are_left_alone_when_told(tmp_path: Path, api: DiscordAPI) -> None:
    cfg = inbox_config(tmp_path, api.base_url, announce_parked_runs=False)
    res = CliRunner().invoke(
        workflow,
        [
            "run",
            "material-trade-study",
            "-i",
            "materials=Zerodur",
            "-i",
            "requirements=DEMO_CONFIDENCE=low",
            "--non-interactive",
            "--config",
            str(cfg.path),
        ],
    )
    assert res.exit_code == 3, res.output
    with DiscordInbox(cfg, client_for(cfg)) as inbox:
        inbox.poll_once()
    assert api.posted(GATES) == []


# -- the REST client ----------------------------------------------------------------------


def test_client_refusals_name_what_to_fix(cfg: Config, api: DiscordAPI) -> None:
    client = client_for(cfg)
    api.script.extend([401, 403, 404])
    for code, text in (
        (401, "Discord rejected the bot token from `INBOX_DISCORD_TOKEN` (401 Unauthorized)"),
        (403, "the bot lacks a permission (403 Missing Access)"),
        (404, "not found (404: Unknown Channel): check the channel ids in `channels.map`"),
    ):
        with pytest.raises(ConfigError) as err:
            client.messages(QUEUE)
        assert err.value.status_code == code and text in err.value.message
        assert TOKEN not in err.value.message
    client.close()


def test_client_gives_up_after_the_schedule(cfg: Config, api: DiscordAPI) -> None:
    waits: list[float] = []
    client = DiscordClient(
        api.base_url, TOKEN, schedule=RetrySchedule((0.1, 0.2)), sleep=waits.append
    )
    api.script.extend([500, 502, 503])
    with pytest.raises(HookUnreachableError) as err:
        client.messages(QUEUE)
    assert waits == [0.1, 0.2]
    assert (
        "cannot reach Discord (channel 100): gave up after 3 attempt(s) (last: HTTP 503)"
        in err.value.message
    )
    api.script.extend([Scripted(429, {"retry_after": 999})])
    with pytest.raises(HookUnreachableError):
        client.messages(QUEUE)  # a 429 that asks too long is not waited for
    client.close()
    down = DiscordClient(
        "http://127.0.0.1:9", TOKEN, schedule=RetrySchedule(()), client=httpx.Client()
    )
    with pytest.raises(HookUnreachableError) as err:
        down.me()
    assert "connection refused" in err.value.message


# -- CLI ----------------------------------------------------------------------------------


def test_cli_submit_and_once(cfg: Config, api: DiscordAPI) -> None:
    runner = CliRunner()
    res = runner.invoke(
        orchestrate,
        [
            "inbox",
            "submit",
            "find the CTE of ULE",
            "--agent",
            "webster",
            "--model",
            "cheap",
            "--thinking",
            "low",
            "--config",
            str(cfg.path),
        ],
    )
    assert res.exit_code == 0, res.output
    (queued,) = api.posted(QUEUE)
    assert queued["content"] == "webster: find the CTE of ULE model=cheap thinking=low"
    assert res.output == f"queued as message {queued['id']}: {queued['content']}\n"
    res = runner.invoke(orchestrate, ["inbox", "submit", "no agent", "--config", str(cfg.path)])
    assert res.exit_code == 2 and "not a task" in res.output


def test_cli_config_problems(tmp_path: Path, api: DiscordAPI) -> None:
    cfg = inbox_config(tmp_path, api.base_url, queue="task-queu", callers={MANAGER: "managr"})
    res = CliRunner().invoke(orchestrate, ["inbox", "discord", "--once", "--config", str(cfg.path)])
    assert res.exit_code == 2
    assert (
        "`channels.queue` is `task-queu`, which is not in `channels.map`; did you mean "
        "`task-queue`?" in res.output
    )
    assert "`channels.callers.111` is `managr`, not an agent; did you mean `manager`?" in res.output


# -- several orchestrators on one bot; paging ------------------------------------------------


def test_two_orchestrators_sharing_one_bot_never_run_a_task_twice(
    tmp_path: Path, api: DiscordAPI
) -> None:
    """Two hosts with one bot token: their ✅ are one; the first claim reply decides."""
    configs = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        configs.append(inbox_config(tmp_path / name, api.base_url, inbox_name=f"host-{name}"))
    mids = [
        api.add_message(QUEUE, f"webster: shared bot task {i}", author_id=MANAGER) for i in range(6)
    ]
    barrier = threading.Barrier(2)
    claimed: dict[str, list[str]] = {}

    def run(c: Config) -> None:
        with DiscordInbox(c, client_for(c)) as inbox:
            barrier.wait(10)
            got: list[str] = []
            for _ in range(3):  # each message is decided within one poll
                got += inbox.poll_once()
            inbox.drain()
            claimed[inbox.name] = got

    threads = [threading.Thread(target=run, args=(c,)) for c in configs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    both = claimed["host-a"] + claimed["host-b"]
    assert sorted(both) == sorted(mids)  # every task claimed, by exactly one of them
    results = [m["content"].split("\n")[1] for m in api.posted(RESULTS)]
    assert len(results) == len(set(results)) == len(mids)
    claims = {
        m["message_reference"]["message_id"]: m["content"]
        for m in api.posted(QUEUE)
        if m["content"].startswith("\U0001f512 claimed by")
    }
    # one claim reply stays per task (a loser deletes its own), naming the one that ran it
    assert len([m for m in api.posted(QUEUE) if m["content"].startswith("\U0001f512")]) == 6
    for mid in mids:
        owner = "host-a" if mid in claimed["host-a"] else "host-b"
        assert claims[mid] == f"\U0001f512 claimed by `{owner}`"
        cfg = configs[0] if owner == "host-a" else configs[1]
        assert state_of(cfg, mid)["state"] == "posted"


def test_a_lost_claim_race_leaves_the_task_to_the_first_claim(cfg: Config, api: DiscordAPI) -> None:
    """Deterministic: another orchestrator on this bot replied its claim first."""
    mid = api.add_message(QUEUE, "webster: raced", author_id=MANAGER)
    api.react_as(DiscordAPI.BOT_ID, mid, CLAIM)  # its ✅ (the bot's, so ours too)
    other = DiscordClient(api.base_url, TOKEN)
    other.post(QUEUE, "\U0001f512 claimed by `elsewhere`", reply_to=mid)
    other.close()
    state_dir = cfg.handoffs_dir / "inbox-discord"
    state_dir.mkdir(parents=True)
    (state_dir / f"{mid}.json").write_text(  # we had reacted too, then stopped
        json.dumps(
            {"message_id": mid, "channel_id": QUEUE, "author_id": MANAGER, "state": "claiming"}
        )
    )
    with DiscordInbox(cfg, client_for(cfg)) as inbox:
        assert inbox.recover() == []
        assert inbox.poll_once() == []
        inbox.drain()
    assert not (state_dir / f"{mid}.json").exists()
    claims = [m["content"] for m in api.posted(QUEUE) if m["content"].startswith("\U0001f512")]
    assert claims == ["\U0001f512 claimed by `elsewhere`"]  # ours was deleted
    assert len(api.deleted) == 1
    assert api.reactors_of(mid, CLAIM) == [DiscordAPI.BOT_ID]  # left for the winner
    assert api.posted(RESULTS) == [] and not list(cfg.handoffs_dir.glob("orch-*.json"))


def test_no_task_is_missed_after_downtime(cfg: Config, api: DiscordAPI) -> None:
    """More than a page (and than the first look's 50) posted while no inbox ran."""
    first = api.add_message(QUEUE, "hello", author_id=STRANGER)
    with DiscordInbox(cfg, client_for(cfg)) as inbox:
        assert inbox.poll_once() == [first]
        inbox.drain()
    down = [api.add_message(QUEUE, f"task {i}", author_id=STRANGER) for i in range(130)]
    with DiscordInbox(cfg, client_for(cfg)) as inbox:
        assert inbox.poll_once() == down  # oldest first, all of them
        inbox.drain()
        assert inbox.poll_once() == []  # its replies are not tasks; nothing twice
    for mid in down:
        assert state_of(cfg, mid)["state"] == "refused"  # STRANGER is not mapped


def test_a_task_backed_off_from_is_looked_at_again(cfg: Config, api: DiscordAPI) -> None:
    """Two bots reacted at once: ours is taken back; once the other withdraws too, the
    message (now behind the cursor) is fetched again and claimed."""
    mid = api.add_message(QUEUE, "webster: contested", author_id=MANAGER)
    for user in (DiscordAPI.BOT_ID, OTHER_BOT):
        api.react_as(user, mid, CLAIM)
    state_dir = cfg.handoffs_dir / "inbox-discord"
    state_dir.mkdir(parents=True)
    (state_dir / f"{mid}.json").write_text(
        json.dumps(
            {"message_id": mid, "channel_id": QUEUE, "author_id": MANAGER, "state": "claiming"}
        )
    )
    with DiscordInbox(cfg, client_for(cfg)) as inbox:
        assert inbox.poll_once() == []  # backed off; the other bot's ✅ stays
        assert api.reactors_of(mid, CLAIM) == [OTHER_BOT]
        assert inbox.poll_once() == []
        with api.state:
            api.reactions[mid][CLAIM].remove(OTHER_BOT)  # the other one backed off too
        assert inbox.poll_once() == [mid]
        inbox.drain()
    assert state_of(cfg, mid)["state"] == "posted"
    cursor = json.loads((state_dir / "cursor.json").read_text())
    assert cursor["retry"] == {} and int(cursor["after"]) >= int(mid)


# -- agents' questions ---------------------------------------------------------------------


def asker_config(tmp_path: Path, api: DiscordAPI) -> Config:
    import sys

    from tests.servekit import ASKER, HERE

    raw = demo_config(tmp_path)
    raw["gateway"]["agents"]["asker"] = {
        "kind": "command",
        "argv": [sys.executable, str(ASKER), "ask"],
        "env": {"AGENT_STATE": str(tmp_path / "asker-state")},
        "timeout": 60,
        "fallback_handoff": False,
    }
    raw["agents"]["asker"] = {"url": "local"}
    raw["workflow_dirs"] = [str(HERE)]
    raw["channels"] = inbox_config(tmp_path, api.base_url).channels
    return load_config(write_config(tmp_path, raw))


def test_a_question_answered_by_reply(tmp_path: Path, api: DiscordAPI) -> None:
    cfg = asker_config(tmp_path, api)
    mid = api.add_message(QUEUE, "workflow ask", author_id=MANAGER)
    with DiscordInbox(cfg, client_for(cfg)) as inbox:
        inbox.poll_once()
        inbox.drain()
        state = state_of(cfg, mid)
        assert state["state"] == "waiting"
        (notice,) = api.posted(GATES)
        assert notice["content"] == (
            f"❓ question: workflow `ask`, step `research` (agent `asker`), run "
            f"`{state['run_id']}`, task {mid}.\n> Which temperature range?\n"
            f"Reply to this message to answer (<@{MANAGER}>, <@{BOSS}>)."
        )
        api.reply_as(GATES, notice["id"], "20-30 °C", author_id=STRANGER)  # not allowed
        last = api.add_message(GATES, "0-100 °C", author_id=BOSS)  # not a reply
        inbox.poll_once()
        inbox.drain()
        assert state_of(cfg, mid)["state"] == "waiting"
        assert state_of(cfg, mid)["gates"]["research"]["after"] == last  # read once
        reply = api.reply_as(
            GATES, notice["id"], f"<@{DiscordAPI.BOT_ID}> 0-50 °C", author_id=MANAGER
        )
        inbox.poll_once()
        inbox.drain()
    state = state_of(cfg, mid)
    assert state["state"] == "posted"
    assert state["gates"]["research"]["decision"] == "answered"
    assert state["gates"]["research"]["by"] == MANAGER
    assert api.reactors_of(reply, CLAIM) == [DiscordAPI.BOT_ID]  # the answer was taken
    events = [
        json.loads(line)
        for line in (cfg.handoffs_dir / "workflows" / state["run_id"] / "events.jsonl")
        .read_text()
        .splitlines()
    ]
    answered = [e for e in events if e.get("event") == "step_answered"]
    assert [(e["answer"], e["by"]) for e in answered] == [("0-50 °C", f"discord:{MANAGER}")]
    (result,) = api.posted(RESULTS)
    assert result["content"].startswith("**complete**")


def test_a_delegations_question_answered_by_reply(tmp_path: Path, api: DiscordAPI) -> None:
    cfg = asker_config(tmp_path, api)
    mid = api.add_message(QUEUE, "asker: Find CTE of ULE", author_id=MANAGER)
    with DiscordInbox(cfg, client_for(cfg)) as inbox:
        inbox.poll_once()
        inbox.drain()
        state = state_of(cfg, mid)
        run_id = state["run_id"]
        assert state["state"] == "waiting"
        (notice,) = api.posted(GATES)
        assert notice["content"].startswith(
            f"❓ question: delegation to `asker`, run `{run_id}`, task {mid}.\n"
            "> Which temperature range?\n"
        )
        api.reply_as(GATES, notice["id"], "0-50 °C", author_id=BOSS)
        inbox.poll_once()
        inbox.drain()
    state = state_of(cfg, mid)
    assert state["state"] == "posted" and state["run_id"] == f"{run_id}-a1"
    (result,) = api.posted(RESULTS)
    assert result["content"].startswith("**complete**")
    assert "CTE over 0-50 °C" in result["content"]
    record = json.loads((cfg.handoffs_dir / f"{run_id}-a1.json").read_text())
    assert record["envelope"]["labels"]["answered_by"] == f"discord:{BOSS}"


def test_a_gate_decided_while_another_process_executes_the_run(
    tmp_path: Path, api: DiscordAPI
) -> None:
    """`orchestrate serve` (here: the run's lock, held) continues the run after the
    reaction: the inbox follows it instead of posting an error, then posts its result."""
    from engine.store import open_store

    cfg = inbox_config(tmp_path, api.base_url)
    mid = api.add_message(
        QUEUE,
        "workflow material-trade-study materials=Zerodur "
        'requirements="CTE < 0.01 ppm/K DEMO_CONFIDENCE=low"',
        author_id=MANAGER,
    )
    following = threading.Event()

    def log(line: str) -> None:
        if "another process executes it" in line:
            following.set()

    with DiscordInbox(cfg, client_for(cfg), log=log) as inbox:
        inbox.poll_once()
        inbox.drain()
        run_id = state_of(cfg, mid)["run_id"]
        (notice,) = api.posted(GATES)
        lock = open_store(cfg).claim(run_id)
        lock.__enter__()  # another executor holds the run
        try:
            api.react_as(BOSS, notice["id"], CLAIM)
            inbox.poll_once()
            assert following.wait(60)
            assert api.posted(RESULTS) == []  # no error posted meanwhile
        finally:
            lock.__exit__(None, None, None)
        inbox.drain()
    state = state_of(cfg, mid)
    assert state["state"] == "posted" and state["gates"]["audit"]["decision"] == "approved"
    (result,) = api.posted(RESULTS)
    assert result["content"].startswith("**complete**")


def test_a_killed_inbox_loses_no_running_agent(tmp_path: Path, api: DiscordAPI) -> None:
    """`kill -9` of the inbox mid-delegation: the embedded gateway (its companion
    process) keeps the agent; the restarted inbox posts its result; sent once."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from tests.servekit import counted_gated_agent

    go, starts = tmp_path / "go", tmp_path / "starts"
    raw = demo_config(tmp_path)
    raw["gateway"]["agents"]["slowpoke"] = counted_gated_agent(go, starts)
    raw["agents"]["slowpoke"] = {"url": "local"}
    raw["channels"] = inbox_config(tmp_path, api.base_url).channels
    path = write_config(tmp_path, raw)
    mid = api.add_message(QUEUE, "slowpoke: hold on", author_id=MANAGER)
    env = {**os.environ, "INBOX_DISCORD_TOKEN": TOKEN}
    cmd = [sys.executable, "-c", "from engine.cli import orchestrate_main; orchestrate_main()"]
    args = ["inbox", "discord", "--config", str(path)]
    first = subprocess.Popen([*cmd, *args], env=env, stderr=subprocess.DEVNULL)
    try:
        api.wait_posts(POOL, 1)  # ▶ spawned
        deadline = time.monotonic() + 60
        while not starts.exists() and time.monotonic() < deadline:  # the agent's own mark
            time.sleep(0.02)
        assert starts.exists()
    finally:
        os.kill(first.pid, signal.SIGKILL)
        first.wait(30)
    state_file = tmp_path / "handoffs" / ".serve" / "gateway.json"
    companion = json.loads(state_file.read_text())
    assert api.posted(RESULTS) == []
    go.touch()  # the agent finishes while no inbox runs
    again = subprocess.run([*cmd, *args, "--once"], env=env, capture_output=True, text=True,
                           timeout=120)  # fmt: skip
    assert again.returncode == 0, again.stderr
    (result,) = api.posted(RESULTS)
    assert result["content"].startswith("**complete**"), result["content"]
    assert "held and released" in result["content"]
    assert state_of(load_config(path), mid)["state"] == "posted"
    assert len(starts.read_text().split()) == 1  # dispatched once
    assert companion["pid"] and not state_file.exists()  # adopted, then stopped with it


def test_a_delegations_question_answered_at_a_terminal(tmp_path: Path, api: DiscordAPI) -> None:
    """`orchestrate answer` instead of a reply: the inbox sees the continuation and posts
    its result."""
    from engine.ask import answer_delegation
    from engine.delegate import open_delegator

    cfg = asker_config(tmp_path, api)
    mid = api.add_message(QUEUE, "asker: Find CTE of ULE", author_id=MANAGER)
    with DiscordInbox(cfg, client_for(cfg)) as inbox:
        inbox.poll_once()
        inbox.drain()
        run_id = state_of(cfg, mid)["run_id"]
        with open_delegator(cfg) as delegator:
            done = answer_delegation(delegator, run_id, "0-50 °C", by="cli")
        assert done.outcome.value == "complete"
        inbox.poll_once()
        inbox.drain()
    state = state_of(cfg, mid)
    assert state["state"] == "posted" and state["run_id"] == f"{run_id}-a1"
    assert state["gates"]["delegation"]["by"] == "cli"
    (result,) = api.posted(RESULTS)
    assert result["content"].startswith("**complete**") and "CTE over 0-50 °C" in result["content"]


def test_claim_replies_are_read_from_the_listing_time_for_an_old_task(
    cfg: Config, api: DiscordAPI
) -> None:
    """A task far behind the newest message: the claim check reads replies from when the
    queue was listed (ids carry their time), not every message after the task."""
    import time

    from engine.inbox import DISCORD_EPOCH_MS

    def snowflake(seconds: float) -> int:
        return (int(seconds * 1000) - DISCORD_EPOCH_MS) << 22

    api._next_id = snowflake(time.time() - 3600)  # messages posted an hour ago
    hello = api.add_message(QUEUE, "hello", author_id=STRANGER)
    with DiscordInbox(cfg, client_for(cfg)) as inbox:
        assert inbox.poll_once() == [hello]  # sets the cursor
        inbox.drain()
    task = api.add_message(QUEUE, "webster: an old task", author_id=MANAGER)
    for i in range(250):  # taken by someone else long ago
        api.react_as(OTHER_BOT, api.add_message(QUEUE, f"x{i}", author_id=MANAGER), CLAIM)
    api._next_id = snowflake(time.time())  # what the inbox posts now is new
    with DiscordInbox(cfg, client_for(cfg)) as inbox:
        assert inbox.poll_once() == [task]
        inbox.drain()
    scans = [r.query["after"][0] for r in api.requests if r.method == "GET" and "after" in r.query]
    assert task not in scans  # the claim check did not page from the task
    assert state_of(cfg, task)["state"] == "posted"


def test_a_run_parked_in_the_server_is_announced_as_such(cfg: Config, api: DiscordAPI) -> None:
    res = CliRunner().invoke(
        workflow,
        ["run", "material-trade-study", "-i", "materials=Zerodur",
         "-i", "requirements=DEMO_CONFIDENCE=low", "--non-interactive", "--json",
         "--config", str(cfg.path)],
    )  # fmt: skip
    run_id = json.loads(res.output)["runId"]
    owned = cfg.handoffs_dir / "serve"  # what `orchestrate serve` keeps for a run it started
    owned.mkdir()
    (owned / f"{run_id}.json").write_text(json.dumps({"kind": "workflow", "by": "alice"}))
    with DiscordInbox(cfg, client_for(cfg)) as inbox:
        inbox.poll_once()
        (notice,) = api.posted(GATES)
        assert notice["content"].startswith(
            "⏸ approval needed: workflow `material-trade-study`, step `audit` (agent "
            f"`auditor`), run `{run_id}`, started through `orchestrate serve` by `alice`."
        )
