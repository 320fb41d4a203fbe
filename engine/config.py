"""Loading and validating ``orchestrator.yaml`` into frozen settings.

Example::

    cfg = load_config("examples/quickstart/orchestrator.yaml")
    cfg.agents["webster"].timeout      # 120.0
    cfg.handoffs_dir                   # absolute Path, relative to the config file
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.errors import ConfigError, did_you_mean

CONFIG_NAME = "orchestrator.yaml"
CONFIG_ENV = "ORCHESTRATOR_CONFIG"
LOCAL_URL = "local"
#: Longest timeout, grace or wait accepted anywhere (a week); the schemas say the same.
MAX_SECONDS = 7 * 24 * 3600

#: Seed 004's delegation matrix, used when the config has no ``acl``.
DEFAULT_ACL: dict[str, tuple[str, ...]] = {
    "manager": ("*",),
    "tech-lead": ("webster", "nx-expert", "study-builder", "secretary"),
    "optimizer": ("webster", "study-builder", "secretary"),
}


@dataclass(frozen=True)
class RetryPolicy:
    """Backoff for transient hook failures; seed 002's 2, 4, 8, 16, 32 s plus jitter.

    Example: ``RetryPolicy(delays=(0.1, 0.2), jitter=0.0)`` for fast tests.
    """

    delays: tuple[float, ...] = (2.0, 4.0, 8.0, 16.0, 32.0)
    jitter: float = 0.2
    request_timeout: float = 10.0


@dataclass(frozen=True)
class AgentConfig:
    """One registry entry: where an agent's gateway is and how to reach it."""

    name: str
    url: str
    token_env: str | None = None
    token_file: Path | None = None
    agent_id: str | None = None
    capabilities: tuple[str, ...] = ()
    model: str | None = None
    thinking: str | None = None
    channel: str | None = None
    timeout: float | None = None
    send_session_key: bool = False
    deliver: bool | None = None
    max_concurrent: int | None = None
    description: str | None = None
    repair_attempts: int | None = None
    wait_for_completion: bool | None = None
    heartbeat_timeout: float | None = None
    #: ``url: local`` without a ``gateway.agents`` entry: the agent only calls others
    #: (``--caller NAME``); delegating *to* it is refused, before anything is sent.
    caller_only: bool = False

    @property
    def is_local(self) -> bool:
        """True when the agent lives on the local gateway."""
        return self.url == LOCAL_URL


@dataclass(frozen=True)
class GatewayAgentConfig:
    """An agent hosted by the local gateway (kind ``command``: an argv run per task)."""

    name: str
    kind: str
    argv: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)
    timeout: float | None = None
    cwd: Path | None = None
    base_url: str | None = None
    model: str | None = None
    api_key_env: str | None = None
    thinking: str | None = None
    system_prompt: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    kill_after: float | None = None
    fallback_handoff: bool = True


@dataclass(frozen=True)
class GatewayConfig:
    """The local gateway: its address, its token source and the agents it hosts."""

    embedded: bool = False
    host: str = "127.0.0.1"
    port: int = 0
    token_env: str | None = None
    token_file: Path | None = None
    workspaces_dir: Path | None = None
    agents: dict[str, GatewayAgentConfig] = field(default_factory=dict)
    kill_after: float | None = None
    #: An embedded gateway leaves agents still running when its command exits to
    #: watchdogs (their late answers are merged) instead of killing them.
    detach_on_exit: bool = True
    #: Finished task workspaces kept per agent (oldest removed first); None keeps all.
    workspace_retention: int | None = 100


@dataclass(frozen=True)
class Config:
    """The whole ``orchestrator.yaml``, validated, with paths made absolute."""

    path: Path | None
    handoffs_dir: Path
    agents: dict[str, AgentConfig]
    acl: dict[str, tuple[str, ...]]
    receiver_url: str | None = None
    message_template: Path | None = None
    deliver: bool = False
    default_timeout: float = 120.0
    handoff_grace: float = 1.0
    handoff_key: str = "required"
    max_handoff_bytes: int = 1024 * 1024
    repair_attempts: int = 1
    wait_for_completion: bool = True
    validator: str | None = None
    max_depth: int = 2
    workflow_dirs: tuple[Path, ...] = ()
    retry: RetryPolicy = RetryPolicy()
    gateway: GatewayConfig | None = None
    pool: dict[str, Any] = field(default_factory=dict)
    models: dict[str, Any] = field(default_factory=dict)
    channels: dict[str, Any] = field(default_factory=dict)
    operations: dict[str, Any] = field(default_factory=dict)
    #: The ``store:`` URL as written (``file://…``); None: ``file://<handoffs_dir>``.
    #: ``engine.store.open_store`` resolves it; a file store's directory is ``handoffs_dir``.
    store: str | None = None
    #: The ``serve:`` section, as written (``engine.serve.settings`` reads it).
    serve: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """How messages name this config."""
        return str(self.path) if self.path else "<built-in config>"


