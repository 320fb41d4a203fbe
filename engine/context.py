"""Context put before a delegated task: recent messages of a chat channel, or a file.

Example::

    text = channel_context(cfg, "technical", 20)   # Discord, via `channels:` in the config
    text += file_context(Path("notes.md"))
    DelegationRequest(target="tech-lead", task="Review thermal margins", caller="manager",
                      context=text)

A channel's messages are fetched from the Discord REST API
(``GET {base_url}/channels/{id}/messages?limit=N`` with ``Authorization: Bot <token>``)
and rendered oldest first, one ``[YYYY-MM-DD HH:MM UTC] author: text`` entry each,
between a header line and a closing separator. See docs/agents.md.
"""

from __future__ import annotations

import codecs
import os
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from engine.config import Config
from engine.errors import ConfigError, HookError, UsageError, did_you_mean
from engine.redact import redact, register, register_url
from engine.retry import Backoff, GiveUp, json_body, retry_after_seconds, send_with_retries

#: Discord's REST API root, used when ``channels.base_url`` is not set.
DISCORD_API = "https://discord.com/api/v10"
#: Discord returns at most this many messages per request.
MAX_MESSAGES = 100
#: The largest context, in characters (channel) or bytes (file), put before a task.
MAX_CONTEXT = 64 * 1024
#: How many times a rate-limited (429) or failing (5xx) request is retried.
MAX_RETRIES = 3
#: The longest single wait a 429 may ask for before we give up instead.
MAX_RETRY_WAIT = 30.0
#: Backoff before retrying a 5xx or connection failure, by retry number.
SERVER_ERROR_DELAYS = (0.5, 1.0, 2.0)
#: Ends every context block, so the task that follows stands apart.
SEPARATOR = "--- end of context ---"
#: Discord wants bots to identify themselves this way.
USER_AGENT = "DiscordBot (agent-orchestrator, 0.1.0)"
#: Indentation of a message's continuation lines.
INDENT = "    "
# Spelled out rather than imported so this module does not pull in the gateway; a test
# pins it to engine.gateway.agents.HANDOFF_MARKER.
_MARKER = "--- HANDOFF (required) ---"
_MARKER_QUOTED = "--- HANDOFF (quoted) ---"


