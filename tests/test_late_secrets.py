"""What the watchdog of an agent that outlived its command writes masks the config's secrets.

The watchdog (``engine.gateway.watchdog``) loads no config: the gateway passes it the
secrets its process masks, on the watchdog's stdin. An agent that quotes the gateway's
token after its command exited must not put it on disk in clear: not in its late logs,
not in the stand-in handoff, not in the record the watchdog reconciles.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers import demo_config, wait_for

TOKEN = "gwtokSECRET0123456789abcdef"

#: Prints the gateway's token, waits for the test's go file (60 s at most), prints it
#: again; with `HAND=1` it then writes its own handoff quoting it.
AGENT = """
import datetime, json, os, sys, time
tok = os.environ["ORCH_WATCHDOG_TEST_TOKEN"]
print("gw=" + tok, flush=True)
print("gw=" + tok, file=sys.stderr, flush=True)
deadline = time.monotonic() + 60
while not os.path.exists(sys.argv[1]) and time.monotonic() < deadline:
    time.sleep(0.01)
print("gw=" + tok, flush=True)
print("gw=" + tok, file=sys.stderr, flush=True)
if os.environ.get("HAND") == "1":
    path = os.environ["ORCH_HANDOFF_PATH"]
    data = {"schemaVersion": "1.1", "runId": os.environ["ORCH_RUN_ID"],
            "agent": os.environ["ORCH_AGENT"], "key": os.environ["ORCH_HANDOFF_KEY"],
            "status": "complete", "result": "tok " + tok, "confidence": "high",
            "timestamp": datetime.datetime.now(datetime.timezone.utc)
            .strftime("%Y-%m-%dT%H:%M:%SZ")}
    with open(path + ".tmp", "w") as f:
        json.dump(data, f)
    os.rename(path + ".tmp", path)
"""


def _config(tmp_path: Path, go: Path, hand: bool) -> Path:
    raw = demo_config(tmp_path)
    raw["gateway"].pop("detach_on_exit", None)  # the shipped default: detach
    raw["gateway"]["token_env"] = "ORCH_WATCHDOG_TEST_TOKEN"
    raw["gateway"]["agents"]["webster"] = {
        "kind": "command",
        "argv": [sys.executable, "-c", AGENT, str(go)],
        "env": {"HAND": "1" if hand else "0"},
        "timeout": 90,
    }
    path = tmp_path / "orchestrator.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return path


def _everything(root: Path) -> dict[Path, bytes]:
    found: dict[Path, bytes] = {}
    for dirpath, _, names in os.walk(root):
        for name in names:
            path = Path(dirpath) / name
            if not path.is_symlink():
                found[path] = path.read_bytes()
    return found


@pytest.mark.parametrize("hand", [False, True], ids=["stand-in", "own-handoff"])
def test_the_watchdog_masks_the_configs_secrets(tmp_path: Path, hand: bool) -> None:
    go = tmp_path / "go"
    config = _config(tmp_path, go, hand)
    env = dict(os.environ, ORCH_WATCHDOG_TEST_TOKEN=TOKEN)
    proc = subprocess.run(
        [sys.executable, "-c", "from engine.cli import orchestrate_main; orchestrate_main()",
         "webster", "find the CTE of Zerodur", "--caller", "manager", "--timeout", "1",
         "--json", "--config", str(config)],
        capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL, env=env,
    )  # fmt: skip
    assert proc.returncode == 4, proc.stderr
    assert TOKEN not in proc.stdout + proc.stderr
    run_id = json.loads(proc.stdout)["runId"]
    record_path = tmp_path / "handoffs" / f"{run_id}.json"
    workspaces = tmp_path / "handoffs" / ".workspaces" / "webster"
    go.touch()  # the command has exited: the agent, left to its watchdog, goes on

    def finished() -> dict[str, Any] | None:
        try:
            record: dict[str, Any] = json.loads(record_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        done = record.get("status") == "complete" if hand else record["envelope"].get(
            "also_received"
        )
        late_logs = list(workspaces.glob("*/stderr.late.log"))
        return record if done and late_logs else None

    record = wait_for(finished, "the watchdog's record and late logs", timeout=90)
    (workspace,) = list(workspaces.iterdir())
    for stream in ("stdout", "stderr"):  # the first line may have reached the gateway
        logs = [workspace / f"{stream}.{when}.log" for when in ("early", "late")]
        printed = "".join(p.read_text() for p in logs if p.exists())
        assert printed == "gw=***\n" * 2
    if hand:
        assert record["result"] == "tok ***"
        assert record["envelope"]["late"] is True
    else:
        (kept,) = record["envelope"]["also_received"]
        stand_in = json.loads(Path(kept["file"]).read_text())
        assert "gw=***" in stand_in["result"]
    # Nothing on disk holds it in clear, but the agent's own handoff file (its bytes are
    # kept as it wrote them, in the inbox or set aside).
    own = ("inbox", "rejected") if hand else ()
    found = _everything(tmp_path / "handoffs").items()
    leaked = [str(p) for p, data in found if TOKEN.encode() in data and p.parent.name not in own]
    assert leaked == []