def find_config(explicit: str | Path | None = None) -> Path:
    """Return the config path: ``explicit``, else $ORCHESTRATOR_CONFIG, else ./orchestrator.yaml."""
    if explicit:
        candidate = Path(explicit)
        source = "--config"
    elif os.environ.get(CONFIG_ENV):
        candidate = Path(os.environ[CONFIG_ENV])
        source = f"${CONFIG_ENV}"
    else:
        candidate = Path.cwd() / CONFIG_NAME
        if not os.path.lexists(candidate):
            raise ConfigError(
                f"no `{CONFIG_NAME}` in {Path.cwd()}: pass `--config FILE`, set "
                f"`{CONFIG_ENV}`, or copy `examples/quickstart/{CONFIG_NAME}` here."
            )
        return candidate
    if not os.path.lexists(candidate):
        raise ConfigError(_missing_config(candidate, source), path=candidate)
    if candidate.is_dir():
        raise ConfigError(
            f"config file `{candidate}` (from {source}) is a directory: give the YAML file "
            f"itself, e.g. `{candidate / CONFIG_NAME}`.",
            path=candidate,
        )
    return candidate


def _missing_config(candidate: Path, source: str) -> str:
    """The paragraph for a config path that does not exist: a near miss among the YAML
    files beside it, else where to start one."""
    try:
        beside = [p.name for p in candidate.parent.iterdir() if p.suffix in (".yaml", ".yml")]
    except OSError:
        beside = []
    near = did_you_mean(candidate.name, beside)
    if near:
        return f"config file `{candidate}` (from {source}) does not exist{near}"
    return (
        f"config file `{candidate}` (from {source}) does not exist: check the path, or "
        f"start from `examples/quickstart/{CONFIG_NAME}` (the README's Configuration "
        "section describes every key)."
    )


def load_config(path: str | Path | None = None) -> Config:
    """Find, parse and validate the config; every problem of the file is reported at once."""
    from engine.yamlio import read_yaml

    cfg_path = find_config(path)
    raw, duplicates, _ = read_yaml(cfg_path, error=ConfigError, what="config file")
    cfg = config_from_dict(raw, path=cfg_path, extra_problems=duplicates)
    _check_handoffs_dir(cfg, raw)
    # Every secret it names is masked, used by this command or not: engine.redact reads
    # them before it masks anything (a check that prints no outside text loads no redact).
    UNMASKED.append(cfg)
    return cfg


def _check_handoffs_dir(cfg: Config, raw: dict[str, Any]) -> None:
    """ConfigError (exit 2) when the records' directory, or a directory above it, exists
    but is not a directory: every command would otherwise fail its own way (ENOTDIR on a
    write, "no records" on a read, a pool under the file). Checked once, where the config
    is loaded; a missing directory is fine (it is made on first write)."""
    where = cfg.handoffs_dir
    blocker = next(
        (p for p in (where, *where.parents) if os.path.lexists(p) and not p.is_dir()), None
    )
    if blocker is None:
        return
    key = "store" if isinstance(raw.get("store"), str) else "handoffs_dir"
    what = "a file" if blocker.is_file() else "not a directory"
    if blocker == where:
        said = f"names `{where}`, which is {what}"
    else:
        said = f"names `{where}`, under `{blocker}`, which is {what}"
    raise ConfigError(
        f"`{key}` of `{cfg.label}` {said}: records go into a directory. Point `{key}` at "
        "a directory (it is made if missing), or move the file away.",
        path=cfg.path,
    )


#: Configs loaded whose secrets ``engine.redact`` has not read yet (it takes them before
#: its first mask: ``engine.redact.register_config``).
UNMASKED: list[Config] = []


