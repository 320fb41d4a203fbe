"""`orchestrate handoff write --data/--data-file`: the handoff's structured `data`."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from engine.cli.orchestrate import orchestrate
from engine.config import load_config
from engine.gateway.server import LocalGateway
from tests.helpers import demo_config, write_config

RUN = "orch-20260101T000000-00000001"
BASE = ["handoff", "write", "--run-id", RUN, "--agent", "webster", "--status", "complete",
        "--result", "done", "--key", "0123456789abcdef0123456789abcdef"]  # fmt: skip


def test_data_is_written_into_the_handoff(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    got = CliRunner().invoke(
        orchestrate, [*BASE, "--dir", str(out), "--data", '{"cte": 0.02, "ok": [1, "a"]}']
    )
    assert got.exit_code == 0, got.output
    assert json.loads((out / f"{RUN}.json").read_text())["data"] == {"cte": 0.02, "ok": [1, "a"]}
    (out / f"{RUN}.json").unlink()
    src = tmp_path / "data.json"
    src.write_text("[3, 4]\n")
    got = CliRunner().invoke(orchestrate, [*BASE, "--dir", str(out), "--data-file", str(src)])
    assert got.exit_code == 0, got.output
    assert json.loads((out / f"{RUN}.json").read_text())["data"] == [3, 4]


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--data", "{cte: 1}"], "`--data` is not JSON (Expecting property name"),
        (["--data", "NaN"], "`--data` is not JSON (`NaN` is not a JSON value)"),
        (["--data", "1", "--data-file", "x"], "give the structured result once"),
        (["--data", "[" * 1000 + "]" * 1000], "deeper than 64 levels"),
        (["--data", "[" * 65 + "]" * 65], "deeper than 64 levels"),
        (["--data", '{"a": 1, "a": 2}'], "`--data` refused: key `a` is written twice"),
    ],
    ids=["bad-json", "nan", "both", "too-deep-to-parse", "too-deep", "key-twice"],
)
def test_bad_data_is_one_paragraph_exit_2(tmp_path: Path, args: list[str], needle: str) -> None:
    (tmp_path / "x").write_text("1")
    args = [a.replace("x", str(tmp_path / "x")) if a == "x" else a for a in args]
    got = CliRunner().invoke(orchestrate, [*BASE, "--dir", str(tmp_path), *args])
    assert got.exit_code == 2, got.output
    assert needle in got.output and "Traceback" not in got.output
    assert len(got.output.strip().splitlines()) == 1
    assert not (tmp_path / f"{RUN}.json").exists()


def test_data_file_nested_too_deep_is_exit_2(tmp_path: Path) -> None:
    src = tmp_path / "deep.json"
    src.write_text('[{"a": ' * 900 + "1" + "}]" * 900)
    got = CliRunner().invoke(orchestrate, [*BASE, "--dir", str(tmp_path), "--data-file", str(src)])
    assert got.exit_code == 2, got.output
    assert "deeper than 64 levels" in got.output and "Traceback" not in got.output
    ok = [*BASE, "--dir", str(tmp_path), "--data", "[" * 64 + "]" * 64]
    assert CliRunner().invoke(orchestrate, ok).exit_code == 0  # the limit itself passes


def test_data_goes_through_the_receiver(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = load_config(write_config(tmp_path, demo_config(tmp_path)))
    monkeypatch.setenv("HOOKS_TOKEN", "t0ken")
    from engine.handoff import key_hash
    from engine.record import write_pending

    # the delegation that waits for it (the receiver refuses a run nobody waits for)
    write_pending(cfg.handoffs_dir, RUN, {"target": "webster", "pid": os.getpid(),
                                          "key_sha256": key_hash(BASE[-1])})  # fmt: skip
    with LocalGateway(cfg, token="t0ken", port=0) as gw:
        got = CliRunner().invoke(orchestrate, [
            *BASE, "--receiver", f"{gw.url}/handoffs/{RUN}", "--token-env", "HOOKS_TOKEN",
            "--data", '{"rows": 2}', "--config", str(cfg.path),
        ])  # fmt: skip
    assert got.exit_code == 0, got.output
    delivered = cfg.handoffs_dir / "inbox" / f"{RUN}.json"
    assert json.loads(delivered.read_text())["data"] == {"rows": 2}
