"""The embedded gateway of ``orchestrate serve``, run as a companion process.

A gateway inside the server process would take its running agents down with it when the
server is killed (``kill -9``, the OOM killer): their output pipes close, nothing writes
their handoffs, and the restarted server's delegations wait out their timeout. So with
``gateway.embedded: true`` the server runs the gateway as a process of its own, in its
own session, and a restarted server *adopts* a companion that is still alive: the agents
it runs finish, their handoffs reach the restarted server's re-attached waits, and nothing
is dispatched twice.

Example::

    with companion_gateway(cfg) as served_cfg:     # cfg.gateway.embedded is true
        with open_delegator(served_cfg) as delegator:
            ...                                    # delegations go to the companion

State lives in ``<handoffs>/.serve/`` (mode 0700): ``gateway.json`` (``pid``, ``url``,
``owners`` -- the pids of the servers and inboxes using it -- and the token's SHA-256,
never the token), the companion's log ``gateway.log``, and, only when no
``gateway.token_env`` / ``gateway.token_file`` is configured, ``gateway.token`` (mode
0600: the random token the owners and the companion share, read again after a restart).
The last owner to leave stops it with SIGTERM (``gateway.detach_on_exit`` then leaves
running agents to watchdogs, as before); it stops by itself once no owner has been alive
for ``ORPHAN_GRACE`` seconds with no agent running.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from engine.config import Config
from engine.errors import ConfigError

#: The environment variable through which the server's delegator reads the shared token.
TOKEN_ENV = "ORCH_SERVE_GATEWAY_TOKEN"
#: Seconds a companion whose owner died stays up while idle (a restart adopts it).
ORPHAN_GRACE = 120.0
#: Companions this process started, by pid (kept to be reaped).
_children: dict[int, subprocess.Popen[bytes]] = {}
#: Seconds to wait for a new companion to listen, and for one to stop.
START_TIMEOUT = 30.0
STOP_TIMEOUT = 20.0


def state_dir(cfg: Config) -> Path:
    """``<handoffs>/.serve``: the companion's state file, log and (maybe) token."""
    return cfg.handoffs_dir / ".serve"


def wanted(cfg: Config) -> bool:
    """True when the server should run its gateway as a companion: an embedded gateway
    that local agents use, and a config file the companion can load."""
    gw = cfg.gateway
    return (
        gw is not None
        and gw.embedded
        and cfg.path is not None
        and any(a.is_local for a in cfg.agents.values())
    )


@contextmanager
def companion_gateway(cfg: Config) -> Iterator[Config]:
    """Adopt the live companion or start one; yield ``cfg`` pointed at it.

    The yielded config has ``gateway.embedded: false`` and the companion's port, with the
    token in ``$ORCH_SERVE_GATEWAY_TOKEN``. Several processes on one handoffs directory
    (a server, an inbox) share one companion; on exit the last one stops it (SIGTERM).
    Without ``wanted(cfg)`` the config is yielded unchanged. Raises ``ConfigError`` when
    the companion cannot start (its log's last lines say why).
    """
    if not wanted(cfg):
        yield cfg
        return
    from engine.redact import register

    gw = cfg.gateway
    assert gw is not None
    folder = state_dir(cfg)
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    token = _token(cfg, folder)
    register(token)
    with _locked(folder):  # one process at a time starts, adopts or leaves it
        info = _adoptable(folder, token)
        if info is None:
            info = _start(cfg, folder, token)
        else:
            _owners(folder, info, add=os.getpid())
    os.environ[TOKEN_ENV] = token
    port = urlsplit(str(info["url"])).port or 0
    served = replace(
        cfg,
        gateway=replace(
            gw, embedded=False, host="127.0.0.1", port=port, token_env=TOKEN_ENV, token_file=None
        ),
    )
    try:
        yield served
    finally:
        with _locked(folder):
            current = _read(folder / "gateway.json")
            others = (
                _owners(folder, current, drop=os.getpid())
                if current is not None and current.get("pid") == info["pid"]
                else []
            )
        if not others:  # the last owner stops it
            stop(int(info["pid"]))


