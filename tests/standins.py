"""Local stand-ins for third-party HTTP APIs: Discord's REST API and chat completions.

Each is a real ``ThreadingHTTPServer`` on 127.0.0.1 (ephemeral port, HTTP/1.1 keep-alive)
that records every request and plays scripted responses, so the engine's real HTTP code
runs against them. Use them through the ``discord_api`` and ``chat_api`` fixtures, which
stop every server they started.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypeVar
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

_T = TypeVar("_T")


@dataclass
class Scripted:
    """One scripted answer: status, optional JSON body and extra headers, optional delay."""

    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


Script = int | Scripted


@dataclass
class Recorded:
    """A request as the stand-in saw it."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: Any
    at: float
    raw: bytes = b""


class _Base:
    """Server plumbing shared by the stand-ins: start, stop, a script queue, a request log."""

    def __init__(self, script: list[Script] | None = None) -> None:
        self.script: list[Script] = list(script or [])
        self.requests: list[Recorded] = []
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                outer._serve(self, "GET")

            def do_POST(self) -> None:  # noqa: N802
                outer._serve(self, "POST")

            def do_PUT(self) -> None:  # noqa: N802
                outer._serve(self, "PUT")

            def do_DELETE(self) -> None:  # noqa: N802
                outer._serve(self, "DELETE")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    def start(self) -> _Base:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(5)

    def _serve(self, h: BaseHTTPRequestHandler, method: str) -> None:
        length = int(h.headers.get("Content-Length") or 0)
        raw = h.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode("utf-8", "replace")
        split = urlsplit(h.path)
        rec = Recorded(
            method, split.path, parse_qs(split.query), dict(h.headers), body, time.monotonic(), raw
        )
        with self.lock:
            self.requests.append(rec)
            step = self.next_step(rec)
        if isinstance(step, int):
            step = Scripted(step)
        if step is not None and step.delay:
            time.sleep(step.delay)
        status, payload, headers = self.answer(rec, step)
        data = b"" if status == 204 else json.dumps(payload).encode("utf-8")
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        for key, value in headers.items():
            h.send_header(key, value)
        h.end_headers()
        h.wfile.write(data)

    def next_step(self, rec: Recorded) -> Script | None:
        """The scripted answer for this request (called under the lock)."""
        return self.script.pop(0) if self.script else None

    def answer(self, rec: Recorded, step: Scripted | None) -> tuple[int, Any, dict[str, str]]:
        raise NotImplementedError


