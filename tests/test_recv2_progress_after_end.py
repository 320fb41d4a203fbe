"""`orchestrate handoff progress` after the delegation ended (`timeout`): refused, as for a
`complete` run, on both paths (the CLI and the receiver). It was taken (exit 0) and
`orchestrate show` printed it on the timeout record. Real CLI processes, a real embedded
gateway, a real delegation that times out."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import httpx

from engine.config import load_config
from engine.gateway import LocalGateway
from tests.helpers import demo_config, write_config
from tests.test_cfgfix_config import program

TOKEN = "recv2-progress-token-7e3a"
#: an agent that keeps its key (for the test to use) and never hands off
SILENT = [sys.executable, "-c", "import os, pathlib, time; pathlib.Path(os.environ['KEYFILE'])"
          ".write_text(os.environ['ORCH_HANDOFF_KEY']); time.sleep(30)"]  # fmt: skip


def test_progress_after_a_timeout_is_refused(tmp_path: Path) -> None:
    raw = demo_config(tmp_path)
    raw["gateway"]["agents"]["webster"] = {
        "kind": "command",
        "argv": SILENT,
        "env": {"KEYFILE": str(tmp_path / "key")},
    }
    cfg_path = write_config(tmp_path, raw)
    res = program("orchestrate", "webster", "go", "--caller", "manager", "--json",
                  "--timeout", "1", "--config", str(cfg_path), cwd=tmp_path)  # fmt: skip
    run_id = json.loads(res.stdout)["runId"]
    record = json.loads((tmp_path / "handoffs" / f"{run_id}.json").read_text())
    assert record["envelope"]["outcome"] == "timeout", res.stdout + res.stderr
    pending = json.loads((tmp_path / "handoffs" / ".pending" / f"{run_id}.json").read_text())
    assert pending["key_sha256"]  # kept, so a late handoff is still merged
    key = (tmp_path / "key").read_text()

    got = program("orchestrate", "handoff", "progress", "--run-id", run_id, "--key", key,
                  "after end", "--config", str(cfg_path), cwd=tmp_path)  # fmt: skip
    assert got.returncode == 2, got.stdout + got.stderr
    err = " ".join(got.stderr.split())
    assert f"run `{run_id}` is not in flight" in err and "ended (timeout)" in err, err
    assert "Traceback" not in got.stderr

    with LocalGateway(load_config(cfg_path), token=TOKEN, port=0) as gw:
        resp = httpx.post(f"{gw.url}/handoffs/{run_id}/progress", timeout=30,
                          json={"text": "after end", "key": key},
                          headers={"Authorization": f"Bearer {TOKEN}"})  # fmt: skip
        assert resp.status_code == 404, resp.text
        assert "ended (timeout)" in resp.json()["error"]
        env = {"HOOKS_TOKEN": TOKEN}
        got = program("orchestrate", "handoff", "progress", "--run-id", run_id, "--key", key,
                      "after end", "--receiver", gw.url, "--token-env", "HOOKS_TOKEN",
                      cwd=tmp_path, env=env)  # fmt: skip
        assert got.returncode != 0, got.stdout + got.stderr  # refused (404), nothing kept
        assert "(404)" in got.stderr and "Traceback" not in got.stderr

    shown = program("orchestrate", "show", run_id, "--config", str(cfg_path), cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert "after end" not in shown.stdout
    assert not (tmp_path / "handoffs" / "progress" / f"{run_id}.json").exists()
