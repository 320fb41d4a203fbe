"""`orchestrate show RUN` while the delegation is in flight: the latest progress line."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from engine.cli.orchestrate import orchestrate
from engine.config import load_config
from engine.handoff import key_hash
from engine.liveness import report_progress
from engine.record import write_pending
from tests.helpers import demo_config, write_config

KEY = "k" * 32
RUN = "orch-20261130T000000-0000abcd"


def test_show_of_a_run_in_flight_prints_its_latest_progress(tmp_path: Path) -> None:
    cfg = load_config(write_config(tmp_path, demo_config(tmp_path)))
    write_pending(cfg.handoffs_dir, RUN, {"target": "webster", "caller": "manager",
                                          "outcome": "dispatched",
                                          "key_sha256": key_hash(KEY)})  # fmt: skip
    runner = CliRunner()
    before = runner.invoke(orchestrate, ["show", RUN, "--config", str(cfg.path)])
    assert before.exit_code == 0, before.output
    assert "no handoff yet" in before.output and "progress:" not in before.output
    report_progress(cfg.handoffs_dir, RUN, "first", key=KEY)
    report_progress(cfg.handoffs_dir, RUN, "Reading the datasheets", key=KEY)
    got = runner.invoke(orchestrate, ["show", RUN, "--config", str(cfg.path)])
    assert got.exit_code == 0, got.output
    lines = got.output.splitlines()
    assert lines[0].startswith("in flight: webster for manager") and "no handoff yet" in lines[0]
    assert lines[1].startswith("progress: Reading the datasheets (")
    assert lines[1].endswith(" s ago)")
    assert lines[2].startswith("pending: ")
