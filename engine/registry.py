"""The agent registry: names, capabilities and the secret each agent's hooks token is in."""

from __future__ import annotations

import os
from dataclasses import dataclass

from engine.config import AgentConfig, Config
from engine.errors import ConfigError, UnknownAgentError, did_you_mean
from engine.redact import register


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


def read_secret(*, env: str | None, file: os.PathLike[str] | str | None, what: str) -> str:
    """Read a token from an environment variable or a file; the value is never echoed."""
    if env:
        value = os.environ.get(env, "").strip()
        if value:
            register(value)
            return value
        if not file:
            raise ConfigError(
                f"{what}: environment variable `{env}` is not set (or empty). Export it "
                "with the gateway's hooks token, e.g. `export "
                f"{env}=...` (the value must match `hooks.token` of that gateway)."
            )
    if file:
        try:
            value = open(file, encoding="utf-8").read().strip()
        except OSError as exc:
            raise ConfigError(f"{what}: cannot read token file `{file}`: {exc.strerror}.") from exc
        if not value:
            raise ConfigError(f"{what}: token file `{file}` is empty.")
        register(value)
        return value
    raise ConfigError(f"{what}: no `token_env` or `token_file` configured.")