class DiscordAPI(_Base):
    """Discord's REST API as the engine uses it, bot-token authenticated.

    ``GET /api/v10/channels/{id}/messages?limit=N`` answers newest first, as Discord's;
    ``channels`` maps channel ids to messages, oldest first. Also: ``GET /users/@me``,
    ``POST .../messages`` (JSON, or multipart with ``payload_json`` and ``files[n]``),
    ``PUT``/``DELETE .../reactions/{emoji}/@me`` and ``GET .../reactions/{emoji}``,
    ``GET``/``DELETE .../messages/{id}`` and the ``after``/``before`` paging of the list.
    ``bots`` maps further tokens to user objects (several bots on one server). Scripted
    statuses (429, 401, 404, 500...) come first, one per request; ``post_script`` holds
    statuses for message posts only.
    """

    BOT_ID = "900000000000000001"

    def __init__(
        self,
        *,
        token: str,
        channels: dict[str, list[dict[str, Any]]] | None = None,
        script: list[Script] | None = None,
        bots: dict[str, dict[str, Any]] | None = None,
        post_script: list[Script] | None = None,
    ) -> None:
        super().__init__(script)
        self.token = token
        self.channels = channels or {}
        self.base_url = f"{self.url}/api/v10"
        self.users: dict[str, dict[str, Any]] = {
            token: {"id": self.BOT_ID, "username": "orchestrator", "bot": True}
        }
        self.users.update(bots or {})
        self.post_script: list[Script] = list(post_script or [])
        self.reactions: dict[str, dict[str, list[str]]] = {}
        self.files: dict[str, dict[str, bytes]] = {}
        self.deleted: list[str] = []  # ids of messages deleted through the API
        self.state = threading.RLock()
        self._changed = threading.Condition(self.state)  # notified at each new message
        self._next_id = 1_480_000_000_000_000_000

    # -- test helpers ---------------------------------------------------------------------

    def add_message(
        self, channel_id: str, text: str, *, author_id: str, username: str = "someone"
    ) -> str:
        """A message posted by a user; returns its id."""
        with self.state:
            msg_id = self._new_id()
            self.channels.setdefault(channel_id, []).append(
                {
                    **discord_message(0, text, username=username, timestamp=_now()),
                    "id": msg_id,
                    "channel_id": channel_id,
                    "author": {"id": author_id, "username": username, "bot": False},
                }
            )
            return msg_id

    def reply_as(
        self, channel_id: str, reply_to: str, text: str, *, author_id: str, username: str = "x"
    ) -> str:
        """A user's reply to ``reply_to`` (type 19, with its ``message_reference``)."""
        with self.state:
            msg_id = self.add_message(channel_id, text, author_id=author_id, username=username)
            msg = self._find(channel_id, msg_id)
            msg["type"] = 19
            msg["message_reference"] = {"message_id": reply_to, "channel_id": channel_id}
            return msg_id

    def react_as(self, user_id: str, message_id: str, emoji: str) -> None:
        """``user_id`` reacts to a message."""
        with self.state:
            users = self.reactions.setdefault(message_id, {}).setdefault(emoji, [])
            if user_id not in users:
                users.append(user_id)

    def wait_posts(self, channel_id: str, count: int, timeout: float = 60) -> list[dict[str, Any]]:
        """The channel's messages once it holds at least ``count`` (AssertionError after
        ``timeout`` seconds); woken by each message the API creates."""
        with self._changed:
            if not self._changed.wait_for(
                lambda: len(self.channels.get(channel_id, [])) >= count, timeout
            ):
                raise AssertionError(f"channel {channel_id}: {self.channels.get(channel_id)}")
            return [dict(m) for m in self.channels[channel_id]]

    def posted(self, channel_id: str) -> list[dict[str, Any]]:
        """Messages posted in a channel, oldest first."""
        with self.state:
            return [dict(m) for m in self.channels.get(channel_id, [])]

    def reactors_of(self, message_id: str, emoji: str) -> list[str]:
        """User ids that reacted to a message with ``emoji``."""
        with self.state:
            return list(self.reactions.get(message_id, {}).get(emoji, []))

    # -- serving --------------------------------------------------------------------------

    def next_step(self, rec: Recorded) -> Script | None:
        if rec.method == "POST" and self.post_script:
            return self.post_script.pop(0)
        return super().next_step(rec)

    def answer(self, rec: Recorded, step: Scripted | None) -> tuple[int, Any, dict[str, str]]:
        if step is not None and step.status != 200:
            return step.status, step.body or _discord_error(step.status), step.headers
        auth = rec.headers.get("Authorization") or ""
        user = self.users.get(auth[4:]) if auth.startswith("Bot ") else None
        if user is None:
            return 401, _discord_error(401), {}
        parts = [unquote(p) for p in rec.path.split("/")]
        if parts[1:3] != ["api", "v10"]:
            return 404, {"message": "404: Not Found", "code": 0}, {}
        parts = parts[3:]
        with self.state:
            if parts == ["users", "@me"] and rec.method == "GET":
                return 200, dict(user), {}
            if len(parts) < 3 or parts[0] != "channels" or parts[2] != "messages":
                return 404, {"message": "404: Not Found", "code": 0}, {}
            channel = parts[1]
            if channel not in self.channels:
                return 404, _discord_error(404), {}
            if len(parts) == 3:
                if rec.method == "GET":
                    return self._list(rec, channel, user)
                if rec.method == "POST":
                    return self._create(rec, channel, user)
                return 405, {"message": "405: Method Not Allowed", "code": 0}, {}
            message = parts[3]
            if not any(m["id"] == message for m in self.channels[channel]):
                return 404, {"message": "Unknown Message", "code": 10008}, {}
            if len(parts) == 4 and rec.method == "GET":
                return 200, self._shown(self._find(channel, message), user), {}
            if len(parts) == 4 and rec.method == "DELETE":
                found = self._find(channel, message)
                if found["author"]["id"] != user["id"]:
                    return 403, {"message": "Cannot delete another user's message"}, {}
                self.channels[channel].remove(found)
                self.deleted.append(message)
                return 204, None, {}
            if len(parts) == 6 and parts[4] == "reactions" and rec.method == "GET":
                users = self.reactions.get(message, {}).get(parts[5], [])
                by_id = {u["id"]: u for u in self.users.values()}
                return 200, [by_id.get(u, {"id": u, "username": u}) for u in users], {}
            if len(parts) == 7 and parts[4] == "reactions" and parts[6] == "@me":
                users = self.reactions.setdefault(message, {}).setdefault(parts[5], [])
                if rec.method == "PUT" and user["id"] not in users:
                    users.append(user["id"])
                elif rec.method == "DELETE" and user["id"] in users:
                    users.remove(user["id"])
                return 204, None, {}
        return 404, {"message": "404: Not Found", "code": 0}, {}

    def _list(
        self, rec: Recorded, channel: str, user: dict[str, Any]
    ) -> tuple[int, Any, dict[str, str]]:
        try:
            limit = int(rec.query.get("limit", ["50"])[0])
        except ValueError:
            limit = -1
        if not 1 <= limit <= 100:
            return 400, {"message": "Invalid Form Body", "code": 50035}, {}
        after = rec.query.get("after", [None])[0]
        before = rec.query.get("before", [None])[0]
        msgs = self.channels[channel]
        if after is not None:  # Discord: the oldest `limit` after the id, sent newest first
            msgs = [m for m in msgs if int(m["id"]) > int(after)][:limit]
        if before is not None:
            msgs = [m for m in msgs if int(m["id"]) < int(before)]
        out = [self._shown(m, user) for m in reversed(msgs)]
        return 200, out[:limit], {}

    def _find(self, channel: str, message: str) -> dict[str, Any]:
        return next(m for m in self.channels[channel] if m["id"] == message)

    def _shown(self, m: dict[str, Any], user: dict[str, Any]) -> dict[str, Any]:
        """A message as the API shows it to ``user``: with its reaction counts."""
        m = dict(m)
        reacted = {e: u for e, u in self.reactions.get(m["id"], {}).items() if u}
        if reacted:
            m["reactions"] = [
                {"emoji": {"id": None, "name": e}, "count": len(u), "me": user["id"] in u}
                for e, u in reacted.items()
            ]
        return m

    def _create(
        self, rec: Recorded, channel: str, user: dict[str, Any]
    ) -> tuple[int, Any, dict[str, str]]:
        ctype = rec.headers.get("Content-Type") or rec.headers.get("content-type") or ""
        files: dict[str, bytes] = {}
        if ctype.startswith("multipart/form-data"):
            payload: Any = None
            parsed = BytesParser(policy=HTTP).parsebytes(
                b"Content-Type: " + ctype.encode() + b"\r\n\r\n" + rec.raw
            )
            for part in parsed.iter_parts():
                name = part.get_param("name", header="content-disposition")
                data = part.get_payload(decode=True) or b""
                if name == "payload_json":
                    payload = json.loads(data)
                elif isinstance(name, str) and name.startswith("files["):
                    files[str(part.get_filename())] = data
        else:
            payload = rec.body
        if not isinstance(payload, dict) or not (payload.get("content") or files):
            return 400, {"message": "Cannot send an empty message", "code": 50006}, {}
        content = str(payload.get("content") or "")
        if len(content) > 2000:
            return 400, {"message": "Invalid Form Body", "code": 50035}, {}
        msg_id = self._new_id()
        message = {
            **discord_message(0, content, username=user["username"], timestamp=_now()),
            "id": msg_id,
            "channel_id": channel,
            "author": dict(user),
            "attachments": [
                {"id": str(i), "filename": n, "size": len(b)}
                for i, (n, b) in enumerate(files.items())
            ],
        }
        if payload.get("message_reference"):
            message["message_reference"] = payload["message_reference"]
            message["type"] = 19
        self.channels[channel].append(message)
        if files:
            self.files[msg_id] = files
        self._changed.notify_all()
        return 200, message, {}

    def _new_id(self) -> str:
        self._next_id += 1
        return str(self._next_id)


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _discord_error(status: int) -> dict[str, Any]:
    if status == 401:
        return {"message": "401: Unauthorized", "code": 0}
    if status == 403:
        return {"message": "Missing Access", "code": 50001}
    if status == 404:
        return {"message": "Unknown Channel", "code": 10003}
    if status == 429:
        return {"message": "You are being rate limited.", "retry_after": 0.3, "global": False}
    return {"message": f"scripted {status}", "code": 0}


