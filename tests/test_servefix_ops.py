"""`orchestrate agents logs` finds the logs docs/operations.md names.

- `gateway` with an embedded gateway: the companion process of `orchestrate serve`
  writes `<handoffs_dir>/.serve/gateway.log`.
- Agents behind one gateway share the log its systemd unit appends to.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from engine.cli import orchestrate
from tests.helpers import demo_config, write_config
from tests.servekit import Served, cli


def test_logs_gateway_reads_the_companion_log_of_a_running_server(tmp_path: Path) -> None:
    srv = Served(tmp_path, embedded=True).start()
    try:
        log = tmp_path / "handoffs" / ".serve" / "gateway.log"
        assert log.is_file()  # the companion's stderr goes there
        with open(log, "a") as fh:
            fh.write("local gateway: marker line\n")
        res = cli(orchestrate, "agents", "logs", "gateway", "-n", "5", "--config", str(srv.path))
        assert res.exit_code == 0, res.output
        assert "local gateway: marker line" in res.output
    finally:
        srv.stop()


def test_logs_gateway_before_any_server_says_when_it_appears(tmp_path: Path) -> None:
    raw = demo_config(tmp_path)
    raw["gateway"]["embedded"] = True
    config = write_config(tmp_path, raw)
    res = cli(orchestrate, "agents", "logs", "gateway", "--config", str(config))
    assert res.exit_code == 2, res.output
    assert ".serve/gateway.log" in res.output and "orchestrate serve" in res.output
    assert "no log file configured" not in res.output


def test_agents_behind_one_gateway_share_the_log_its_unit_writes(tmp_path: Path) -> None:
    raw = demo_config(tmp_path)
    url = "http://127.0.0.1:18800"
    for name in ("manager", "webster"):
        raw["agents"][name] = {"url": url, "token_env": "SHARED_HOOKS_TOKEN"}
    raw["operations"] = {"logs": str(tmp_path / "logs" / "{agent}.log")}
    config = write_config(tmp_path, raw)
    res = cli(orchestrate, "agents", "systemd", "--out", str(tmp_path / "units"),
              "--config", str(config))  # fmt: skip
    assert res.exit_code == 0, res.output
    (unit,) = [p for p in (tmp_path / "units").iterdir() if "port18800" in p.name]
    shared = tmp_path / "logs" / "manager.log"
    assert f"StandardOutput=append:{shared}" in unit.read_text()
    shared.parent.mkdir()
    shared.write_text("gateway on 18800: ready\n")  # what that unit appends
    for agent in ("manager", "webster"):
        res = cli(orchestrate, "agents", "logs", agent, "--config", str(config))
        assert res.exit_code == 0, res.output
        assert "gateway on 18800: ready" in res.output
    assert yaml.safe_load(config.read_text())["agents"]["webster"]["url"] == url
