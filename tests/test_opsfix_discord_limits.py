"""Discord's long rate limits: said as such, with their end, and no request until then.

The Discord stand-in of ``tests/standins.py`` answers scripted 429s; the real client.
"""

from __future__ import annotations

import time

import pytest

from engine.config import Config
from engine.discord import DiscordClient, DiscordRateLimited
from tests.standins import DiscordAPI, Scripted
from tests.test_discord_inbox import QUEUE, RESULTS, api, cfg, discord_api

__all__ = ["api", "cfg", "discord_api"]


def _limit(seconds: float, *, global_: bool) -> Scripted:
    return Scripted(
        429, {"message": "You are being rate limited.", "retry_after": seconds, "global": global_}
    )


def test_a_global_limit_holds_every_request_until_it_ends(cfg: Config, api: DiscordAPI) -> None:
    waits: list[float] = []
    client = DiscordClient.from_config(cfg, sleep=waits.append)
    api.script.append(_limit(3600, global_=True))
    before = time.time()
    with pytest.raises(DiscordRateLimited) as info:
        client.messages(QUEUE, limit=50)
    text = str(info.value)
    assert "rate-limits every request of this bot (a global limit)" in text
    assert "for 3600 s more, until " in text and " UTC" in text
    assert "cannot reach" not in text and "Check the network" not in text
    assert info.value.scope == "global"
    assert before + 3600 <= info.value.until <= time.time() + 3600
    assert waits == []  # an hour is not slept through inside a request
    sent = len(api.requests)
    assert 3590 < client.held_for() <= 3600
    for call in (
        lambda: client.messages(QUEUE, limit=50),
        lambda: client.post(RESULTS, "a result"),
    ):
        with pytest.raises(DiscordRateLimited):
            call()
    assert len(api.requests) == sent  # nothing went out while the limit runs
    client.close()


def test_a_route_limit_holds_that_route_only(cfg: Config, api: DiscordAPI) -> None:
    client = DiscordClient.from_config(cfg, sleep=lambda s: None)
    api.post_script.append(_limit(3600, global_=False))
    with pytest.raises(DiscordRateLimited) as info:
        client.post(RESULTS, "first")
    assert "this kind of request (a per-route limit)" in str(info.value)
    assert client.held_for() == 0.0
    sent = len(api.requests)
    with pytest.raises(DiscordRateLimited):
        client.post(RESULTS, "second")
    assert len(api.requests) == sent
    assert client.messages(QUEUE, limit=50) == []  # another route goes on
    assert len(api.requests) == sent + 1
    assert api.posted(RESULTS) == []
    client.close()