def config_from_dict(
    raw: Any, *, path: Path | None = None, extra_problems: list[str] | None = None
) -> Config:
    """Validate a parsed config mapping against the schema and build ``Config``."""
    from engine.schemas import schema_problems
    from engine.yamlio import explain_types

    label = str(path) if path else "config"
    if not isinstance(raw, dict):
        raise ConfigError(f"`{label}` must be a mapping with at least an `agents:` key.", path=path)
    problems = list(extra_problems or [])
    problems += explain_types(schema_problems("config", raw), raw)
    problems += _semantic_problems(raw)
    if problems:
        raise ConfigError(f"`{label}` is not a valid config:", path=path, problems=problems)
    base = path.parent.resolve() if path else Path.cwd()

    def rel(value: str | None) -> Path | None:
        if value is None:
            return None
        p = Path(os.path.expanduser(value))
        return p if p.is_absolute() else (base / p)

    agents = {name: _agent_config(name, spec, rel) for name, spec in raw["agents"].items()}
    gateway = _gateway_config(raw["gateway"], rel) if "gateway" in raw else None
    if gateway is not None:  # local agents the gateway does not host only call others
        agents = {
            n: a
            if not a.is_local or (a.agent_id or n) in gateway.agents
            else dataclasses.replace(a, caller_only=True)
            for n, a in agents.items()
        }
    retry_raw = raw.get("retry", {})
    retry = RetryPolicy(
        delays=tuple(float(d) for d in retry_raw.get("delays", RetryPolicy.delays)),
        jitter=float(retry_raw.get("jitter", RetryPolicy.jitter)),
        request_timeout=float(retry_raw.get("request_timeout", RetryPolicy.request_timeout)),
    )
    acl = {k: tuple(v) for k, v in raw["acl"].items()} if "acl" in raw else dict(DEFAULT_ACL)
    template = rel(raw.get("message_template"))
    return Config(
        path=path.resolve() if path else None,
        handoffs_dir=_handoffs_dir(raw, base, rel),
        agents=agents,
        acl=acl,
        receiver_url=raw.get("receiver_url"),
        message_template=template,
        deliver=bool(raw.get("deliver", False)),
        default_timeout=float(raw.get("default_timeout", 120.0)),
        handoff_grace=float(raw.get("handoff_grace", 1.0)),
        handoff_key=str(raw.get("handoff_key", "required")),
        max_handoff_bytes=int(raw.get("max_handoff_bytes", 1024 * 1024)),
        repair_attempts=int(raw.get("repair_attempts", 1)),
        wait_for_completion=bool(raw.get("wait_for_completion", True)),
        validator=raw.get("validator"),
        max_depth=int(raw.get("max_depth", 2)),
        workflow_dirs=tuple(p for p in (rel(d) for d in raw.get("workflow_dirs", [])) if p),
        retry=retry,
        gateway=gateway,
        pool=dict(raw.get("pool", {})),
        models=dict(raw.get("models", {})),
        channels=dict(raw.get("channels", {})),
        operations=dict(raw.get("operations", {})),
        store=raw.get("store"),
        serve=dict(raw.get("serve", {})),
    )


def _float_or_none(spec: dict[str, Any], key: str) -> float | None:
    return float(spec[key]) if key in spec else None


def _as_given(spec: dict[str, Any], *keys: str) -> dict[str, Any]:
    """The entries ``keys`` of a schema-checked ``spec`` taken as they are (None: absent)."""
    return {key: spec.get(key) for key in keys}


def _agent_config(
    name: str, spec: dict[str, Any], rel: Callable[[Any], Path | None]
) -> AgentConfig:
    """One ``agents.NAME`` entry (schema-checked) as an AgentConfig."""
    return AgentConfig(
        name=name,
        url=str(spec.get("url", LOCAL_URL)).rstrip("/"),
        token_file=rel(spec.get("token_file")),
        capabilities=tuple(spec.get("capabilities", ())),
        timeout=_float_or_none(spec, "timeout"),
        send_session_key=bool(spec.get("send_session_key", False)),
        heartbeat_timeout=_float_or_none(spec, "heartbeat_timeout"),
        **_as_given(
            spec,
            "token_env",
            "agent_id",
            "model",
            "thinking",
            "channel",
            "deliver",
            "max_concurrent",
            "description",
            "repair_attempts",
            "wait_for_completion",
        ),
    )


