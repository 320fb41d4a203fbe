"""A real `orchestrate serve` process for tests, with a standalone gateway beside it.

The gateway runs in the test process, so that it outlives a server killed with
``kill -9`` and counts what was dispatched to each agent.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import yaml

from engine.config import DEFAULT_ACL, load_config
from engine.gateway.server import LocalGateway
from tests.helpers import demo_config, gated_agent, write_config

HERE = Path(__file__).parent / "workflows" / "serve"
ASKER = Path(__file__).parent / "peers" / "misbehaving_agent.py"
GATEWAY_TOKEN = "gw-tok-7f3c9e1d2b4a6f80"  # distinctive: grepped for in every response
TOKENS = {
    "alice": ("operate", "alice-tok-41d8cd98f00b204e9800"),
    "bob": ("operate", "bob-tok-98ecf8427e0c3f1a22b9"),
    "carol": ("operate", "carol-tok-5c3a1e77d0b9f2e4a611"),
    "reader": ("read", "reader-tok-0aa3f6c2b19d7e5c4f38"),
}


def counted_gated_agent(go: Path, starts: Path) -> dict[str, Any]:
    """``gated_agent`` that also appends a line to ``starts`` each time it starts."""
    script = (
        "import os, time\n"
        f"with open({str(starts)!r}, 'a') as fh: fh.write(str(os.getpid()) + '\\n')\n"
        "deadline = time.monotonic() + 60\n"
        f"while not os.path.exists({str(go)!r}) and time.monotonic() < deadline:\n"
        "    time.sleep(0.01)\n"
        "print('held and released')\n"
    )
    return {"kind": "command", "argv": [sys.executable, "-c", script], "timeout": 90}


def serve_config(tmp: Path, go: Path, **serve: Any) -> Path:
    """A demo config with a standalone gateway (port filled in by ``Served``) and tokens."""
    raw = demo_config(tmp)
    raw["gateway"].update(embedded=False, token_env="ORCH_TEST_GW_TOKEN")
    raw["gateway"]["agents"]["slowpoke"] = gated_agent(go, output="held and released")
    raw["agents"]["slowpoke"] = {"url": "local"}
    raw["gateway"]["agents"]["asker"] = {  # asks "Which temperature range?" until answered
        "kind": "command",
        "argv": [sys.executable, str(ASKER), "ask"],
        "env": {"AGENT_STATE": str(tmp / "asker-state")},
        "timeout": 60,
        "fallback_handoff": False,
    }
    raw["agents"]["asker"] = {"url": "local"}
    # seed 004's matrix, and the tech lead may hand a part to the asker (a child run)
    raw["acl"] = {k: list(v) for k, v in DEFAULT_ACL.items()}
    raw["acl"]["tech-lead"].append("asker")
    raw["workflow_dirs"] = [str(HERE)]
    tokens = tmp / "serve-tokens.yaml"
    tokens.write_text(
        yaml.safe_dump([{"name": n, "role": r, "token": t} for n, (r, t) in TOKENS.items()])
    )
    raw["serve"] = {"tokens_file": str(tokens), **serve}
    return write_config(tmp, raw)


class Served:
    """A gateway in this process and an `orchestrate serve` subprocess; restartable."""

    def __init__(self, tmp: Path, *, embedded: bool = False, **serve: Any) -> None:
        self.tmp = tmp
        self.go = tmp / "go"
        self.path = serve_config(tmp, self.go, **serve)
        raw = yaml.safe_load(self.path.read_text())
        self.gateway: LocalGateway | None = None
        if embedded:  # the server runs it (as its companion process)
            raw["gateway"]["embedded"] = True
            raw["gateway"].pop("token_env", None)
            raw["gateway"]["agents"]["slowpoke"] = counted_gated_agent(self.go, tmp / "starts")
        else:
            self.gateway = LocalGateway(load_config(self.path), token=GATEWAY_TOKEN).start()
            raw["gateway"]["port"] = int(self.gateway.url.rsplit(":", 1)[1])
        write_config(tmp, raw)
        self.env = {**os.environ, "ORCH_TEST_GW_TOKEN": GATEWAY_TOKEN}
        self.proc: subprocess.Popen[str] | None = None
        self.url = ""
        self.log: list[str] = []
        self._drain = threading.Thread()

    def start(self) -> Served:
        exe = Path(sys.executable).parent / "orchestrate"
        self.proc = subprocess.Popen(
            [str(exe), "serve", "--config", str(self.path), "--port", "0"],
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        lines: queue.Queue[str] = queue.Queue()
        stream = self.proc.stderr
        assert stream is not None

        def drain() -> None:
            with stream:
                for line in stream:
                    self.log.append(line)
                    lines.put(line)
            lines.put("")

        self._drain = threading.Thread(target=drain, daemon=True)
        self._drain.start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if line.startswith("serving on "):
                self.url = line.split()[-1]
                return self
            if line == "":
                break
        raise AssertionError("the server did not start:\n" + "".join(self.log))

    def kill9(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)
        self._drain.join(timeout=30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self._drain.join(timeout=30)
        if self.gateway is not None:
            self.gateway.stop()

    def client(self, who: str | None = "alice") -> httpx.Client:
        headers = {"Authorization": f"Bearer {TOKENS[who][1]}"} if who else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60)


def sse(
    client: httpx.Client, path: str, *, until: Any, timeout: float = 60
) -> Iterator[dict[str, Any]]:
    """Yield the events of an SSE stream until ``until(event)`` is true (bounded)."""
    deadline = time.monotonic() + timeout
    with client.stream("GET", path, timeout=timeout) as resp:
        assert resp.status_code == 200, resp.read()
        data = None
        for line in resp.iter_lines():
            if time.monotonic() > deadline:
                raise AssertionError(f"no matching event on {path} within {timeout} s")
            if line.startswith("data: "):
                data = json.loads(line[6:])
            elif line == "" and data is not None:
                yield data
                if until(data):
                    return
                data = None


def served_module(tmp_path_factory: Any, name: str) -> Iterator[Served]:
    """A module's ``orchestrate serve`` (for a ``scope="module"`` fixture): started in a
    fresh directory, stopped at the end, and its log free of tracebacks."""
    served = Served(tmp_path_factory.mktemp(name)).start()
    try:
        yield served
    finally:
        served.stop()
    assert "Traceback" not in "".join(served.log), "".join(served.log)


def cli(group: Any, *args: str, **env: str | None) -> Any:
    """``group`` run by click's runner with no server or config taken from the caller's
    environment, plus ``env``; exceptions are raised, not caught."""
    from click.testing import CliRunner

    base: dict[str, str | None] = {
        "ORCH_TEST_GW_TOKEN": GATEWAY_TOKEN,
        "ORCH_SERVER": None,
        "ORCH_SERVER_TOKEN": None,
        "ORCHESTRATOR_CONFIG": None,
    }
    return CliRunner(env={**base, **env}).invoke(group, list(args), catch_exceptions=False)


def server_env(srv: Served, who: str = "alice") -> dict[str, str | None]:
    """The environment that points the CLI at ``srv`` as ``who``."""
    return {"ORCH_SERVER": srv.url, "ORCH_SERVER_TOKEN": TOKENS[who][1]}
