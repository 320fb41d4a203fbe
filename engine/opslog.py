"""Gateway log files: where each agent's gateway writes, and reading or following one.

Example (``orchestrator.yaml``)::

    operations:
      logs: ~/atomizer/logs/{agent}.log      # or a mapping: {webster: /var/log/webster.log}

``{agent}`` (or its synonym ``{name}``, as in ``operations.systemd``) is the agent whose
file it is; no other placeholder is accepted (``engine.config`` refuses one at load).

``orchestrate agents logs webster -f`` prints the last lines, then what is appended, until
Ctrl-C. A rotated or truncated file is reopened from its start. What it prints is
redacted (``engine.redact``, which knows every secret the loaded config names), so a
hooks token in a log line is masked, not only a ``Bearer`` one.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from engine.config import Config
from engine.errors import ConfigError, UsageError, did_you_mean
from engine.redact import redact

#: How often a followed file is checked for new text, in seconds.
FOLLOW_INTERVAL = 0.25
_CHUNK = 64 * 1024


def log_path(cfg: Config, agent: str, *, required: bool = True) -> Path | None:
    """The log file of ``agent``'s gateway (``gateway`` for the local gateway), or None
    when none is configured and ``required`` is false (else ``ConfigError``).

    - ``gateway`` with ``gateway.embedded: true``: the companion process of `orchestrate
      serve` / `inbox discord` writes ``<handoffs_dir>/.serve/gateway.log``
      (``engine.serve.companion``); otherwise (a standalone unit) ``operations.logs``.
    - Agents behind one gateway (the same host and port) share its log: the configured
      file of the first of them in the registry that has one, which is the file that
      gateway's unit appends to (``engine.systemd``).

    Raises ``UsageError`` for an unknown agent.
    """
    spec = (cfg.operations or {}).get("logs")
    base = cfg.path.parent if cfg.path else Path.cwd()
    if agent != "gateway" and agent not in cfg.agents:
        raise UsageError(
            f"unknown agent `{agent}`{did_you_mean(agent, list(cfg.agents)) or '.'} "
            f"Known agents: {', '.join(cfg.agents)}."
        )
    if agent == "gateway" and cfg.gateway is not None and cfg.gateway.embedded:
        return cfg.handoffs_dir / ".serve" / "gateway.log"
    raw: str | None = None
    for name in _sharers(cfg, agent):
        if isinstance(spec, str):
            raw = spec
        elif isinstance(spec, dict) and name in spec:
            raw = str(spec[name])
        if raw is not None:  # placeholders checked at load (config.TEMPLATE_PLACEHOLDERS)
            raw = raw.replace("{agent}", name).replace("{name}", name)
            break
    if raw is None:
        if not required:
            return None
        raise ConfigError(
            f"no log file configured for `{agent}` in `{cfg.label}`: set `operations.logs` "
            "to a path with `{agent}` (e.g. `~/atomizer/logs/{agent}.log`) or to a mapping "
            f"`{{{agent}: /path/to/file.log}}`.",
            path=cfg.path,
        )
    path = Path(os.path.expanduser(raw))
    return path if path.is_absolute() else base / path


def _sharers(cfg: Config, agent: str) -> list[str]:
    """``agent`` and the agents behind the same gateway URL (host and port), in registry
    order; just ``[agent]`` for ``gateway``, a local agent, or a URL of its own."""
    from urllib.parse import urlsplit

    def where(name: str) -> tuple[str | None, int | None] | None:
        a = cfg.agents.get(name)
        if a is None or a.is_local:
            return None
        try:
            split = urlsplit(a.url)
            return split.hostname, split.port
        except ValueError:
            return None

    mine = where(agent)
    if mine is None or mine[1] is None:
        return [agent]
    return [name for name in cfg.agents if where(name) == mine]


def tail(path: Path, lines: int) -> list[str]:
    """The last ``lines`` lines of ``path`` (redacted)."""
    try:
        with open(path, "rb") as fh:
            size = fh.seek(0, os.SEEK_END)
            start = max(0, size - _CHUNK * 4)
            fh.seek(start)
            data = fh.read()
    except FileNotFoundError:
        if path.parent.name == ".serve":  # the companion gateway's (log_path)
            raise UsageError(
                f"log file `{path}` does not exist (yet): it appears once `orchestrate serve` "
                "or `orchestrate inbox discord` starts the embedded gateway."
            ) from None
        raise UsageError(
            f"log file `{path}` does not exist (yet): is the gateway running with its output "
            "going there (`StandardOutput=append:` in its unit)?"
        ) from None
    except OSError as exc:
        raise UsageError(f"cannot read log file `{path}`: {exc.strerror or exc}.") from exc
    text = data.decode("utf-8", "replace").splitlines()
    if start > 0 and text:
        text = text[1:]  # the first line may be cut
    return [redact(line) for line in text[-lines:]] if lines > 0 else []


def follow(
    path: Path,
    *,
    stop: threading.Event | None = None,
    interval: float = FOLLOW_INTERVAL,
    sleep: Callable[[float], object] | None = None,
) -> Iterator[str]:
    """Yield lines appended to ``path`` from now on, until ``stop`` is set."""
    stop = stop or threading.Event()
    wait: Callable[[float], object] = sleep or stop.wait
    fh = _open_at_end(path)
    pending = b""
    try:
        while not stop.is_set():
            chunk = fh.read(_CHUNK) if fh is not None else b""
            if chunk:
                pending += chunk
                *complete, pending = pending.split(b"\n")
                for line in complete:
                    yield redact(line.decode("utf-8", "replace"))
                continue
            if _replaced(path, fh):
                if fh is not None:
                    fh.close()
                fh = _open(path)
                pending = b""
                continue
            wait(interval)
    finally:
        if fh is not None:
            fh.close()


def _open(path: Path) -> Any:
    try:
        return open(path, "rb")
    except OSError:
        return None


def _open_at_end(path: Path) -> Any:
    fh = _open(path)
    if fh is not None:
        fh.seek(0, os.SEEK_END)
    return fh


def _replaced(path: Path, fh: Any) -> bool:
    """True when the file was rotated, truncated, or appeared after we started."""
    try:
        st = os.stat(path)
    except OSError:
        return False
    if fh is None:
        return True
    own = os.fstat(fh.fileno())
    return (st.st_ino, st.st_dev) != (own.st_ino, own.st_dev) or st.st_size < fh.tell()
