"""A small Discord REST client for the inbox: messages, reactions, posts with attachments.

Example::

    client = DiscordClient.from_config(cfg)
    me = client.me()["id"]
    for msg in client.messages(queue_id, limit=50):
        ...
    client.react(queue_id, msg["id"], CLAIM)
    client.post(results_id, "done", attachment=("result.md", b"..."))

Every request goes through the engine's retry helper (``engine.retry``) along a
``RetrySchedule``: a 429 waits what Discord asks (``retry_after`` in the body, else the
rate-limit headers), 5xx and connection failures back off along ``delays`` (seed 002: 2,
4, 8, 16, 32 s; tests pass tiny ones), and 401/403/404 fail at once with a message naming
what to fix. The bot token travels only in the ``Authorization`` header and never appears
in a message.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx

from engine.config import Config
from engine.context import (
    DISCORD_API,
    _rate_limit_wait,
    _token,
    bot_token_rejected,
    discord_error_text,
)
from engine.errors import ConfigError, HookError, HookUnreachableError
from engine.redact import register, register_url
from engine.retry import Backoff, json_body, send_with_retries

#: The claim reaction, and the decisions on a gate notice.
CLAIM = "\u2705"  # ✅
REJECT = "\u274c"  # ❌
#: seed 002's backoff between attempts of a post.
DEFAULT_DELAYS = (2.0, 4.0, 8.0, 16.0, 32.0)
#: A 429 that asks for longer than this is not waited for.
MAX_RETRY_WAIT = 60.0
#: Discord's limit for a message's content.
MAX_CONTENT = 2000


class DiscordNotFound(ConfigError):
    """Discord answered 404 (exit 2): ``gone`` says what is missing, ``"message"`` (it was
    deleted: Discord's error code 10008, or a message route whose channel exists) or
    ``"channel"`` (a wrong id in ``channels.map``: code 10003, or a channel route);
    ``""`` for anything else (``/users/@me``: a wrong ``channels.base_url``)."""

    def __init__(self, message: str, *, gone: str) -> None:
        super().__init__(message, status_code=404)
        self.gone = gone


def message_gone(exc: BaseException) -> bool:
    """Whether ``exc`` says that the message a request named was deleted (not a wrong
    channel id, not a refusal): the inbox then skips that message and goes on."""
    return isinstance(exc, DiscordNotFound) and exc.gone == "message"


#: Discord's JSON error codes for a missing channel and a missing message (Discord's
#: developer docs, "Opcodes and Status Codes", JSON Error Codes).
UNKNOWN_CHANNEL, UNKNOWN_MESSAGE = 10003, 10008
#: A channel route and, optionally, the message it names.
_CHANNEL_PATH = re.compile(r"^/channels/(\d+)(?:/messages/(\d+))?")


class DiscordRateLimited(HookUnreachableError):
    """Discord rate-limits the bot for longer than a request waits (``MAX_RETRY_WAIT``), or
    a request met a limit still running: ``until`` (Unix seconds) says when requests may
    go again, ``scope`` is ``global`` (every request of the bot) or ``route``."""

    def __init__(self, message: str, *, until: float, scope: str) -> None:
        super().__init__(message, status_code=429)
        self.until = until
        self.scope = scope


def _route(method: str, path: str) -> str:
    """The rate-limit route of a request: method and path with the message ids and the
    emoji taken out (Discord's limits are per route and its major parameter, the
    channel: Discord's developer docs, "Rate Limits")."""
    path = re.sub(r"/reactions/[^/]+", "/reactions/:emoji", path)
    return method + " " + re.sub(r"(?<!/channels)/\d+", "/:id", path)


def _is_global(resp: httpx.Response) -> bool:
    data = json_body(resp)
    if isinstance(data, dict) and data.get("global") is True:
        return True
    return bool(
        str(resp.headers.get("x-ratelimit-global", "")).lower() == "true"
        or str(resp.headers.get("x-ratelimit-scope", "")).lower() == "global"
    )


def _clock_text(until: float) -> str:
    return time.strftime("%H:%M:%S UTC", time.gmtime(until))


@dataclass(frozen=True)
class RetrySchedule:
    """When to try again: 429 as told, 5xx and connection failures along ``delays``."""

    delays: tuple[float, ...] = DEFAULT_DELAYS
    max_retry_wait: float = MAX_RETRY_WAIT


class DiscordClient:
    """Discord's REST API with a bot token; thread-safe (one ``httpx.Client``)."""

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        token_env: str = "the bot token",
        schedule: RetrySchedule | None = None,
        client: httpx.Client | None = None,
        sleep: Callable[[float], None] = time.sleep,
        timeout: float = 10.0,
        on_retry: Callable[[str, int, float, str], None] | None = None,
        channel_names: dict[str, str] | None = None,
    ) -> None:
        """``on_retry(what, attempt, delay_s, reason)`` is told before each retry's wait
        (``what``: the request, e.g. ``reading the queue channel``). ``channel_names``
        maps channel ids to their keys in ``channels.map`` (``{"1470…": "results"}``), so
        a 404 names the key to fix."""
        register(token)
        register_url(base_url)
        self.base_url = base_url.rstrip("/")
        self.token_env = token_env
        self.channel_names = dict(channel_names or {})
        self.schedule = schedule or RetrySchedule()
        self._headers = {
            "Authorization": f"Bot {token}",
            "User-Agent": "DiscordBot (agent-orchestrator, 0.1.0)",
        }
        self._own = client is None
        self._http = client or httpx.Client(timeout=timeout)
        self._sleep = sleep
        self._on_retry = on_retry
        self.attempts = 0  # requests sent, retries included (for tests and logs)
        # rate-limit holds: "global" or a route -> Unix time until which nothing is sent
        self._holds: dict[str, float] = {}
        self._holds_lock = threading.Lock()
        self._clock: Callable[[], float] = time.time

    @classmethod
    def from_config(
        cls,
        cfg: Config,
        *,
        sleep: Callable[[float], None] = time.sleep,
        client: httpx.Client | None = None,
        on_retry: Callable[[str, int, float, str], None] | None = None,
    ) -> DiscordClient:
        """A client from ``channels:``: ``base_url``, ``token_env`` and ``post_delays``."""
        channels = cfg.channels
        if not channels:
            raise ConfigError(
                f"`{cfg.label}` has no `channels:` section: the Discord inbox needs one "
                "(see docs/discord.md).",
                path=cfg.path,
            )
        token_env, token = _token(cfg, channels)
        delays = channels.get("post_delays")
        schedule = RetrySchedule(
            tuple(float(d) for d in delays) if isinstance(delays, list) else DEFAULT_DELAYS
        )
        return cls(
            str(channels.get("base_url") or DISCORD_API),
            token,
            token_env=token_env,
            schedule=schedule,
            client=client,
            sleep=sleep,
            timeout=cfg.retry.request_timeout,
            on_retry=on_retry,
            channel_names={str(v): str(k) for k, v in (channels.get("map") or {}).items()},
        )

    def held_for(self) -> float:
        """Seconds until Discord's global rate limit on this bot ends (0 when none): the
        inbox waits that long before its next poll."""
        with self._holds_lock:
            until = self._holds.get("global", 0.0)
        return max(0.0, until - self._clock())

    def _check_hold(self, route: str, what: str) -> None:
        """Raise ``DiscordRateLimited`` without a request while a limit on ``route`` (or
        the global one) runs for longer than a request waits (``max_retry_wait``); a
        shorter one is met by the request's own wait for its 429."""
        now = self._clock()
        with self._holds_lock:
            for scope, key in (("global", "global"), ("route", route)):
                until = self._holds.get(key)
                if until is not None and until - now > self.schedule.max_retry_wait:
                    raise DiscordRateLimited(_limited(what, scope, until, now), until=until,
                                             scope=scope)  # fmt: skip
                if until is not None and until <= now:
                    del self._holds[key]

    def _note_429(self, route: str, resp: httpx.Response) -> None:
        until = self._clock() + _rate_limit_wait(resp)
        key = "global" if _is_global(resp) else route
        with self._holds_lock:
            self._holds[key] = max(until, self._holds.get(key, 0.0))

    def close(self) -> None:
        """Close the HTTP client if this object made it."""
        if self._own:
            self._http.close()

    # -- endpoints ----------------------------------------------------------------------

    def me(self) -> dict[str, Any]:
        """The bot's own user object (``GET /users/@me``)."""
        return _dict(self._request("GET", "/users/@me", what="the bot's own user"))

    def messages(
        self,
        channel_id: str,
        *,
        limit: int = 50,
        after: str | None = None,
        before: str | None = None,
    ) -> list[dict[str, Any]]:
        """At most ``limit`` (1-100) messages of a channel, newest first.

        Without ``after``/``before``: the newest. With ``after=ID``: the oldest ``limit``
        messages after ``ID``; with ``before=ID``: the newest ``limit`` before it (Discord's
        paging; the order is made newest first here whatever the server sent).
        """
        params: dict[str, Any] = {"limit": limit}
        if after is not None:
            params["after"] = after
        if before is not None:
            params["before"] = before
        data = self._request(
            "GET",
            f"/channels/{channel_id}/messages",
            params=params,
            what=f"channel {channel_id}",
        )
        if not isinstance(data, list):
            raise HookError(f"Discord channel {channel_id}: expected a list of messages.")
        found = [m for m in data if isinstance(m, dict) and _snowflake(m) is not None]
        return sorted(found, key=lambda m: _snowflake(m) or 0, reverse=True)

    def messages_after(
        self, channel_id: str, after: str, *, until: str | None = None, page: int = 100
    ) -> Iterator[dict[str, Any]]:
        """Every message after ``after``, oldest first, paged ``page`` at a time.

        Stops after the message ``until`` when given (its id included), else at the
        newest. Nothing posted meanwhile is skipped: each page starts after the last seen.
        """
        cursor = after
        stop = int(until) if until is not None and until.isdigit() else None
        while True:
            batch = list(reversed(self.messages(channel_id, limit=page, after=cursor)))
            for msg in batch:
                yield msg
                if stop is not None and (_snowflake(msg) or 0) >= stop:
                    return
            if len(batch) < page:
                return
            cursor = str(batch[-1]["id"])

    def message(self, channel_id: str, message_id: str) -> dict[str, Any] | None:
        """One message, or None when it was deleted (404 Unknown Message; a wrong channel
        id still raises ``DiscordNotFound``)."""
        try:
            data = self._request(
                "GET",
                f"/channels/{channel_id}/messages/{message_id}",
                what=f"message {message_id}",
            )
        except DiscordNotFound as exc:
            if exc.gone == "message":
                return None
            raise
        return _dict(data) or None

    def delete(self, channel_id: str, message_id: str) -> None:
        """Delete one of the bot's own messages (a 404, already gone, is fine)."""
        try:
            self._request(
                "DELETE",
                f"/channels/{channel_id}/messages/{message_id}",
                what=f"message {message_id}",
            )
        except ConfigError as exc:
            if exc.status_code != 404:
                raise

    def react(self, channel_id: str, message_id: str, emoji: str) -> None:
        """Add the bot's ``emoji`` reaction to a message."""
        self._request(
            "PUT",
            _reaction_path(channel_id, message_id, emoji) + "/@me",
            what=f"message {message_id}",
        )

    def unreact(self, channel_id: str, message_id: str, emoji: str) -> None:
        """Remove the bot's own ``emoji`` reaction."""
        self._request(
            "DELETE",
            _reaction_path(channel_id, message_id, emoji) + "/@me",
            what=f"message {message_id}",
        )

    def reactors(self, channel_id: str, message_id: str, emoji: str) -> list[dict[str, Any]]:
        """The users who reacted with ``emoji`` (at most 100)."""
        data = self._request(
            "GET",
            _reaction_path(channel_id, message_id, emoji),
            params={"limit": 100},
            what=f"message {message_id}",
        )
        return [u for u in data if isinstance(u, dict)] if isinstance(data, list) else []

    def post(
        self,
        channel_id: str,
        content: str,
        *,
        reply_to: str | None = None,
        attachment: tuple[str, bytes] | None = None,
        notify: Sequence[str] = (),
    ) -> dict[str, Any]:
        """Post a message (at most ``MAX_CONTENT`` characters), optionally a reply or a file.

        Mentions in ``content`` notify nobody (``allowed_mentions.parse`` is empty: never
        @everyone, roles or users), except the user ids in ``notify`` (at most 100,
        Discord's limit for ``allowed_mentions.users``): the approvers a gate notice names.
        """
        users = [u for u in dict.fromkeys(str(u) for u in notify) if u.isdigit()][:100]
        payload: dict[str, Any] = {
            "content": content[:MAX_CONTENT],
            "allowed_mentions": {"parse": [], "users": users} if users else {"parse": []},
        }
        if reply_to:
            payload["message_reference"] = {"message_id": reply_to, "fail_if_not_exists": False}
        path = f"/channels/{channel_id}/messages"
        if attachment is None:
            data = self._request("POST", path, json_body=payload, what=f"channel {channel_id}")
        else:
            name, blob = attachment
            payload["attachments"] = [{"id": 0, "filename": name}]
            files = {
                "payload_json": (None, json.dumps(payload), "application/json"),
                "files[0]": (name, blob, "text/plain; charset=utf-8"),
            }
            data = self._request("POST", path, files=files, what=f"channel {channel_id}")
        return _dict(data)

    # -- the one retry loop -------------------------------------------------------------

    def _request(
        self,
        method: str,
        path: str,
        *,
        what: str,
        params: dict[str, Any] | None = None,
        json_body: Any = None,
        files: dict[str, Any] | None = None,
    ) -> Any:
        url = self.base_url + path
        schedule = self.schedule
        route = _route(method, path)
        self._check_hold(route, what)

        def send(_timeout: float | None) -> httpx.Response:
            resp = self._http.request(
                method, url, params=params, json=json_body, files=files, headers=self._headers
            )
            if resp.status_code == 429:
                self._note_429(route, resp)
            return resp

        def describe(resp: httpx.Response) -> str:
            if resp.status_code == 429:
                return f"rate limited (429, retry after {_rate_limit_wait(resp):g} s)"
            return f"HTTP {resp.status_code}"

        done = send_with_retries(
            send,
            Backoff(schedule.delays, max_wait=schedule.max_retry_wait, server_wait_replaces=True),
            accept=lambda r: 200 <= r.status_code < 300,
            retryable=lambda r: r.status_code == 429 or r.status_code >= 500,
            describe=describe,
            server_wait=lambda r: _rate_limit_wait(r) if r.status_code == 429 else None,
            sleep=self._sleep,
            on_retry=None if self._on_retry is None else self._told(what),
        )
        self.attempts += done.attempts
        if done.response is not None and done.accepted:
            return _body(done.response)
        if done.response is not None and done.response.status_code != 429:
            raise self._refusal(done.response, what, path)
        if done.status == 429:
            global_ = self.held_for() > 0
            with self._holds_lock:
                until = self._holds.get("global" if global_ else route, self._clock())
            scope = "global" if global_ else "route"
            raise DiscordRateLimited(
                _limited(what, scope, until, self._clock()), until=until, scope=scope
            )
        raise HookUnreachableError(
            f"cannot reach Discord ({what}): gave up after {done.attempts} attempt(s) "
            f"(last: {done.reason}). Check the network and `channels.base_url`.",
            status_code=done.status,
        )

    def _told(self, what: str) -> Callable[[int, float, str], None]:
        assert self._on_retry is not None
        on_retry = self._on_retry
        return lambda attempt, delay, reason: on_retry(what, attempt, delay, reason)

    def _refusal(self, resp: httpx.Response, what: str, path: str) -> Exception:
        code = resp.status_code
        detail = discord_error_text(resp)
        if code == 401:
            return bot_token_rejected(self.token_env)
        if code == 403:
            return ConfigError(
                f"Discord {what}: the bot lacks a permission (403 {detail or 'Forbidden'}): "
                "give it View Channel, Read Message History, Send Messages, Attach Files and "
                "Add Reactions there (docs/discord.md).",
                status_code=code,
            )
        if code == 404:
            return self._not_found(resp, what, path, detail)
        return HookError(
            f"Discord {what}: refused (HTTP {code}{f': {detail}' if detail else ''}).",
            status_code=code,
        )

    def _not_found(
        self, resp: httpx.Response, what: str, path: str, detail: str
    ) -> DiscordNotFound:
        """A 404's error, its hint fitting what is missing: a deleted message, or a
        channel id that is wrong in ``channels.map`` (named by its key there)."""
        found = _CHANNEL_PATH.match(path)
        code = _error_code(resp)
        said = f"404{f': {detail}' if detail else ''}"
        if found is None:
            return DiscordNotFound(
                f"Discord {what} not found ({said}): check `channels.base_url` (it should "
                "end in `/api/v10`).",
                gone="",
            )
        channel, message = found.group(1), found.group(2)
        key = self.channel_names.get(channel)
        named = f" (`{key}` in `channels.map`)" if key else ""
        if message is not None and code != UNKNOWN_CHANNEL:
            return DiscordNotFound(
                f"Discord message {message} in channel {channel}{named} not found ({said}): "
                "it was deleted.",
                gone="message",
            )
        fix = (
            f" (`{key}: \"{channel}\"`; in Discord: right-click the channel > Copy Channel ID)"
            if key
            else f": none of them is `{channel}`"
        )
        return DiscordNotFound(
            f"Discord channel {channel}{named} not found ({said}): check the channel ids in "
            f"`channels.map`{fix}, and that the bot is in that server.",
            gone="channel",
        )


def _error_code(resp: httpx.Response) -> int | None:
    """Discord's JSON error code of a refusal (``{"code": 10008, ...}``), or None."""
    data = json_body(resp)
    code = data.get("code") if isinstance(data, dict) else None
    return code if isinstance(code, int) else None


def _limited(what: str, scope: str, until: float, now: float) -> str:
    """The message of a rate limit that is not waited for."""
    which = (
        "every request of this bot (a global limit)"
        if scope == "global"
        else "this kind of request (a per-route limit)"
    )
    return (
        f"Discord rate-limits {which} for {max(0.0, until - now):.0f} s more, until "
        f"{_clock_text(until)} ({what}): no such request is sent to Discord before then. "
        "A running `orchestrate inbox discord` waits for it; a command (`inbox discord "
        "--once`, `inbox submit`) exits 4: run it again after then. Nothing is wrong with "
        "the network or "
        "`channels.base_url`; if this repeats, another program may be using the same bot "
        "token."
    )


def split_content(text: str, limit: int) -> tuple[str, bool]:
    """``text`` cut to ``limit`` characters at a line end when it can be; (text, was_cut)."""
    if len(text) <= limit:
        return text, False
    cut = text.rfind("\n", 0, limit)
    if cut < limit // 2:
        cut = limit
    return text[:cut].rstrip() + " …", True


def _reaction_path(channel_id: str, message_id: str, emoji: str) -> str:
    return f"/channels/{channel_id}/messages/{message_id}/reactions/{quote(emoji, safe='')}"


def _body(resp: httpx.Response) -> Any:
    if resp.status_code == 204 or not resp.content:
        return None
    try:
        return resp.json()
    except (ValueError, RecursionError):
        return None


def _dict(data: Any) -> dict[str, Any]:
    return data if isinstance(data, dict) else {}


def _snowflake(msg: dict[str, Any]) -> int | None:
    """A message's id as a number (Discord ids grow with time), or None if it has none."""
    mid = str(msg.get("id") or "")
    return int(mid) if mid.isdigit() else None


def reference_of(msg: dict[str, Any]) -> str | None:
    """The id of the message ``msg`` replies to, or None."""
    ref = msg.get("message_reference")
    mid = ref.get("message_id") if isinstance(ref, dict) else None
    return str(mid) if mid is not None else None


def ids(users: Sequence[dict[str, Any]]) -> list[str]:
    """The ``id`` of each user object."""
    return [str(u.get("id")) for u in users if u.get("id") is not None]