def _gateway_agent_config(
    name: str, spec: dict[str, Any], rel: Callable[[Any], Path | None]
) -> GatewayAgentConfig:
    """One ``gateway.agents.NAME`` entry (schema-checked) as a GatewayAgentConfig."""
    return GatewayAgentConfig(
        name=name,
        kind=spec["kind"],
        argv=tuple(spec.get("argv", ())),
        env=dict(spec.get("env", {})),
        timeout=_float_or_none(spec, "timeout"),
        cwd=rel(spec.get("cwd")),
        kill_after=_float_or_none(spec, "kill_after"),
        fallback_handoff=bool(spec.get("fallback_handoff", True)),
        **_as_given(
            spec,
            "base_url",
            "model",
            "api_key_env",
            "thinking",
            "system_prompt",
            "max_tokens",
            "temperature",
        ),
    )


def _gateway_config(gw: dict[str, Any], rel: Callable[[Any], Path | None]) -> GatewayConfig:
    """The ``gateway:`` section (schema-checked) as a GatewayConfig."""
    return GatewayConfig(
        embedded=bool(gw.get("embedded", False)),
        host=gw.get("host", "127.0.0.1"),
        port=int(gw.get("port", 0)),
        token_env=gw.get("token_env"),
        token_file=rel(gw.get("token_file")),
        workspaces_dir=rel(gw.get("workspaces_dir")),
        agents={
            name: _gateway_agent_config(name, spec, rel)
            for name, spec in gw.get("agents", {}).items()
        },
        kill_after=_float_or_none(gw, "kill_after"),
        detach_on_exit=bool(gw.get("detach_on_exit", True)),
        workspace_retention=gw.get("workspace_retention", 100),
    )


#: Words that are `orchestrate` subcommands: an agent of that name could not be reached by
#: `orchestrate AGENT TASK` (tests pin that every subcommand is listed).
RESERVED_AGENT_NAMES = frozenset(
    {
        "delegate",
        "handoff",
        "answer",
        "show",
        "tree",
        "pool",
        "store",
        "gateway",
        "agent-skill",
        "agents",
        "inbox",
        "serve",
        "help",
        "version",
        "workflow",
        "metrics",
        "status",
    }
)


def url_problem(
    url: object, key: str, *, schemes: tuple[str, ...] = ("http", "https")
) -> str | None:
    """Why ``url`` cannot be used for ``key`` (scheme, host, port), or None when it can."""
    from urllib.parse import urlsplit

    if not isinstance(url, str):
        return None  # the schema reports the type
    wanted = " or ".join(f"{s}://" for s in schemes)
    if any(c.isspace() or ord(c) < 32 for c in url):
        return f"`{key}` contains whitespace or a control character; write the URL alone."
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        return f"`{key}` is not a valid URL ({exc}); expected e.g. `http://127.0.0.1:18789`."
    if parts.scheme not in schemes:
        return f"`{key}` must start with {wanted}; expected e.g. `http://127.0.0.1:18789`."
    if not parts.hostname:
        return f"`{key}` has no host; expected e.g. `http://127.0.0.1:18789`."
    if port == 0:
        return f"`{key}` has port 0; give the port the service listens on (1-65535)."
    return None


def _mapping(raw: dict[str, Any], key: str) -> dict[str, Any]:
    value = raw.get(key)
    return value if isinstance(value, dict) else {}


def _handoffs_dir(raw: dict[str, Any], base: Path, rel: Any) -> Path:
    """The handoffs directory: the ``store:`` URL's (``file://``), else ``handoffs_dir``."""
    if isinstance(raw.get("store"), str) and raw["store"].startswith("file:"):
        from engine.store import store_path

        return store_path(raw["store"], base)
    return Path(rel(raw.get("handoffs_dir", "handoffs")) or base).resolve()


