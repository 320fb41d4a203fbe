"""The agent registry: names, capabilities and the secret each agent's hooks token is in."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass

from engine.config import AgentConfig, Config
from engine.errors import ConfigError, UnknownAgentError, did_you_mean


@dataclass(frozen=True)
class Registry:
    """Looks agents up by name or capability."""

    agents: dict[str, AgentConfig]

    @classmethod
    def from_config(cls, cfg: Config) -> Registry:
        """Build the registry from a loaded config."""
        return cls(dict(cfg.agents))

    @property
    def names(self) -> tuple[str, ...]:
        """Agent names in registry order."""
        return tuple(self.agents)

    def get(self, name: str, *, role: str = "agent") -> AgentConfig:
        """Return the agent ``name`` or raise UnknownAgentError with a near-miss hint."""
        try:
            return self.agents[name]
        except KeyError:
            raise UnknownAgentError(
                f"unknown {role} `{name}`{did_you_mean(name, self.names) or '.'}"
                f" Known agents: {', '.join(self.names)}.",
                agent=name,
            ) from None

    def with_capability(self, capability: str) -> tuple[AgentConfig, ...]:
        """Agents that list ``capability``, in registry order."""
        return tuple(a for a in self.agents.values() if capability in a.capabilities)

    @property
    def capabilities(self) -> tuple[str, ...]:
        """Every capability some agent has, sorted."""
        return tuple(sorted({c for a in self.agents.values() for c in a.capabilities}))


def check_secrets(cfg: Config, names: Iterable[str]) -> None:
    """Read the token of each named remote agent now, so a bad one is refused before a run.

    Raises ConfigError (exit 2) naming the agent and the token's source, never its value.
    """
    for name in dict.fromkeys(names):
        agent = cfg.agents.get(name)
        if agent is not None and (agent.token_env or agent.token_file):
            read_secret(env=agent.token_env, file=agent.token_file, what=f"agent `{name}`")


def read_secret(*, env: str | None, file: os.PathLike[str] | str | None, what: str) -> str:
    """Read a token from an environment variable or a file; the value is never echoed.

    A token must be sendable as an HTTP header value: printable ASCII, no spaces inside, no
    surrounding quotes. One trailing newline of a file (and surrounding blanks) is dropped;
    anything else is refused naming the source (variable or file), never the value.
    """
    from engine.redact import register  # here: a check of a template reads no secret

    if env:
        value = os.environ.get(env, "").strip()
        if value:
            register(value)
            return check_token(value, source=f"environment variable `{env}`", what=what)
        if not file:
            raise ConfigError(
                f"{what}: environment variable `{env}` is not set (or empty). Export it "
                "with the gateway's hooks token, e.g. `export "
                f"{env}=...` (the value must match `hooks.token` of that gateway)."
            )
    if file:
        from engine.textio import read_text

        text = read_text(file, error=ConfigError, what=f"{what}: token file")
        value = text.strip()
        if not value:
            raise ConfigError(f"{what}: token file `{file}` is empty.")
        register(value)
        assignment = _ASSIGNMENT_RE.match(value)
        if assignment and "\n" not in value:
            name = assignment.group(1)
            raise ConfigError(
                f"{what}: token file `{file}` holds a line of the form `{name}=...`, the form "
                "of an environment file (systemd's `EnvironmentFile`, a `.env` file), not a "
                "token: the whole line would be sent and refused by the gateway. A token file "
                "must hold only the token; write just the value to it, or keep the "
                f"environment file and set `token_env: {name}` instead (with the variable "
                "exported)."
            )
        return check_token(value, source=f"token file `{file}`", what=what)
    raise ConfigError(f"{what}: no `token_env` or `token_file` configured.")


def check_token(value: str, *, source: str, what: str) -> str:
    """Return ``value`` if it can be sent as a bearer token; else say why, never showing it."""
    problem = None
    if "\n" in value or "\r" in value:
        problem = "has more than one line (only the token may be in it; put notes elsewhere)"
    elif value[:1] in _QUOTES and value[-1:] in _QUOTES:
        problem = "is wrapped in quotes; remove them"
    elif any(ord(c) > 127 for c in value):
        problem = "contains a non-ASCII character (a typographic quote or a non-breaking space?)"
    elif any(ord(c) < 32 or ord(c) == 127 for c in value):
        problem = "contains a control character"
    elif any(c.isspace() for c in value):
        problem = "contains a space"
    elif any(c in _QUOTES for c in value):
        problem = "contains a quote character"
    if problem:
        raise ConfigError(
            f"{what}: the token in {source} {problem}. It cannot be sent as an HTTP header; "
            "fix the token and run again."
        )
    return value


#: ``NAME=value`` (or ``export NAME=value``): an environment file's line, not a token. A
#: value of only ``=`` is not matched (base64 padding: ``abcd==`` is a token).
_ASSIGNMENT_RE = re.compile(r"^(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)=(?!=*$)")
_QUOTES = frozenset("\"'\u2018\u2019\u201c\u201d`")


def caller_only_problem(name: str) -> str:
    """Why delegating to the caller-only agent ``name`` is refused, and what to do: an
    agent with ``url: local`` that ``gateway.agents`` does not host (engine.config)."""
    return (
        f"`{name}` only calls others: `agents.{name}` runs on the local gateway, which "
        f"does not host it (`gateway.agents` has no `{name}`). Add "
        f"`gateway.agents.{name}` (a command or model agent) to delegate to it. Nothing "
        "was sent."
    )
