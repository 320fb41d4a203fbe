"""A run with a secret input in flight when `orchestrate serve` restarts.

The restarted server no longer holds the secret value, so it cannot continue the run: it
reports the run as waiting for that input (not ``failed`` with a step still running), the
CLI sees that no process runs it, and giving the value again (``POST /v1/runs/{id}/resume``
with ``inputs``, ``workflow resume RUN -i NAME=VALUE``, or the same with ``--server``)
continues it, still passing the gate approved when the run started: that approval is kept
in the run's own ``run.json``.
Real parts: a real server (SIGTERM, as systemd stops it) and a gateway in this process.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.cli import workflow
from engine.runs import read_events
from tests.servekit import Served, cli, server_env
from tests.test_secret_inputs import _stop_server as stop_server
from tests.test_serve import _feed_until

SECRET = "KEYVAL_srv_987654"


@pytest.mark.parametrize("how", ["api", "cli", "server-cli"])
def test_a_restart_keeps_the_run_waiting_for_its_secret_input(tmp_path: Path, how: str) -> None:
    srv = Served(tmp_path).start()
    try:
        with srv.client("alice") as alice:
            cursor = alice.get("/v1/events").json()["cursor"]
            r = alice.post(
                "/v1/runs",
                json={"workflow": "held-secret", "inputs": {"api_key": SECRET}, "approve": ["g"]},
            )
            assert r.status_code == 201, r.text
            run_id = r.json()["runId"]
            _feed_until(alice, cursor, run_id, "step_dispatched")
            run = Path(alice.get(f"/v1/runs/{run_id}").json()["run_dir"])
        # (a) the run itself keeps the gates approved at its start
        assert json.loads((run / "run.json").read_text())["pre_approved"] == {"approve": ["g"]}
        stop_server(srv)
        srv.start()
        with srv.client("alice") as alice:
            doc = alice.get(
                f"/v1/runs/{run_id}/wait", params={"until": "parked", "timeout": 60}
            ).json()
            # (b) waiting for the secret input, not failed with a step running
            assert doc["done"] and doc["status"] == "waiting_input", doc
            assert doc["inputs_missing"] == ["api_key"]
            assert doc["steps"]["a"]["status"] == "running"
            assert doc["steps"]["g"]["status"] == "pending"
            for text in (doc["error"], doc["steps"]["a"]["waiting"]):
                assert f"workflow resume {run_id} -i api_key=VALUE" in text, text
                assert f"POST /v1/runs/{run_id}/resume" in text, text
            kinds = [e["event"] for e in read_events(run / "events.jsonl")]
            assert "run_finished" not in kinds
            res = cli(workflow, "status", run_id, "--config", str(srv.path))
            assert "no process is running this run" in res.output, res.output
            srv.go.touch()  # the held step's agent finishes meanwhile
            if how == "api":
                r = alice.post(f"/v1/runs/{run_id}/resume", json={"inputs": {"api_key": "nope"}})
                assert r.status_code == 400 and "not the one the run started with" in r.text
                r = alice.post(f"/v1/runs/{run_id}/resume", json={"inputs": {"api_key": SECRET}})
                assert r.status_code == 200, r.text
                done = alice.get(f"/v1/runs/{run_id}/wait", params={"timeout": 60}).json()
                assert done["done"] and done["status"] == "complete", done
                assert not done.get("inputs_missing") and not done["error"]
            if how == "server-cli":  # `workflow resume --server` gives the value again
                env = server_env(srv)
                wrong = cli(workflow, "resume", run_id, "-i", "api_key=nope", **env)
                assert wrong.exit_code == 2, wrong.output
                assert "not the one the run started with" in wrong.output
                res = cli(workflow, "resume", run_id, "-i", f"api_key={SECRET}", "--json", **env)
                assert res.exit_code == 0, res.output
                assert json.loads(res.stdout)["status"] == "complete", res.stdout
                assert SECRET not in res.output
        if how == "cli":
            stop_server(srv)
            args = ("resume", run_id, "-i", f"api_key={SECRET}", "--config", str(srv.path))
            res = cli(workflow, *args)
            assert res.exit_code == 0, res.output
        events = read_events(run / "events.jsonl")
        assert events[-1]["event"] == "run_finished" and events[-1]["status"] == "complete"
        decided = [(e["step"], e["by"]) for e in events if e["event"] == "gate_decided"]
        assert decided == [("g", "--approve")]
        assert not [e for e in events if e["event"] == "gate_waiting"]
        assert [e["step"] for e in events if e["event"] == "step_dispatched"].count("a") == 1
        written = (run / "run.json").read_text() + (run / "events.jsonl").read_text()
        assert SECRET not in written and SECRET not in "".join(srv.log)
    finally:
        srv.stop()
    assert "Traceback" not in "".join(srv.log), "".join(srv.log)