def _semantic_problems(raw: dict[str, Any]) -> list[str]:
    """Cross-key checks the schema cannot express; reported together with schema problems.

    Every value is shape-checked before use: the schema reports a wrong shape, this
    function only skips it.
    """
    agents = _mapping(raw, "agents")
    names = {str(n) for n in agents}
    gw = raw.get("gateway") if isinstance(raw.get("gateway"), dict) else None
    gw_agents_map = _mapping(gw or {}, "agents")
    problems = _store_problems(raw)
    for name in sorted(names & RESERVED_AGENT_NAMES):
        problems.append(
            f"`agents.{name}`: `{name}` is an `orchestrate` subcommand, so "
            f"`orchestrate {name} TASK` could not reach the agent; rename it."
        )
    for name, spec in agents.items():
        if isinstance(spec, dict):
            problems += _agent_problems(name, spec, gw, set(gw_agents_map))
    for name, spec in gw_agents_map.items():
        if isinstance(spec, dict):
            problems += _gateway_agent_problems(name, spec)
    for key, where in (
        ("receiver_url", raw),
        ("base_url", _mapping(raw, "channels")),
    ):
        bad = url_problem(where.get(key), key if where is raw else f"channels.{key}")
        if bad:
            problems.append(bad)
    problems += _acl_problems(_mapping(raw, "acl"), names)
    default_agent = _mapping(raw, "channels").get("default_agent")
    if isinstance(default_agent, str) and default_agent not in names:
        problems.append(
            f"`channels.default_agent` `{default_agent}` is not an agent"
            f"{did_you_mean(default_agent, names)}"
        )
    validator = raw.get("validator")
    if isinstance(validator, str) and validator not in names:
        problems.append(
            f"`validator` `{validator}` is not an agent{did_you_mean(validator, names)}"
        )
    pool = _mapping(raw, "pool")
    lo, hi = pool.get("min_tokens", 1), pool.get("max_tokens", 5)
    if isinstance(lo, int) and isinstance(hi, int) and lo > hi:
        problems.append("`pool.min_tokens` is larger than `pool.max_tokens`.")
    problems += _pool_load_problems(pool)
    problems += _interpolation_problems(raw)
    problems += _placeholder_problems(raw)
    problems += _empty_path_problems(raw)
    return problems


#: The ``{placeholders}`` each templated value may hold, and what fills them: the
#: ``operations.systemd`` templates (``engine.systemd``) and ``operations.logs``
#: (``engine.opslog``; ``{name}`` is a synonym of ``{agent}``, as the systemd keys beside it
#: call the agent). Checked here, once, at load: a template that is not would be written
#: literally (one log file ``{agnt}.log`` for every unit).
TEMPLATE_PLACEHOLDERS: dict[str, tuple[tuple[str, ...], str]] = {
    "operations.systemd": (
        ("name", "port"), "the gateway's agent, or `port<N>` for a shared gateway, and its port"
    ),
    "operations.logs": (("agent", "name"), "both the agent's name"),
}
#: ``{word}``, not systemd's own ``${VAR}`` (left to systemd in ``ExecStart``).
PLACEHOLDER = re.compile(r"(?<!\$)\{([^{}]*)\}")


def _template_values(raw: dict[str, Any]) -> Iterator[tuple[str, Any, str]]:
    """``(key, value, group)`` of every templated string value; ``group`` is its
    ``TEMPLATE_PLACEHOLDERS`` key. Another shape is the schema's problem."""
    ops = _mapping(raw, "operations")
    for key, value in _mapping(ops, "systemd").items():
        yield f"operations.systemd.{key}", value, "operations.systemd"
    logs = ops.get("logs")
    if isinstance(logs, dict):
        for name, value in logs.items():
            yield f"operations.logs.{name}", value, "operations.logs"
    else:
        yield "operations.logs", logs, "operations.logs"


def _placeholder_problems(raw: dict[str, Any]) -> list[str]:
    """A ``{word}`` in a template that nothing fills (``TEMPLATE_PLACEHOLDERS``)."""
    problems: list[str] = []
    for key, value, group in _template_values(raw):
        if not isinstance(value, str):
            continue
        known, meaning = TEMPLATE_PLACEHOLDERS[group]
        unknown = sorted({m for m in PLACEHOLDER.findall(value) if m not in known})
        if unknown:
            named = ", ".join(f"`{{{u}}}`" for u in unknown)
            listed = ", ".join(f"`{{{k}}}`" for k in known)
            problems.append(
                f"`{key}` has the unknown placeholder{'s' * (len(unknown) > 1)} {named}; "
                f"the known ones are {listed} ({meaning})."
            )
    return problems


#: ``$NAME`` or ``${...}``: shell-style interpolation, which the config does not do.
_INTERPOLATION = re.compile(r"\$\{[^}]*\}?|\$[A-Za-z_][A-Za-z0-9_]*")


