"""Cluster health: is each agent's gateway up, and does it accept our hooks token?

Example::

    report = check_agents(cfg, timeout=3.0)
    print(format_table(report))        # one row per agent
    sys.exit(0 if report.ok else 1)

Each agent is probed concurrently, each probe bounded by ``timeout``:

1. ``GET {url}/health``: reachable or not, the latency, and the in-flight count when
   the gateway reports one (the local gateway does; OpenClaw does not).
2. ``POST {url}/hooks/agent`` with an empty message: a gateway answers 400 with a valid
   token and 401 without one, so the token is checked without starting a task.

Agents on the embedded gateway are probed on its companion process when a server or an
inbox runs one (``engine.serve.companion``); otherwise they have no standing process and
are reported as ``embedded``, which counts as up. Config checks that are only advice
(seed 001's port rule) come from ``config_warnings``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx

from engine.config import AgentConfig, Config
from engine.errors import ConfigError
from engine.redact import redact
from engine.retry import json_body

#: Seed 001: OpenClaw listens on port N and N+3, so gateways on one host need 4 apart.
PORT_SPACING = 4
#: Longest probe of one agent by default, in seconds.
DEFAULT_TIMEOUT = 5.0
#: At most this many agents are probed at once.
MAX_PARALLEL = 16

# States of one agent, worst last.
UP = "up"  # /health answered and the token was accepted
EMBEDDED = "embedded"  # runs on the embedded gateway, started per command: nothing to probe
DEGRADED = "degraded"  # reachable, but /health or the token check gave an unexpected answer
BAD_TOKEN = "bad-token"  # reachable, but the hooks token was refused (401/403) or missing
DOWN = "down"  # no answer: connection refused or timed out

_OK_STATES = (UP, EMBEDDED)


@dataclass(frozen=True)
class AgentHealth:
    """What a probe of one agent found."""

    agent: str
    url: str
    state: str
    health: str  # "ok", "HTTP 503", "unreachable: ...", "-"
    token: str  # "accepted", "rejected (401)", "not set: ...", "-"
    latency_ms: float | None = None
    inflight: int | None = None
    detail: str = ""

    @property
    def ok(self) -> bool:
        """True when the agent can take work."""
        return self.state in _OK_STATES


@dataclass(frozen=True)
class HealthReport:
    """Every agent's health, in registry order, and config advice."""

    agents: tuple[AgentHealth, ...]
    warnings: tuple[str, ...] = field(default_factory=tuple)

    @property
    def ok(self) -> bool:
        """True when every agent is up."""
        return all(a.ok for a in self.agents)

    def as_dict(self) -> dict[str, Any]:
        """JSON form: ``{"ok", "agents": [...], "warnings": [...]}``."""
        return {
            "ok": self.ok,
            "agents": [asdict(a) for a in self.agents],
            "warnings": list(self.warnings),
        }


def check_agents(
    cfg: Config,
    *,
    names: list[str] | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    client: httpx.Client | None = None,
) -> HealthReport:
    """Probe the agents ``names`` (default: all) concurrently; see the module docstring."""
    chosen = list(names or cfg.agents)
    unknown = [n for n in chosen if n not in cfg.agents]
    if unknown:
        from engine.registry import Registry

        Registry.from_config(cfg).get(unknown[0])
    own = client is None
    http = client or httpx.Client(timeout=httpx.Timeout(timeout), follow_redirects=False)
    try:
        workers = max(1, min(MAX_PARALLEL, len(chosen)))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="health") as pool:
            results = list(
                pool.map(lambda n: probe_agent(cfg, cfg.agents[n], http, timeout), chosen)
            )
    finally:
        if own:
            http.close()
    return HealthReport(tuple(results), tuple(config_warnings(cfg)))


def probe_agent(
    cfg: Config,
    agent: AgentConfig,
    http: httpx.Client,
    timeout: float,
    *,
    clock: Callable[[], float] = time.monotonic,
) -> AgentHealth:
    """Probe one agent: ``/health`` then the empty-message token check."""
    where = _gateway_of(cfg, agent)
    if where is None:
        return AgentHealth(agent.name, "embedded", EMBEDDED, "-", "-", detail="embedded gateway")
    url, token_env, token_file = where
    started = clock()
    try:
        resp = http.get(f"{url}/health", timeout=timeout)
    except httpx.TimeoutException:
        return AgentHealth(agent.name, url, DOWN, f"no answer in {timeout:g} s", "-")
    except httpx.TransportError as exc:
        return AgentHealth(agent.name, url, DOWN, f"unreachable: {_reason(exc)}", "-")
    latency = round((clock() - started) * 1000.0, 1)
    health = "ok" if resp.status_code == 200 else f"HTTP {resp.status_code}"
    inflight = _inflight(resp)
    token, state, detail = _check_token(agent, url, http, timeout, token_env, token_file)
    if state == UP and health != "ok":
        state = DEGRADED
    return AgentHealth(agent.name, url, state, health, token, latency, inflight, detail)


def config_warnings(cfg: Config) -> list[str]:
    """Advice about the registry: gateways on one host closer than ``PORT_SPACING`` ports."""
    seen: dict[tuple[str, int], str] = {}
    for name, agent in cfg.agents.items():
        where = _host_port(agent.url)
        if where is not None and where not in seen:
            seen[where] = name
    if cfg.gateway is not None and not cfg.gateway.embedded and cfg.gateway.port:
        seen.setdefault((_norm_host(cfg.gateway.host), cfg.gateway.port), "the local gateway")
    warnings: list[str] = []
    ports = sorted(seen.items())
    for i, ((host, port), name) in enumerate(ports):
        for (host2, port2), name2 in ports[i + 1 :]:
            if host2 == host and 0 < port2 - port < PORT_SPACING:
                warnings.append(
                    f"`{name}` ({host}:{port}) and `{name2}` ({host2}:{port2}) are "
                    f"{port2 - port} port(s) apart: an OpenClaw gateway also uses port N+3 "
                    f"(seed 001), so keep gateways on one host at least {PORT_SPACING} apart."
                )
    return warnings