def discord_message(
    msg_id: int,
    text: str,
    *,
    username: str,
    global_name: str | None = None,
    timestamp: str,
    **extra: Any,
) -> dict[str, Any]:
    """A message object shaped like Discord's (the fields the engine reads, and a few more)."""
    return {
        "id": str(msg_id),
        "type": 0,
        "channel_id": "0",
        "content": text,
        "author": {
            "id": str(1000 + msg_id),
            "username": username,
            "global_name": global_name,
            "discriminator": "0",
        },
        "timestamp": timestamp,
        "edited_timestamp": None,
        "attachments": [],
        "embeds": [],
        "mentions": [],
        "pinned": False,
        **extra,
    }


class ChatAPI(_Base):
    """An OpenAI-compatible ``POST /v1/chat/completions`` (non-streaming).

    ``reply`` makes the assistant's text from the request body; ``usage`` is the
    (prompt_tokens, completion_tokens) reported; ``report_model`` overrides the model
    name in the answer. With ``api_key`` set, a request without that bearer token gets 401.
    """

    def __init__(
        self,
        *,
        api_key: str | None = None,
        script: list[Script] | None = None,
        reply: Callable[[dict[str, Any]], str] | None = None,
        usage: tuple[int, int] = (1234, 567),
        report_model: str | None = None,
        finish_reason: str = "stop",
    ) -> None:
        super().__init__(script)
        self.api_key = api_key
        self.reply = reply or _default_reply
        self.usage = usage
        self.report_model = report_model
        self.finish_reason = finish_reason
        self.base_url = f"{self.url}/v1"

    @property
    def completions(self) -> list[Recorded]:
        """The POSTs to /v1/chat/completions received so far."""
        return [r for r in self.requests if r.path == "/v1/chat/completions"]

    def answer(self, rec: Recorded, step: Scripted | None) -> tuple[int, Any, dict[str, str]]:
        if rec.method != "POST" or rec.path != "/v1/chat/completions":
            return 404, _openai_error("not found", "invalid_request_error"), {}
        if step is not None and step.status != 200:
            body = step.body or _openai_error(f"scripted {step.status}", "server_error")
            return step.status, body, step.headers
        if self.api_key and rec.headers.get("Authorization") != f"Bearer {self.api_key}":
            return 401, _openai_error("Incorrect API key provided.", "invalid_api_key"), {}
        body = rec.body if isinstance(rec.body, dict) else {}
        prompt, completion = self.usage
        return (
            200,
            {
                "id": f"chatcmpl-{len(self.requests)}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": self.report_model or body.get("model"),
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": self.reply(body)},
                        "finish_reason": self.finish_reason,
                    }
                ],
                "usage": {
                    "prompt_tokens": prompt,
                    "completion_tokens": completion,
                    "total_tokens": prompt + completion,
                },
            },
            {},
        )