def _path_and_url_values(raw: dict[str, Any]) -> Iterator[tuple[str, str, str]]:
    """``(key, value, kind)`` of every path (``kind`` "path") and URL ("URL") the config
    gives as a string; a value of another shape is the schema's problem."""
    gw = _mapping(raw, "gateway")
    systemd = _mapping(_mapping(raw, "operations"), "systemd")
    top: list[tuple[str, Any, str]] = [
        ("handoffs_dir", raw.get("handoffs_dir"), "path"),
        ("message_template", raw.get("message_template"), "path"),
        ("receiver_url", raw.get("receiver_url"), "URL"),
        ("channels.base_url", _mapping(raw, "channels").get("base_url"), "URL"),
        ("gateway.token_file", gw.get("token_file"), "path"),
        ("gateway.workspaces_dir", gw.get("workspaces_dir"), "path"),
        ("serve.tokens_file", _mapping(raw, "serve").get("tokens_file"), "path"),
        ("operations.systemd.state_dir", systemd.get("state_dir"), "path"),
        ("operations.systemd.environment_file", systemd.get("environment_file"), "path"),
    ]
    store = raw.get("store")
    if isinstance(store, str) and store.startswith("file:"):
        top.append(("store", store, "path"))
    dirs = raw.get("workflow_dirs")
    for i, d in enumerate(dirs if isinstance(dirs, list) else []):
        top.append((f"workflow_dirs[{i}]", d, "path"))
    for name, spec in _mapping(raw, "agents").items():
        if isinstance(spec, dict):
            top.append((f"agents.{name}.url", spec.get("url"), "URL"))
            top.append((f"agents.{name}.token_file", spec.get("token_file"), "path"))
    for name, spec in _mapping(gw, "agents").items():
        if isinstance(spec, dict):
            top.append((f"gateway.agents.{name}.cwd", spec.get("cwd"), "path"))
            top.append((f"gateway.agents.{name}.base_url", spec.get("base_url"), "URL"))
    logs = _mapping(raw, "operations").get("logs")
    if isinstance(logs, dict):
        top += [(f"operations.logs.{k}", v, "path") for k, v in logs.items()]
    else:
        top.append(("operations.logs", logs, "path"))
    for key, value, kind in top:
        if isinstance(value, str):
            yield key, value, kind


def _interpolation_problems(raw: dict[str, Any]) -> list[str]:
    """A ``$NAME`` or ``${NAME}`` in a path or URL: the config is not interpolated, so it
    would be used literally (a directory named ``${HOME}``, a host ``${GW_HOST}``); a
    literal ``$`` in such a value is vanishingly rare, so it is refused. ``~`` is expanded
    (README, Configuration); secrets come from the ``*_env`` and ``*_file`` keys."""
    problems: list[str] = []
    for key, value, kind in _path_and_url_values(raw):
        found = _INTERPOLATION.search(value)
        if found is None:
            continue
        how = (
            "write the path out (a leading `~` is expanded; a relative path is relative "
            "to the config file)"
            if kind == "path"
            else "write the URL out"
        )
        problems.append(
            f"`{key}` is `{value}`: the config does not expand environment variables, so "
            f"`{found.group()}` would be used literally. {how[0].upper()}{how[1:]}; a "
            "secret comes from the environment through the `_env` keys (`token_env: NAME`, "
            "`api_key_env`, `password_env`)."
        )
    return problems


def _empty_path_problems(raw: dict[str, Any]) -> list[str]:
    """``handoffs_dir: ''`` (or blanks) would put records into the config's own directory."""
    value = raw.get("handoffs_dir")
    if isinstance(value, str) and not value.strip():
        return [
            "`handoffs_dir` is empty: give the directory records go to, e.g. "
            "`handoffs_dir: handoffs` (relative to the config file); leave the key out "
            "for that default."
        ]
    return []


def _pool_load_problems(pool: dict[str, Any]) -> list[str]:
    """The pool's load thresholds out of order (each unset one at its default: 2, 3, 5):
    ``load_low`` <= ``load_high`` <= ``emergency_load`` (docs/pool.md)."""
    if not {"load_low", "load_high", "emergency_load"} & pool.keys():
        return []  # the defaults are in order (and a check need not load the pool)
    from engine.pool.settings import PoolSettings

    def number(key: str, default: float) -> float | None:
        value = pool.get(key, default)
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return float(value) if ok else None  # a wrong type is the schema's problem

    low = number("load_low", PoolSettings.load_low)
    high = number("load_high", PoolSettings.load_high)
    emergency = number("emergency_load", PoolSettings.emergency_load)
    problems: list[str] = []
    if low is not None and high is not None and high < low:
        problems.append(
            f"`pool.load_high` ({high:g}) is smaller than `pool.load_low` ({low:g}): the pool "
            "grows below `load_low` and shrinks above `load_high`; swap them."
        )
    if high is not None and emergency is not None and emergency < high:
        problems.append(
            f"`pool.emergency_load` ({emergency:g}) is smaller than `pool.load_high` "
            f"({high:g}): emergency mode (no grants) would start before the pool shrinks; "
            "set it above `load_high`."
        )
    return problems


