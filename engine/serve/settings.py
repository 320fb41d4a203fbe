"""The ``serve:`` section of the config: address, bearer tokens with roles, approval rules.

Example::

    serve:
      host: 127.0.0.1
      port: 8765
      tokens_env: ORCH_SERVE_TOKENS     # "alice:operate:TOKEN bob:read:TOKEN"
      tokens_file: serve-tokens.yaml    # [{name: alice, role: operate, token: ...}]
      self_approval: false              # the starter of a run may not approve its gates
                                        # (default true: the starter may decide them)
      max_body_bytes: 1048576           # larger request bodies get 413 (default 1 MiB)

Without tokens the server answers only on a loopback address, and every caller is the
operator ``local``. Tokens come only from the variable ``tokens_env`` names and the file
``tokens_file`` names; ``unread_tokens_warning`` says so when ``$ORCH_SERVE_TOKENS`` (the
documented name) is set but the config reads no tokens.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.config import Config
from engine.errors import ConfigError
from engine.redact import register

#: The variable name docs/serve.md uses for ``serve.tokens_env``; read only when named.
CONVENTIONAL_TOKENS_ENV = "ORCH_SERVE_TOKENS"
ROLES = ("read", "operate")  # read: look; operate: also start, cancel, approve, answer
DEFAULT_PORT = 8765
#: ``serve.max_body_bytes`` by default: the largest request body the API reads (1 MiB).
DEFAULT_MAX_BODY = 1024 * 1024
MIN_TOKEN = 16
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")


@dataclass(frozen=True)
class ApiToken:
    """One bearer token: who holds it (``name``, the recorded identity) and its role."""

    name: str
    role: str
    token: str = field(repr=False)

    @property
    def can_operate(self) -> bool:
        """True when the holder may change things."""
        return self.role == "operate"


#: The identity of every caller when no token is configured (loopback only).
LOCAL = ApiToken(name="local", role="operate", token="")


@dataclass(frozen=True)
class ServeSettings:
    """How ``orchestrate serve`` listens and whom it lets in.

    Example: ``ServeSettings(port=0, tokens=(ApiToken("ci", "operate", "x" * 32),))``
    """

    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    tokens: tuple[ApiToken, ...] = ()
    self_approval: bool = True
    max_parallel: int = 4
    discord_inbox: bool = False  # run the Discord inbox in the server (engine.inbox)
    max_body_bytes: int = DEFAULT_MAX_BODY  # larger request bodies get 413

    @classmethod
    def from_config(
        cls,
        config: Config,
        *,
        host: str | None = None,
        port: int | None = None,
    ) -> ServeSettings:
        """Read ``config.serve`` (command-line ``host``/``port`` win) and load the tokens."""
        raw = config.serve
        label = f"`{config.label}` `serve`"
        tokens: list[ApiToken] = []
        problems: list[str] = []
        env = raw.get("tokens_env")
        if env:
            text = os.environ.get(env, "")
            if not text.strip():
                problems.append(
                    f"`tokens_env`: environment variable `{env}` is not set or empty; export "
                    "it as `NAME:ROLE:TOKEN` entries separated by spaces or commas."
                )
            tokens += _parse_env(text, f"${env}", problems)
        file = raw.get("tokens_file")
        if file:
            path = Path(os.path.expanduser(file))
            if not path.is_absolute() and config.path is not None:
                path = config.path.parent / path
            tokens += _parse_file(path, problems)
        seen: dict[str, str] = {}
        for t in tokens:
            if t.token in seen.values():
                problems.append(f"token of `{t.name}` is also the token of another name.")
            seen[t.name] = t.token
        if problems:
            raise ConfigError(f"{label} is not usable:", path=config.path, problems=problems)
        for t in tokens:
            register(t.token)
        return cls(
            host=host or str(raw.get("host", "127.0.0.1")),
            port=int(port if port is not None else raw.get("port", DEFAULT_PORT)),
            tokens=tuple(tokens),
            self_approval=bool(raw.get("self_approval", True)),
            max_parallel=int(raw.get("max_parallel", 4)),
            discord_inbox=bool(raw.get("discord_inbox", False)),
            max_body_bytes=int(raw.get("max_body_bytes", DEFAULT_MAX_BODY)),
        )

    def unread_tokens_warning(self, config: Config) -> str | None:
        """One line for the start of `orchestrate serve` when ``$ORCH_SERVE_TOKENS`` is set
        but no token was loaded (no ``serve.tokens_env``/``tokens_file``): the variable
        alone does nothing, and every caller is the operator ``local``. None otherwise."""
        if self.tokens or not os.environ.get(CONVENTIONAL_TOKENS_ENV, "").strip():
            return None
        return (
            f"warning: ${CONVENTIONAL_TOKENS_ENV} is set, but the `serve:` section of "
            f"`{config.label}` names no tokens (add `tokens_env: {CONVENTIONAL_TOKENS_ENV}` "
            f"to it to use them): the server accepts any caller on {self.host} as the "
            "operator `local`."
        )

    def check_bind(self) -> None:
        """Refuse a non-loopback address without tokens (anyone could run agents)."""
        if self.tokens or _loopback(self.host):
            return
        raise ConfigError(
            f"refusing to serve on `{self.host}` without tokens: anyone who reaches it could "
            "start agents. Set `serve.tokens_env` or `serve.tokens_file`, or bind 127.0.0.1."
        )

    def authenticate(self, authorization: str | None) -> ApiToken | None:
        """The token holder named by an ``Authorization: Bearer …`` header, else None."""
        if not self.tokens:
            return LOCAL
        if not authorization or not authorization.startswith("Bearer "):
            return None
        given = authorization[len("Bearer ") :].strip().encode()
        found = None
        for t in self.tokens:  # compare with every token: the time does not tell which
            if hmac.compare_digest(given, t.token.encode()):
                found = t
        return found


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _token(name: Any, role: Any, token: Any, where: str, problems: list[str]) -> ApiToken | None:
    if not isinstance(name, str) or not _NAME.match(name):
        problems.append(f"{where}: name {name!r} is not usable (letters, digits, `._@-`).")
        return None
    if role not in ROLES:
        problems.append(f"{where}: role {role!r} of `{name}` must be one of: {', '.join(ROLES)}.")
        return None
    if not isinstance(token, str) or len(token.strip()) < MIN_TOKEN:
        problems.append(
            f"{where}: the token of `{name}` must have at least {MIN_TOKEN} characters."
        )
        return None
    return ApiToken(name=name, role=str(role), token=token.strip())


def _parse_env(text: str, where: str, problems: list[str]) -> list[ApiToken]:
    out = []
    for n, entry in enumerate(re.split(r"[\s,]+", text.strip()), 1):
        if not entry:
            continue
        parts = entry.split(":", 2)
        if len(parts) != 3:
            problems.append(f"{where} entry {n} is not `NAME:ROLE:TOKEN`.")
            continue
        t = _token(parts[0], parts[1], parts[2], f"{where} entry {n}", problems)
        if t:
            out.append(t)
    return out


def _parse_file(path: Path, problems: list[str]) -> list[ApiToken]:
    from engine.yamlio import read_yaml

    try:
        data, duplicates, _ = read_yaml(path, error=ConfigError, what="`serve.tokens_file`")
    except ConfigError as exc:
        problems.append(f"`tokens_file`: {exc}")
        return []
    problems.extend(f"`{path}`: {d}" for d in duplicates)
    if isinstance(data, dict):
        data = data.get("tokens")
    if not isinstance(data, list):
        problems.append(
            f"`tokens_file`: `{path}` must be a list of `{{name, role, token}}` mappings."
        )
        return []
    out = []
    for n, item in enumerate(data, 1):
        where = f"`{path}` item {n}"
        if not isinstance(item, dict):
            problems.append(f"{where} is not a mapping with `name`, `role` and `token`.")
            continue
        t = _token(item.get("name"), item.get("role"), item.get("token"), where, problems)
        if t:
            out.append(t)
    return out