def _default_reply(body: dict[str, Any]) -> str:
    user = [m["content"] for m in body.get("messages", []) if m.get("role") == "user"]
    first = user[-1].splitlines()[0] if user and user[-1] else ""
    return f"model answer to: {first}"


def _openai_error(message: str, kind: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": None, "code": None}}


def openai_error(message: str, kind: str = "invalid_request_error") -> dict[str, Any]:
    """An error body shaped like OpenAI's."""
    return _openai_error(message, kind)


def _factory(kind: Callable[..., _T]) -> Iterator[Callable[..., _T]]:
    """Yield a maker of started stand-ins of ``kind``; stop every one made afterwards."""
    made: list[Any] = []

    def make(**kw: Any) -> _T:
        server = kind(**kw)
        server.start()  # type: ignore[attr-defined]
        made.append(server)
        return server

    yield make
    for server in made:
        server.stop()


@pytest.fixture
def discord_api() -> Iterator[Callable[..., DiscordAPI]]:
    """Factory of started Discord stand-ins, all stopped at the end of the test."""
    yield from _factory(DiscordAPI)


@pytest.fixture
def chat_api() -> Iterator[Callable[..., ChatAPI]]:
    """Factory of started chat-completions stand-ins, all stopped at the end of the test."""
    yield from _factory(ChatAPI)
