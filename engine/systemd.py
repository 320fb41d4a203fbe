"""systemd user units for the cluster's gateways, in the shape of seed 001's template.

Example::

    units = gateway_units(cfg)                 # one per gateway the registry names
    written = write_units(units, Path("units"))
    # then: cp units/*.service ~/.config/systemd/user/ && systemctl --user daemon-reload

One unit per distinct gateway URL on this host (several registry names behind one
gateway share it), plus one for the local gateway when it runs standalone (agents whose
URL is that gateway's port get no OpenClaw unit of their own; its ``ExecStart`` is the
absolute path of the running ``orchestrate``, since a venv's ``bin`` is not on
systemd's ``PATH``). Tokens come
from an ``EnvironmentFile`` and are never written into a unit. ``operations.systemd`` in
the config sets the command, the state directory, the environment file and the unit name,
each a template with ``{name}`` and ``{port}``; ``operations.logs`` (see
``engine.opslog``) adds ``StandardOutput=append:`` so ``orchestrate agents logs`` follows
the same file.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from engine.config import Config
from engine.errors import ConfigError, UsageError

#: seed 001: `node .../openclaw/dist/index.js gateway`; here the `openclaw` on $PATH.
DEFAULT_EXEC = "/usr/bin/env openclaw gateway --port {port}"
DEFAULT_STATE_DIR = "%h/.openclaw-{name}"
DEFAULT_ENV_FILE = "%h/.config/orchestrate/{name}.env"
DEFAULT_UNIT = "openclaw-{name}"
_LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1", "0.0.0.0")
_UNIT_NAME = re.compile(r"^[A-Za-z0-9@_.-]{1,200}$")


@dataclass(frozen=True)
class Unit:
    """One unit file: its file name and its text."""

    filename: str
    text: str
    gateway: str  # the name the unit's templates saw
    port: int


def gateway_units(cfg: Config, *, orchestrate_bin: str | None = None) -> list[Unit]:
    """Units for every gateway on this host the registry names; see the module docstring."""
    settings = _settings(cfg)
    gw = cfg.gateway
    standalone = gw.port if gw is not None and not gw.embedded and gw.port else None
    gateways: dict[int, list[str]] = {}
    served = False  # an agent reaches the standalone local gateway by its URL
    for name, agent in cfg.agents.items():
        if agent.is_local:
            continue
        port = _local_port(agent.url)
        if port is None:
            continue
        if port == standalone:
            served = True
            continue
        gateways.setdefault(port, []).append(name)
    from engine.opslog import log_path

    units: list[Unit] = []
    for port, names in sorted(gateways.items()):
        name = names[0] if len(names) == 1 else f"port{port}"
        log = log_path(cfg, names[0], required=False)
        units.append(_openclaw_unit(settings, name, port, names, log))
    if (
        gw is not None
        and not gw.embedded
        and gw.agents
        and (served or any(a.is_local for a in cfg.agents.values()))
    ):
        units.append(_local_unit(cfg, settings, orchestrate_bin or running_orchestrate()))
    return units


def _local_port(url: str) -> int | None:
    """The port of ``url`` when it names this host, else None."""
    split = urlsplit(url)
    try:
        port = split.port
    except ValueError:
        return None
    return port if split.hostname in _LOCAL_HOSTS else None


def running_orchestrate() -> str:
    """The absolute path of the ``orchestrate`` executable this process runs as (or the
    one installed beside its Python, else the first on ``$PATH``), for an ``ExecStart``:
    systemd's ``PATH`` does not hold a virtual environment's ``bin``. The symlinks are
    kept (a venv's ``python`` is one). ``/usr/bin/env orchestrate`` when none is found."""
    argv0 = sys.argv[0] if sys.argv else ""
    candidates = [
        argv0 if Path(argv0).name == "orchestrate" else "",
        str(Path(sys.executable).parent / "orchestrate") if sys.executable else "",
        shutil.which("orchestrate") or "",
    ]
    for candidate in candidates:
        if candidate and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            path = os.path.abspath(candidate)
            return f'"{path}"' if any(c.isspace() for c in path) else path
    return "/usr/bin/env orchestrate"


def check_out(out: Path) -> None:
    """``UsageError`` (exit 2) when ``--out`` names something that is not a directory."""
    if out.exists() and not out.is_dir():
        raise UsageError(
            f"--out `{out}` is a file: give a directory to write the units into (it is "
            "created if needed)."
        )


def write_units(units: list[Unit], out: Path) -> list[Path]:
    """Write each unit into ``out`` (created if needed); return the paths written.

    Raises ``UsageError`` (exit 2) when ``out`` is a file or cannot be created or written."""
    check_out(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"--out `{out}` cannot be created: {exc.strerror or exc}.") from exc
    written: list[Path] = []
    for unit in units:
        path = out / unit.filename
        tmp = path.with_name(f".{unit.filename}.tmp")
        try:
            tmp.write_text(unit.text, encoding="utf-8")
            os.replace(tmp, path)
        except OSError as exc:
            raise UsageError(f"cannot write `{path}`: {exc.strerror or exc}.") from exc
        written.append(path)
    return written


# -- units --------------------------------------------------------------------------------


def _openclaw_unit(
    settings: dict[str, str], name: str, port: int, names: list[str], log: Path | None
) -> Unit:
    def fill(template: str) -> str:
        return template.replace("{name}", name).replace("{port}", str(port))

    state = fill(settings["state_dir"])
    unit = fill(settings["unit"])
    _check_unit_name(unit)
    lines = [
        "[Unit]",
        f"Description=OpenClaw gateway - {name} (agents: {', '.join(names)})",
        "After=network.target",
        "",
        "[Service]",
        "Type=simple",
        f"ExecStart={fill(settings['exec'])}",
        f"Environment=OPENCLAW_STATE_DIR={state}",
        f"Environment=OPENCLAW_CONFIG_PATH={state}/openclaw.json",
        "# hooks and gateway tokens: KEY=value lines in this file (mode 0600), never here",
        f"EnvironmentFile={fill(settings['environment_file'])}",
        *_log_lines(log),
        "Restart=always",
        "RestartSec=5",
        "StartLimitIntervalSec=60",
        "StartLimitBurst=5",
        # seed 001: a second gateway that finds a healthy one exits 78; do not loop on it.
        "RestartPreventExitStatus=78",
        "",
        "[Install]",
        "WantedBy=default.target",
        "",
    ]
    return Unit(f"{unit}.service", "\n".join(lines), name, port)


def _local_unit(cfg: Config, settings: dict[str, str], orchestrate_bin: str) -> Unit:
    gw = cfg.gateway
    assert gw is not None
    name = "orchestrate-gateway"
    if cfg.path is None:
        raise ConfigError("the local gateway's unit needs a config file on disk.")
    binary = orchestrate_bin
    env_file = settings["environment_file"].replace("{name}", name).replace("{port}", str(gw.port))
    from engine.opslog import log_path

    log = log_path(cfg, "gateway", required=False)
    lines = [
        "[Unit]",
        "Description=agent-orchestrator local gateway",
        "After=network.target",
        "",
        "[Service]",
        "Type=simple",
        f"ExecStart={binary} gateway --config {cfg.path}",
        f"WorkingDirectory={cfg.path.parent}",
        (
            f"# `{gw.token_env}` (gateway.token_env): a KEY=value line in this file, never here"
            if gw.token_env
            else f"# the token is read from gateway.token_file ({gw.token_file})"
        ),
        f"EnvironmentFile={env_file}",
        *_log_lines(log),
        "Restart=always",
        "RestartSec=5",
        "StartLimitIntervalSec=60",
        "StartLimitBurst=5",
        "",
        "[Install]",
        "WantedBy=default.target",
        "",
    ]
    return Unit(f"{name}.service", "\n".join(lines), name, gw.port)


def _log_lines(log: Path | None) -> list[str]:
    if log is None:
        return []
    return [f"StandardOutput=append:{log}", f"StandardError=append:{log}"]


def _settings(cfg: Config) -> dict[str, str]:
    """The templates, ``state_dir`` and ``environment_file`` made absolute (``_absolute``:
    systemd refuses a relative ``EnvironmentFile``). Their placeholders (``{name}``,
    ``{port}``) were checked when the config was loaded
    (``engine.config.TEMPLATE_PLACEHOLDERS``)."""
    raw: dict[str, Any] = dict((cfg.operations or {}).get("systemd") or {})
    given = {
        "exec_start": str(raw.get("exec_start", DEFAULT_EXEC)),
        "state_dir": str(raw.get("state_dir", DEFAULT_STATE_DIR)),
        "environment_file": str(raw.get("environment_file", DEFAULT_ENV_FILE)),
        "unit_name": str(raw.get("unit_name", DEFAULT_UNIT)),
    }
    return {
        "exec": given["exec_start"],
        "state_dir": _absolute(given["state_dir"], cfg),
        "environment_file": _absolute(given["environment_file"], cfg),
        "unit": given["unit_name"],
    }


def _absolute(value: str, cfg: Config) -> str:
    """A filled path template as systemd needs it (absolute): a leading ``~`` expanded, a
    relative path made relative to the config file's directory, as every path of the
    config is. A systemd specifier (``%h/...``) and the optional-file prefix ``-`` of
    ``EnvironmentFile=`` are kept."""
    prefix, rest = ("-", value[1:]) if value.startswith("-") else ("", value)
    if rest.startswith("%"):
        return value
    path = Path(os.path.expanduser(rest))
    if not path.is_absolute():
        path = (cfg.path.parent if cfg.path else Path.cwd()) / path
    return f"{prefix}{path}"


def _check_unit_name(unit: str) -> None:
    if not _UNIT_NAME.match(unit):
        raise ConfigError(
            f"`operations.systemd.unit_name` gives `{unit}`, which is not a valid unit name: "
            "use letters, digits, `-`, `_`, `.` and `@` only."
        )