def channel_context(
    cfg: Config,
    name: str,
    limit: int,
    *,
    client: httpx.Client | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> str:
    """Fetch the last ``limit`` messages of channel ``name`` and format them, oldest first.

    Raises UsageError for a limit outside 1..100 (or above ``channels.max_messages``),
    ConfigError for a missing ``channels`` section, token or channel name and for 401,
    403 and 404 answers, and HookError when Discord cannot be reached or keeps refusing.
    The bot token never appears in any message.
    """
    channels = cfg.channels
    if not channels:
        raise ConfigError(
            f"`{cfg.label}` has no `channels:` section: add one to use `--channel-context`, "
            "e.g. `channels: {provider: discord, token_env: DISCORD_BOT_TOKEN, "
            'map: {technical: "<channel id>"}}`.',
            path=cfg.path,
        )
    _check_limit(limit, channels)
    channel_id = _channel_id(cfg, channels, name)
    token_env, token = _token(cfg, channels)
    base = str(channels.get("base_url") or DISCORD_API).rstrip("/")
    register_url(base)
    url = f"{base}/channels/{channel_id}/messages"
    headers = {"Authorization": f"Bot {token}", "User-Agent": USER_AGENT}
    own = client is None
    http = client or httpx.Client(timeout=cfg.retry.request_timeout)
    try:
        messages = _fetch(
            http,
            url,
            limit,
            headers,
            name=name,
            channel_id=channel_id,
            token_env=token_env,
            token=token,
            sleep=sleep,
        )
    finally:
        if own:
            http.close()
    return format_messages(name, messages)


def format_messages(name: str, messages: list[Mapping[str, Any]]) -> str:
    """Render Discord message objects (newest first, as the API returns them) oldest first.

    When the rendering would exceed ``MAX_CONTEXT`` characters, the oldest messages are
    left out and a line says how many.
    """
    entries = [_format_one(m) for m in reversed(messages)]
    omitted = 0
    while entries and sum(len(e) + 1 for e in entries) > MAX_CONTEXT:
        entries.pop(0)
        omitted += 1
    lines = [f"Recent messages in #{name} (last {len(messages)}):"]
    if omitted:
        lines.append(
            f"({omitted} older message(s) left out to stay under {MAX_CONTEXT} characters)"
        )
    if not messages:
        lines.append("(no messages)")
    lines.extend(entries)
    lines.append(SEPARATOR)
    return "\n".join(lines)


def file_context(path: Path) -> str:
    """Read ``path`` (UTF-8 text, at most ``MAX_CONTEXT`` bytes) as context for a task.

    Raises UsageError when the file cannot be read or is not UTF-8 text; a longer file is
    cut, with a note saying so.
    """
    import stat

    try:
        mode = os.stat(path).st_mode
        if stat.S_ISDIR(mode):
            raise UsageError(f"--context-file `{path}` is a directory, not a file.")
        if not stat.S_ISREG(mode):  # a FIFO or a device would block or never end
            raise UsageError(f"--context-file `{path}` is not a regular file; give a text file.")
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        with os.fdopen(fd, "rb") as fh:
            data = fh.read(MAX_CONTEXT + 1)
            size = os.fstat(fh.fileno()).st_size
    except OSError as exc:
        raise UsageError(f"--context-file `{path}` cannot be read: {exc.strerror or exc}.") from exc
    truncated = len(data) > MAX_CONTEXT
    data = data[:MAX_CONTEXT]
    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        # A cut file may end inside a multi-byte character: only a complete file must be
        # complete UTF-8.
        text = decoder.decode(data, final=not truncated)
    except UnicodeDecodeError as exc:
        raise UsageError(
            f"--context-file `{path}` is not UTF-8 text (byte {exc.start}): give a text file."
        ) from None
    lines = [f"Context from {path.name}:"]
    body = _quote_marker(text.rstrip("\n"))
    lines.append(body if body.strip() else "(the file is empty)")
    if truncated:
        lines.append(
            f"[truncated: only the first {MAX_CONTEXT} of {max(size, MAX_CONTEXT + 1)} "
            "bytes are included]"
        )
    lines.append(SEPARATOR)
    return "\n".join(lines)


# -- configuration ------------------------------------------------------------------------


def _check_limit(limit: int, channels: Mapping[str, Any]) -> None:
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_MESSAGES:
        raise UsageError(
            f"--channel-messages must be a whole number from 1 to {MAX_MESSAGES} (Discord "
            f"returns at most {MAX_MESSAGES} messages per request), not {limit!r}."
        )
    cap = channels.get("max_messages")
    if isinstance(cap, int) and limit > cap:
        raise UsageError(
            f"--channel-messages {limit} is more than `channels.max_messages` ({cap}): ask "
            "for fewer, or raise `channels.max_messages` in the config."
        )


def _channel_id(cfg: Config, channels: Mapping[str, Any], name: str) -> str:
    mapping = channels.get("map") or {}
    if not mapping:
        raise ConfigError(
            f"`channels.map` in `{cfg.label}` is empty: add the channel, e.g. "
            f'`map: {{{name}: "<channel id>"}}` (in Discord: right-click the channel, '
            "Copy Channel ID).",
            path=cfg.path,
        )
    if name not in mapping:
        known = ", ".join(f"`{n}`" for n in sorted(mapping))
        raise ConfigError(
            f"unknown channel `{name}`{did_you_mean(name, list(mapping)) or '.'} Known "
            f"channels (`channels.map` in `{cfg.label}`): {known}.",
            path=cfg.path,
        )
    return str(mapping[name])


def _token(cfg: Config, channels: Mapping[str, Any]) -> tuple[str, str]:
    env = channels.get("token_env")
    if not env:
        raise ConfigError(
            f"`channels.token_env` is not set in `{cfg.label}`: name the environment "
            "variable holding the Discord bot token, e.g. `token_env: DISCORD_BOT_TOKEN`.",
            path=cfg.path,
        )
    token = os.environ.get(str(env), "").strip()
    if not token:
        raise ConfigError(
            f"environment variable `{env}` (from `channels.token_env`) is not set or empty: "
            f"export the Discord bot token, e.g. `export {env}=...`.",
            path=cfg.path,
        )
    register(token)
    from engine.registry import check_token

    check_token(
        token,
        source=f"environment variable `{env}` (from `channels.token_env`)",
        what="channel context",
    )
    return str(env), token


# -- HTTP ---------------------------------------------------------------------------------


def _fetch(
    http: httpx.Client,
    url: str,
    limit: int,
    headers: dict[str, str],
    *,
    name: str,
    channel_id: str,
    token_env: str,
    token: str,
    sleep: Callable[[float], None],
) -> list[Mapping[str, Any]]:
    """GET the messages, retrying 429 (as told), 5xx and connection failures a few times."""
    where = f"Discord channel `{name}` (id {channel_id})"

    def server_wait(resp: httpx.Response) -> float | None:
        return _rate_limit_wait(resp) if resp.status_code == 429 else None

    def describe(resp: httpx.Response) -> str:
        if resp.status_code == 429:
            return f"rate limited (429), asked to wait {_rate_limit_wait(resp):g} s"
        return f"HTTP {resp.status_code}"

    done = send_with_retries(
        lambda _timeout: http.get(url, params={"limit": limit}, headers=headers),
        Backoff(
            SERVER_ERROR_DELAYS[:MAX_RETRIES],
            max_wait=MAX_RETRY_WAIT,
            server_wait_replaces=True,
        ),
        accept=lambda r: r.status_code == 200,
        retryable=lambda r: r.status_code == 429 or r.status_code >= 500,
        describe=describe,
        server_wait=server_wait,
        scrub=lambda text: _scrub(text, token),
        sleep=sleep,
    )
    resp = done.response
    if resp is not None and done.accepted:
        return _messages(resp, where)
    if resp is not None:
        raise _refusal(resp, where, name, channel_id, token_env, token)
    if done.gave_up is GiveUp.WAIT_TOO_LONG:
        raise HookError(
            f"{where}: Discord rate-limited the bot for {done.delay or 0:g} s; try again later.",
            status_code=429,
        )
    raise HookError(
        redact(
            f"cannot read {where} at {url}: gave up after {done.attempts} attempts "
            f"(last: {done.reason}). Check the network and `channels.base_url`."
        ),
    )


def _rate_limit_wait(resp: httpx.Response) -> float:
    """Seconds a 429 asks for: JSON ``retry_after``, else the rate-limit headers, else 1."""
    data = json_body(resp)
    if isinstance(data, dict):
        value = data.get("retry_after")
        if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
            return float(value)
    for header in ("x-ratelimit-reset-after", "retry-after"):
        wait = retry_after_seconds(resp.headers.get(header))
        if wait is not None:
            return wait
    return 1.0


def _refusal(
    resp: httpx.Response, where: str, name: str, channel_id: str, token_env: str, token: str
) -> Exception:
    code = resp.status_code
    detail = _scrub(discord_error_text(resp), token)
    if code == 401:
        return bot_token_rejected(token_env)
    if code == 403:
        return ConfigError(
            f"{where}: the bot may not read it (403 {detail or 'Forbidden'}): give the bot "
            "the View Channel and Read Message History permissions there, or check that "
            f"`{token_env}` holds the right bot's token.",
            status_code=code,
        )
    if code == 404:
        return ConfigError(
            f"channel id {channel_id} not found (check `channels.map.{name}`): Discord "
            f"answered 404{f' ({detail})' if detail else ''}.",
            status_code=code,
        )
    return HookError(
        f"{where}: Discord refused the request (HTTP {code}{f': {detail}' if detail else ''}).",
        status_code=code,
    )


def bot_token_rejected(token_env: str) -> ConfigError:
    """The error for a Discord answer of 401 Unauthorized to the bot token read from
    environment variable ``token_env`` (exit code of ``ConfigError``; the token itself is
    never named). Shared by channel context and the inbox client (``engine.discord``)."""
    return ConfigError(
        f"Discord rejected the bot token from `{token_env}` (401 Unauthorized): set "
        f"`{token_env}` to the bot's token (Developer Portal > Bot > Token).",
        status_code=401,
    )


def discord_error_text(resp: httpx.Response) -> str:
    """Discord's error text, redacted before it is cut (a cut could split a token)."""
    try:
        data = resp.json()
    except (ValueError, RecursionError):  # not JSON, or nested past the parser
        return redact(resp.text[:65536].strip())[:200]
    if isinstance(data, dict) and isinstance(data.get("message"), str):
        return redact(str(data["message"])[:65536])[:200]
    return ""


def _messages(resp: httpx.Response, where: str) -> list[Mapping[str, Any]]:
    data = json_body(resp)
    if not isinstance(data, list) or not all(isinstance(m, dict) for m in data):
        raise HookError(f"{where}: Discord answered 200 but not with a list of messages.")
    return data


def _scrub(text: str, token: str) -> str:
    return redact(text.replace(token, "***") if token else text)


# -- formatting ---------------------------------------------------------------------------


def _format_one(message: Mapping[str, Any]) -> str:
    """``[YYYY-MM-DD HH:MM UTC] author: text``, continuation lines indented."""
    when = _when(message.get("timestamp"))
    author = _author(message.get("author"))
    parts: list[str] = []
    content = message.get("content")
    if isinstance(content, str) and content.strip():
        parts.append(content.strip())
    parts.extend(_extras(message))
    text = _quote_marker("\n".join(parts) if parts else "(no text)")
    first, *rest = text.split("\n")
    lines = [f"[{when}] {author}: {first}"]
    lines.extend(f"{INDENT}{line}" if line.strip() else "" for line in rest)
    return "\n".join(lines)


def _when(raw: Any) -> str:
    if not isinstance(raw, str):
        return "unknown time"
    try:
        stamp = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        return raw
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=UTC)
    return stamp.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def _author(raw: Any) -> str:
    if not isinstance(raw, dict):
        return "unknown"
    name = raw.get("global_name") or raw.get("username") or "unknown"
    return f"{name} [bot]" if raw.get("bot") else str(name)


def _extras(message: Mapping[str, Any]) -> list[str]:
    """One short line per attachment, embed and sticker."""
    notes: list[str] = []
    for att in message.get("attachments") or []:
        if isinstance(att, dict):
            notes.append(f"[attachment: {att.get('filename') or 'file'}]")
    for emb in message.get("embeds") or []:
        if isinstance(emb, dict):
            title = emb.get("title") or emb.get("url")
            notes.append(f"[embed: {title}]" if title else "[embed]")
    for sticker in message.get("sticker_items") or []:
        if isinstance(sticker, dict):
            notes.append(f"[sticker: {sticker.get('name') or '?'}]")
    return notes


def _quote_marker(text: str) -> str:
    """Defuse the handoff marker in quoted data: the local gateway cuts the task at the last
    marker, but other gateways or agents may cut at the first."""
    return text.replace(_MARKER, _MARKER_QUOTED)
