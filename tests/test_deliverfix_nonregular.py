"""An agent that leaves something other than a regular file at its handoff path (a
directory, a FIFO, a socket, a symlink to a directory or to a device) gets what
docs/protocol.md section 4 says: refused at once as not this delegation's handoff,
outcome ``invalid`` (exit 2), a record, the thing kept in ``rejected/``, nothing left
half-made (no ``rejected/.tmp-*``), and no hang on a FIFO.

Real parts: the embedded local gateway, real command agents, real files and inotify.
"""

from __future__ import annotations

import json
import stat
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from engine.cli import orchestrate, workflow
from tests.helpers import demo_config, write_config

#: A command agent that puts ``sys.argv[1]``'s kind of non-regular file at its handoff
#: path (or, for ``recdir``, a directory at the record path, where seed 004 wrote).
AGENT = """import os, socket, sys, time
p = os.environ["ORCH_HANDOFF_PATH"]
kind = sys.argv[1]
if kind == "dir":
    os.mkdir(p)
    open(os.path.join(p, "x"), "w").write("hi")
elif kind == "fifo":
    os.mkfifo(p)
elif kind == "socket":
    os.chdir(os.path.dirname(p))  # a socket's path is at most 107 bytes
    s = socket.socket(socket.AF_UNIX)
    s.bind(os.path.basename(p))
elif kind == "devzero":
    os.symlink("/dev/zero", p)
elif kind == "dirlink":
    d = os.path.join(os.path.dirname(p), "somedir")
    os.makedirs(d, exist_ok=True)
    os.symlink(d, p)
elif kind == "recdir":
    handoffs = os.path.dirname(os.path.dirname(p))
    os.mkdir(os.path.join(handoffs, os.environ["ORCH_RUN_ID"] + ".json"))
"""

KINDS = {
    "dir": "it is a directory, not a regular file",
    "fifo": "it is a FIFO (named pipe), not a regular file",
    "socket": "it is a socket, not a regular file",
    "devzero": "it is a symlink to `/dev/zero`, outside the handoffs directory",
    "dirlink": "it is a directory, not a regular file",
    "recdir": "it is a directory, not a regular file",
}


def _config(tmp_path: Path, kind: str) -> Path:
    raw = demo_config(tmp_path)
    raw["gateway"]["agents"]["odd"] = {
        "kind": "command",
        "argv": [sys.executable, "-c", AGENT, kind],
        "timeout": 60,
    }
    raw["agents"]["odd"] = {"url": "local"}
    return write_config(tmp_path, raw)


def _record(output: str) -> dict[str, Any]:
    data = json.loads(output[output.index("{") : output.rindex("}") + 1])
    assert isinstance(data, dict)
    return data


def _nothing_half_made(handoffs: Path) -> None:
    rejected = handoffs / "rejected"
    assert not list(rejected.glob(".tmp-*")), list(rejected.iterdir())
    assert not [p for p in (handoffs / "inbox").iterdir() if p.name.startswith("orch-")]


@pytest.mark.parametrize("kind", list(KINDS))
def test_a_non_regular_handoff_ends_invalid_with_a_record(tmp_path: Path, kind: str) -> None:
    cfg = _config(tmp_path, kind)
    res = CliRunner().invoke(
        orchestrate, ["odd", "go", "--caller", "manager", "--json", "--config", str(cfg)]
    )
    assert res.exit_code == 2, res.output
    record = _record(res.stdout)
    env = record["envelope"]
    run_id = record["runId"]
    assert env["outcome"] == "invalid"
    assert KINDS[kind] in env["error"]
    [refused] = env["rejected"]
    kept = Path(refused["file"])
    assert kept.parent == tmp_path / "handoffs" / "rejected"
    assert kept.name == f"{run_id}.1.json"
    mode = kept.lstat().st_mode
    if kind in ("dir", "recdir"):
        assert stat.S_ISDIR(mode)
    elif kind == "fifo":
        assert stat.S_ISFIFO(mode)
    elif kind == "socket":
        assert stat.S_ISSOCK(mode)
    else:
        assert stat.S_ISLNK(mode)
    assert (tmp_path / "handoffs" / f"{run_id}.json").is_file()  # the record
    _nothing_half_made(tmp_path / "handoffs")

    shown = CliRunner().invoke(orchestrate, ["show", run_id, "--config", str(cfg)])
    assert shown.exit_code == 0, shown.output
    assert shown.output.startswith(f"invalid: odd for manager, {run_id}"), shown.output


def test_a_directory_handoff_fails_its_workflow_step_invalid_not_errored(
    tmp_path: Path,
) -> None:
    cfg = _config(tmp_path, "dir")
    wf = tmp_path / "wf.yaml"
    wf.write_text(
        yaml.safe_dump(
            {
                "name": "dirwf",
                "caller": "manager",
                "steps": [{"id": "d", "agent": "odd", "task": "make a directory"}],
            }
        ),
        encoding="utf-8",
    )
    res = CliRunner().invoke(
        workflow, ["run", str(wf), "--non-interactive", "--json", "--config", str(cfg)]
    )
    assert res.exit_code != 0, res.output
    run_id = json.loads(res.stdout)["runId"]
    summary = json.loads(next((tmp_path / "handoffs").rglob(f"{run_id}/summary.json")).read_text())
    step = summary["steps"]["d"]
    assert step["status"] == "invalid", step
    assert "internal error" not in json.dumps(step)
    assert "it is a directory, not a regular file" in json.dumps(step)
    _nothing_half_made(tmp_path / "handoffs")
