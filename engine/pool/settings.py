"""The pool's settings (the ``pool:`` section of ``orchestrator.yaml``) and its modes."""

from __future__ import annotations

import enum
import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.errors import ConfigError

if TYPE_CHECKING:
    from engine.config import Config

__all__ = ["DEFAULT_LEASE_TTL", "PoolMode", "PoolSettings", "system_load"]

#: How long a holder on another host keeps its token without renewing it (seconds).
DEFAULT_LEASE_TTL = 60.0


class PoolMode(enum.Enum):
    """Whether the pool grants tokens normally or is cooling down after overload."""

    NORMAL = "normal"  # tokens granted up to the current size
    EMERGENCY = "emergency"  # load passed `emergency_load`: size at minimum, no grants


@dataclass(frozen=True, kw_only=True)
class PoolSettings:
    """The ``pool:`` section of ``orchestrator.yaml``; defaults are seed 000's.

    Example::

        PoolSettings(dir=Path("/tmp/pool"), max_tokens=3, adaptive=False)
        PoolSettings.from_config(load_config("orchestrator.yaml"))
    """

    dir: Path
    min_tokens: int = 1
    max_tokens: int = 5
    load_low: float = 2.0
    load_high: float = 3.0
    adaptive: bool = True
    token_timeout: float = 300.0
    emergency_load: float = 5.0
    cooldown: float = 30.0
    queue_limit: int = 50
    hysteresis: int = 3
    sample_interval: float = 5.0
    lease_ttl: float = DEFAULT_LEASE_TTL
    enabled: bool = True
    #: The ``store:`` URL when it is a database shared by hosts (``postgresql://``):
    #: the pool's state is kept there instead of ``dir``. None: the file store in ``dir``.
    store: str | None = None

    def __post_init__(self) -> None:
        problems: list[str] = []
        for key in ("load_low", "load_high", "token_timeout", "emergency_load", "cooldown",
                    "sample_interval", "lease_ttl"):  # fmt: skip
            if math.isnan(getattr(self, key)):
                problems.append(f"`pool.{key}` must be a number, not NaN.")
        if self.min_tokens < 1:
            problems.append("`pool.min_tokens` must be at least 1.")
        if self.max_tokens < self.min_tokens:
            problems.append("`pool.max_tokens` must not be smaller than `pool.min_tokens`.")
        if self.load_high < self.load_low:
            problems.append("`pool.load_high` must not be smaller than `pool.load_low`.")
        if self.token_timeout <= 0:
            problems.append("`pool.token_timeout` must be more than 0 seconds.")
        if self.cooldown < 0 or self.sample_interval < 0:
            problems.append("`pool.cooldown` and `pool.sample_interval` must not be negative.")
        if self.lease_ttl <= 0:
            problems.append("`pool.lease_ttl` must be more than 0 seconds.")
        if self.queue_limit < 0:
            problems.append("`pool.queue_limit` must not be negative.")
        if self.hysteresis < 1:
            problems.append("`pool.hysteresis` must be at least 1.")
        if problems:
            raise ConfigError("invalid token pool settings:", problems=problems)

    @classmethod
    def from_config(cls, cfg: Config) -> PoolSettings:
        """Build settings from ``cfg.pool``; ``dir`` defaults to ``<handoffs_dir>/.pool``.

        A relative ``dir`` is taken relative to the config file's directory.
        """
        raw: dict[str, Any] = dict(cfg.pool or {})
        base = cfg.path.parent if cfg.path is not None else Path.cwd()
        if raw.get("dir"):
            pool_dir = Path(os.path.expanduser(str(raw["dir"])))
            if not pool_dir.is_absolute():
                pool_dir = base / pool_dir
        else:
            pool_dir = cfg.handoffs_dir / ".pool"
        kwargs: dict[str, Any] = {}
        casts: dict[str, Callable[[Any], Any]] = {
            "min_tokens": int,
            "max_tokens": int,
            "load_low": float,
            "load_high": float,
            "adaptive": bool,
            "token_timeout": float,
            "emergency_load": float,
            "cooldown": float,
            "queue_limit": int,
            "hysteresis": int,
            "sample_interval": float,
            "lease_ttl": float,
            "enabled": bool,
        }
        for key, cast in casts.items():
            if key in raw and raw[key] is not None:
                kwargs[key] = cast(raw[key])
        from engine.store import is_postgres_url

        if is_postgres_url(cfg.store):
            kwargs["store"] = cfg.store
        try:
            return cls(dir=pool_dir.resolve(), **kwargs)
        except ConfigError as exc:
            if cfg.path is None:
                raise
            raise ConfigError(
                f"`{cfg.path}`: invalid token pool settings:", problems=exc.problems
            ) from None

    def to_dict(self) -> dict[str, Any]:
        """The settings as JSON-ready values (``dir`` as a string)."""
        data = asdict(self)
        data["dir"] = str(self.dir)
        data.pop("store")  # not a `pool:` key: the status names the store's location
        return data


def system_load() -> float:
    """The host's 1-minute load average (the default load source)."""
    return os.getloadavg()[0]
