"""Two hosts share one pool in PostgreSQL, each adapting its own share to its own load.

Each host is a process with its own ``ORCH_HOST_ID`` and its own load source (a loaded
host at load 6, an idle one at 0.2); both sample at every pool operation. The loaded
host's share shrinks to ``min_tokens`` and the idle host's stays at ``max_tokens``, so
the loaded host holds one token and the idle one takes what is left of ``max_tokens``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from engine.pool import PoolSettings
from engine.pool.settings import PoolMode
from engine.pool.state import PoolState, Sample, Share, Ticket, Token
from engine.pool.status import format_status, status_view

ROOT = Path(__file__).resolve().parent.parent

HOST = r"""
import json, sys
from pathlib import Path
from engine.errors import DelegationTimeoutError
from engine.pool import PoolSettings, TokenPool
from engine.pool.postgres import PostgresPoolStore
from engine.store.postgres_db import Database

url, load = sys.argv[1], float(sys.argv[2])
settings = PoolSettings(dir=Path("unused"), min_tokens=1, max_tokens=4, adaptive=True,
                        load_low=1.0, load_high=3.0, emergency_load=50.0, hysteresis=1,
                        sample_interval=0)
pool = TokenPool(settings, store=PostgresPoolStore(Database.from_url(url)),
                 load_source=lambda: load)
for _ in range(3):
    pool.sample()
leases = []
while True:
    try:
        leases.append(pool.acquire(run_id=f"r{len(leases)}", agent="a", timeout=0))
    except DelegationTimeoutError as exc:
        refused = str(exc)
        break
print(json.dumps({"held": len(leases), "refused": refused, "status": pool.status()}),
      flush=True)
sys.stdin.read()  # hold the tokens until the test closes stdin
for lease in leases:
    lease.release()
pool.close()
"""


def _host(url: str, name: str, load: float) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    env = {**os.environ, "ORCH_HOST_ID": name, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-c", HOST, url, str(load)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()  # the host's answer once it holds what it can
    assert line, f"host {name} exited with {proc.wait(60)}"
    return proc, json.loads(line)


def test_two_hosts_with_different_loads_each_get_their_own_share(pg_url: str) -> None:
    busy, busy_said = _host(pg_url, "busy-host", 6.0)
    try:
        idle, idle_said = _host(pg_url, "idle-host", 0.2)
        try:
            assert (busy_said["held"], idle_said["held"]) == (1, 3)
            assert "1 of this host's share of 1" in busy_said["refused"]
            assert "4 of 4 tokens in use on all hosts" in idle_said["refused"]
            status = idle_said["status"]
            assert (status["host"], status["size"], status["mode"]) == ("idle-host", 4, "normal")
            shares = {h["host"]: (h["size"], h["in_use"]) for h in status["hosts"]}
            assert shares == {"idle-host": (4, 3), "busy-host": (1, 1)}
            assert sorted(t["host"] for t in status["in_use"]) == ["busy-host"] + ["idle-host"] * 3
            assert busy_said["status"]["size"] == 1
        finally:
            idle.communicate("", timeout=60)
    finally:
        busy.communicate("", timeout=60)
    assert (busy.returncode, idle.returncode) == (0, 0)


# -- the documented status of a shared pool ----------------------------------------------

NOW = 1760019360.0


def _token(run_id: str, agent: str, pid: int, host: str, age: float) -> Token:
    return Token(run_id, run_id, agent, pid, None, host, NOW - age, None, NOW, NOW - age)


def test_the_documented_shared_status_is_what_format_status_prints() -> None:
    doc = (ROOT / "docs" / "scale-out.md").read_text(encoding="utf-8")
    (block,) = [b for b in re.findall(r"```text\n(.*?)```", doc, re.S) if "hosts (" in b]
    text = "\n".join(line[2:] for line in block.rstrip().splitlines())
    state = PoolState(
        size=8,
        tokens=[
            _token("orch-20251009T141502-3f2a9c1d", "webster", 41207, "orch-a", 48.2),
            _token("orch-20251009T141519-a01b2c3d", "auditor", 7730, "orch-b", 31.0),
            _token("orch-20251009T141533-5e6f7a8b", "tech-lead", 7791, "orch-b", 17.4),
        ],
        queue=[
            Ticket(
                "w",
                "orch-20251009T141540-77e0ab15",
                "auditor",
                41263,
                None,
                "orch-a",
                NOW - 4.6,
                None,
                NOW,
            )  # fmt: skip
        ],
        samples=[
            Sample(NOW - 60, 3.4, "loadavg", "orch-a"),
            Sample(NOW - 40, 0.3, "loadavg", "orch-b"),
            Sample(NOW - 30, 3.6, "loadavg", "orch-a"),
        ],
        shares={
            "orch-a": Share(size=1, high=1, last_sample_at=NOW - 30),
            "orch-b": Share(size=6, mode=PoolMode.NORMAL, last_sample_at=NOW - 40),
        },
    )
    settings = PoolSettings(dir=Path("/unused"), max_tokens=8).to_dict()
    status = status_view(
        state,
        NOW,
        where="postgresql://orch@db.internal:5432/orch#pool=default",
        enabled=True,
        settings=settings,
        host="orch-a",
        shares=dict(state.shares),
    )
    assert format_status(status) == text