@contextmanager
def _locked(folder: Path) -> Iterator[None]:
    import fcntl

    fd = os.open(folder / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _owners(
    folder: Path, info: dict[str, Any], *, add: int | None = None, drop: int | None = None
) -> list[int]:
    """Update the companion's live owners (``add``/``drop`` a pid); the owners left."""
    from engine.files import write_json_atomic

    owners = [int(p) for p in info.get("owners") or [] if isinstance(p, int) and alive(p)]
    if drop is not None:
        owners = [p for p in owners if p != drop]
    if add is not None and add not in owners:
        owners.append(add)
    info["owners"] = owners
    write_json_atomic(folder / "gateway.json", info)
    return owners


def alive(pid: int) -> bool:
    """True while process ``pid`` runs (a zombie, exited but not reaped, counts as gone)."""
    from engine.store.liveness import process_alive

    if not process_alive(pid):
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return True  # no /proc: trust the signal check
    return stat.rsplit(")", 1)[-1].split()[:1] != ["Z"]


def stop(pid: int) -> None:
    """SIGTERM the companion and wait (bounded) until it is gone."""
    child = _children.pop(pid, None)
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    if child is not None:  # ours: reap it
        try:
            child.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            pass
        return
    deadline = time.monotonic() + STOP_TIMEOUT
    while alive(pid) and time.monotonic() < deadline:  # adopted: just look
        time.sleep(0.05)


def _token(cfg: Config, folder: Path) -> str:
    from engine.registry import read_secret

    gw = cfg.gateway
    assert gw is not None
    if gw.token_env and os.environ.get(gw.token_env) or gw.token_file:
        return read_secret(env=gw.token_env, file=gw.token_file, what="the embedded gateway")
    path = folder / "gateway.token"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return read_secret(env=None, file=path, what="the embedded gateway")
    with os.fdopen(fd, "w", encoding="ascii") as fh:
        fh.write(secrets.token_urlsafe(24))
    return read_secret(env=None, file=path, what="the embedded gateway")


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _adoptable(folder: Path, token: str) -> dict[str, Any] | None:
    """The live companion's state when it answers ``/health`` and shares our token."""
    import httpx

    info = _read(folder / "gateway.json")
    if info is None or info.get("token_sha256") != _digest(token):
        return None
    if not alive(int(info.get("pid") or 0)):
        return None
    try:
        r = httpx.get(f"{info['url']}/health", timeout=5.0)
    except httpx.HTTPError:
        return None
    return info if r.status_code == 200 else None


def _start(
    cfg: Config,
    folder: Path,
    token: str,
    *,
    owner: int | None = None,
    orphan_grace: float = ORPHAN_GRACE,
) -> dict[str, Any]:
    """Start a companion in its own session, owned by ``owner`` (default: this process);
    its state once it listens."""
    (folder / "gateway.json").unlink(missing_ok=True)
    gw = cfg.gateway
    assert gw is not None
    log = open(folder / "gateway.log", "ab")  # noqa: SIM115 - the child keeps it
    since = log.tell()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "engine.serve.companion"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            start_new_session=True,
        )
    finally:
        log.close()
    assert proc.stdin is not None and proc.stdout is not None
    order = {
        "config": str(cfg.path),
        "token": token,
        "port": gw.port,
        "owners": [owner or os.getpid()],
        "orphan_grace": orphan_grace,
    }
    proc.stdin.write(json.dumps(order).encode())
    proc.stdin.close()
    line = _first_line(proc, START_TIMEOUT)
    proc.stdout.close()
    info = _read(folder / "gateway.json")
    if line.startswith("listening ") and info is not None:
        _children[proc.pid] = proc
    else:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        raise ConfigError(
            "the embedded gateway (a companion process) did not start: "
            f"{_tail(folder / 'gateway.log', since)} (log: {folder / 'gateway.log'})."
        )
    return info


def _first_line(proc: subprocess.Popen[bytes], timeout: float) -> str:
    out: list[bytes] = []
    assert proc.stdout is not None
    stream = proc.stdout
    reader = threading.Thread(target=lambda: out.append(stream.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    return out[0].decode("utf-8", "replace").strip() if out else ""


def _tail(path: Path, since: int) -> str:
    """The last lines the companion wrote to its log (from byte ``since``), redacted."""
    from engine.redact import redact

    try:
        with open(path, "rb") as fh:
            fh.seek(since)
            text = fh.read().decode("utf-8", "replace")
    except OSError:
        return "no log"
    lines = text.strip().splitlines()
    return redact(" / ".join(lines[-3:]))[:600] or "it exited without a word"


def _read(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("url") and data.get("pid") else None


# ----------------------------------------------------------------------------- the process


def main() -> int:
    """The companion: read its order on stdin, serve the gateway, say ``listening URL``.

    A problem (the config, a busy port) is one line on stderr (its log), exit 2."""
    from engine.errors import OrchestratorError
    from engine.redact import redact

    try:
        return _serve(json.loads(sys.stdin.read()))
    except OrchestratorError as exc:
        print(redact(str(exc)), file=sys.stderr, flush=True)
        return 2


def _serve(order: dict[str, Any]) -> int:
    from engine.config import load_config
    from engine.files import write_json_atomic
    from engine.gateway.server import LocalGateway
    from engine.redact import register

    token = str(order["token"])
    register(token)
    cfg = load_config(order["config"])
    gw = cfg.gateway
    assert gw is not None
    folder = state_dir(cfg)
    gateway = LocalGateway(
        cfg, token=token, port=int(order.get("port") or 0), detach_on_stop=gw.detach_on_exit
    ).start()
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    signal.signal(signal.SIGINT, lambda *_: stopping.set())
    state: dict[str, Any] = {
        "pid": os.getpid(),
        "url": gateway.url,
        "owners": [int(p) for p in order["owners"]],
        "token_sha256": _digest(token),
        "started_at": time.time(),
    }
    write_json_atomic(folder / "gateway.json", state)
    print(f"listening {gateway.url}", flush=True)
    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
    grace = float(order.get("orphan_grace", ORPHAN_GRACE))
    idle_since: float | None = None
    try:
        while not stopping.wait(1.0):
            owners = (_read(folder / "gateway.json") or state).get("owners") or []
            busy = any(gateway.stats()["inflight"].values())
            if any(alive(int(p)) for p in owners) or busy:
                idle_since = None
            elif idle_since is None:
                idle_since = time.monotonic()
            elif time.monotonic() - idle_since > grace:
                break
    finally:
        gateway.stop()
        current = _read(folder / "gateway.json")
        if current is not None and current.get("pid") == os.getpid():
            (folder / "gateway.json").unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