def _store_problems(raw: dict[str, Any]) -> list[str]:
    """A ``store:`` URL that cannot be used, or one given with ``handoffs_dir`` too."""
    if not isinstance(raw.get("store"), str):
        return []
    from engine.store import store_url_problem

    problem = store_url_problem(raw["store"])
    if problem is None and "handoffs_dir" in raw and raw["store"].startswith("file:"):
        problem = (
            "`store` and `handoffs_dir` both name where records go; keep one "
            f"(`store: file://{raw['handoffs_dir']}` says the same as `handoffs_dir`)."
        )
    return [problem] if problem else []


def _agent_problems(
    name: str, spec: dict[str, Any], gw: dict[str, Any] | None, gw_agents: set[str]
) -> list[str]:
    """An agent's URL: `local` needs the gateway to host it; a remote one needs a token."""
    url = spec.get("url", LOCAL_URL)
    if url == LOCAL_URL:
        if gw is None:
            return [
                f"`agents.{name}.url` is `local` (the default) but there is no `gateway:` "
                "section: add one, or give the agent's OpenClaw gateway URL."
            ]
        agent_id = spec.get("agent_id")
        if name in gw_agents or (isinstance(agent_id, str) and agent_id in gw_agents):
            return []
        near = did_you_mean(str(agent_id or name), gw_agents)
        if not near and not spec.get("capabilities") and not agent_id:
            return []  # a caller only (`--caller NAME`): delegating to it is refused
        return [
            f"`agents.{name}` runs on the local gateway but `gateway.agents` has no "
            f"`{agent_id or name}`{near or '.'} Add `gateway.agents.{agent_id or name}` "
            "for an agent others delegate to; an agent that only calls others "
            f"(`--caller {name}`) needs no gateway agent, but then has no `capabilities` "
            "or `agent_id`."
        ]
    bad = url_problem(url, f"agents.{name}.url")
    if bad:
        return [bad + " (or `local` for the local gateway)"]
    if "token_env" not in spec and "token_file" not in spec:
        return [
            f"`agents.{name}` needs `token_env` (the environment variable holding its "
            "hooks token) or `token_file`."
        ]
    return []


def _gateway_agent_problems(name: str, spec: dict[str, Any]) -> list[str]:
    """What a gateway agent of its ``kind`` lacks: `argv`, or `base_url` and `model`."""
    problems: list[str] = []
    if spec.get("kind") == "command" and not spec.get("argv"):
        problems.append(f"`gateway.agents.{name}` is a `command` agent and needs `argv`.")
    if spec.get("kind") == "openai":
        for key in ("base_url", "model"):
            if not spec.get(key):
                problems.append(f"`gateway.agents.{name}` is an `openai` agent and needs `{key}`.")
        bad = url_problem(spec.get("base_url") or None, f"gateway.agents.{name}.base_url")
        if bad:
            problems.append(bad)
    return problems


def _acl_problems(acl: dict[str, Any], names: set[str]) -> list[str]:
    """ACL entries that name agents the config does not have."""
    problems: list[str] = []
    for caller, targets in acl.items():
        if caller not in names:
            problems.append(f"`acl.{caller}` names an unknown agent{did_you_mean(caller, names)}")
        for t in targets if isinstance(targets, list) else []:
            if not isinstance(t, str) or t == "*" or t in names:
                continue
            if t.lower() in ("all", "any", "everyone", "*all*"):
                problems.append(
                    f"`acl.{caller}` lists `{t}`: to allow every agent write `'*'` "
                    f"(quoted), e.g. `{caller}: ['*']`, or `['*', '!manager']` for all but one."
                )
            elif t.startswith("!"):
                excluded = t[1:]
                if excluded not in names:
                    problems.append(
                        f"`acl.{caller}` excludes unknown agent `{excluded}` (`{t}`)"
                        f"{did_you_mean(excluded, names)}"
                    )
            else:
                problems.append(
                    f"`acl.{caller}` allows unknown agent `{t}`{did_you_mean(t, names)}"
                )
    return problems
