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
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

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
            method, split.path, parse_qs(split.query), dict(h.headers), body, time.monotonic()
        )
        with self.lock:
            self.requests.append(rec)
            step = self.script.pop(0) if self.script else None
        if isinstance(step, int):
            step = Scripted(step)
        if step is not None and step.delay:
            time.sleep(step.delay)
        status, payload, headers = self.answer(rec, step)
        data = json.dumps(payload).encode("utf-8")
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        for key, value in headers.items():
            h.send_header(key, value)
        h.end_headers()
        h.wfile.write(data)

    def answer(self, rec: Recorded, step: Scripted | None) -> tuple[int, Any, dict[str, str]]:
        raise NotImplementedError


class DiscordAPI(_Base):
    """Discord's ``GET /api/v10/channels/{id}/messages?limit=N``, bot-token authenticated.

    ``channels`` maps channel ids to messages, oldest first; answers are newest first, as
    Discord's. Scripted statuses (429, 401, 404, 500...) come first, one per request.
    """

    def __init__(
        self,
        *,
        token: str,
        channels: dict[str, list[dict[str, Any]]] | None = None,
        script: list[Script] | None = None,
    ) -> None:
        super().__init__(script)
        self.token = token
        self.channels = channels or {}
        self.base_url = f"{self.url}/api/v10"

    def answer(self, rec: Recorded, step: Scripted | None) -> tuple[int, Any, dict[str, str]]:
        if step is not None and step.status != 200:
            return step.status, step.body or _discord_error(step.status), step.headers
        if rec.headers.get("Authorization") != f"Bot {self.token}":
            return 401, _discord_error(401), {}
        parts = rec.path.split("/")
        # /api/v10/channels/{id}/messages
        if len(parts) != 6 or parts[1:4] != ["api", "v10", "channels"] or parts[5] != "messages":
            return 404, {"message": "404: Not Found", "code": 0}, {}
        if parts[4] not in self.channels:
            return 404, _discord_error(404), {}
        try:
            limit = int(rec.query.get("limit", ["50"])[0])
        except ValueError:
            limit = -1
        if not 1 <= limit <= 100:
            return 400, {"message": "Invalid Form Body", "code": 50035}, {}
        newest_first = list(reversed(self.channels[parts[4]]))
        return 200, newest_first[:limit], {}


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