def format_table(report: HealthReport) -> str:
    """The report as an aligned text table, then the warnings."""
    header = ("AGENT", "STATE", "URL", "HEALTH", "TOKEN", "LATENCY", "IN-FLIGHT")
    rows = [header]
    for a in report.agents:
        rows.append(
            (
                a.agent,
                a.state,
                a.url,
                a.health,
                a.token,
                f"{a.latency_ms:.0f} ms" if a.latency_ms is not None else "-",
                str(a.inflight) if a.inflight is not None else "-",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    down = [a.agent for a in report.agents if not a.ok]
    embedded = sum(1 for a in report.agents if a.state == EMBEDDED)
    lines.append(
        f"{len(report.agents) - len(down)}/{len(report.agents)} up"
        + (f" ({embedded} embedded)" if embedded else "")
        + (f"; not up: {', '.join(down)}" if down else "")
    )
    lines.extend(f"warning: {w}" for w in report.warnings)
    return redact("\n".join(lines))


# -- helpers ------------------------------------------------------------------------------


def _gateway_of(cfg: Config, agent: AgentConfig) -> tuple[str, str | None, Any] | None:
    """(url, token_env, token_file) of the agent's gateway; None for the embedded one."""
    if not agent.is_local:
        return agent.url, agent.token_env, agent.token_file
    gw = cfg.gateway
    if gw is None:
        return None
    if gw.embedded:
        return _companion_of(cfg)
    host = "127.0.0.1" if gw.host in ("0.0.0.0", "", "::") else gw.host
    return f"http://{host}:{gw.port}", gw.token_env, gw.token_file


def _companion_of(cfg: Config) -> tuple[str, str | None, Any] | None:
    """The embedded gateway's companion process when one runs (``orchestrate serve`` or
    ``inbox discord`` started it: ``<handoffs>/.serve/gateway.json``), else None."""
    import json

    from engine.serve.companion import alive, state_dir

    gw = cfg.gateway
    assert gw is not None
    folder = state_dir(cfg)
    try:
        info = json.loads((folder / "gateway.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(info, dict) or not alive(int(info.get("pid") or 0)):
        return None
    if gw.token_env or gw.token_file:
        return str(info.get("url")), gw.token_env, gw.token_file
    return str(info.get("url")), None, folder / "gateway.token"


def _check_token(
    agent: AgentConfig,
    url: str,
    http: httpx.Client,
    timeout: float,
    token_env: str | None,
    token_file: Any,
) -> tuple[str, str, str]:
    """(token column, state, detail) from a POST with an empty message."""
    from engine.registry import read_secret

    try:
        token = read_secret(env=token_env, file=token_file, what=f"agent `{agent.name}`")
    except ConfigError as exc:
        source = f"`{token_env}`" if token_env else f"`{token_file}`"
        return f"not set ({source})", BAD_TOKEN, redact(exc.message)
    body: dict[str, Any] = {"message": "", "name": "orchestrate agents status"}
    if agent.agent_id or agent.is_local:
        body["agentId"] = agent.agent_id or agent.name
    try:
        resp = http.post(
            f"{url}/hooks/agent",
            json=body,
            headers={"Authorization": f"Bearer {token}"},
            timeout=timeout,
        )
    except httpx.TimeoutException:
        return "no answer", DEGRADED, f"the token check got no answer in {timeout:g} s"
    except httpx.TransportError as exc:
        return "no answer", DEGRADED, f"the token check failed: {_reason(exc)}"
    code = resp.status_code
    if code == 400:
        return "accepted", UP, ""
    if code in (401, 403):
        source = f"`{token_env}`" if token_env else f"`{token_file}`"
        return (
            f"rejected ({code})",
            BAD_TOKEN,
            f"the gateway refused the token from {source}: it must match `hooks.token`",
        )
    if code == 404:
        return "no hooks (404)", DEGRADED, "`/hooks/agent` not found: set `hooks.enabled: true`"
    if code == 429:
        return "throttled (429)", DEGRADED, "too many failed authentications; try in a minute"
    if code == 200:
        return "accepted (200)", DEGRADED, "the gateway accepted an empty message"
    return f"HTTP {code}", DEGRADED, "unexpected answer to the token check"


def _inflight(resp: httpx.Response) -> int | None:
    """The in-flight count ``/health`` reports (the gateway's total), if it reports one."""
    data = json_body(resp)
    total = data.get("inflight") if isinstance(data, dict) else None
    if isinstance(total, int) and not isinstance(total, bool):
        return total
    return None


def _reason(exc: Exception) -> str:
    text = str(exc) or type(exc).__name__
    return "connection refused" if "refused" in text.lower() else redact(text)[:120]


def _norm_host(host: str) -> str:
    return "127.0.0.1" if host in ("localhost", "0.0.0.0", "", "::", "::1") else host


def _host_port(url: str) -> tuple[str, int] | None:
    try:
        split = urlsplit(url)
        port = split.port
    except ValueError:
        return None
    if not split.hostname or port is None:
        return None
    return _norm_host(split.hostname), port
