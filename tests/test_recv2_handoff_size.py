"""`orchestrate handoff write` refuses, before writing, a handoff over the limit the engine
reads it with (the pending envelope's `max_handoff_bytes`, else the config's, else 1 MiB),
and `--receiver` sends UTF-8 JSON, so the size sent is the size of the file. It wrote a
1 MiB `--result-file` (exit 0) that the engine then refused, and sent `é` as `\\u00e9`
(six bytes for two: 413). Real CLI processes, a real embedded gateway, real files."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from engine.config import load_config
from engine.gateway.server import LocalGateway
from engine.handoff import MAX_HANDOFF_BYTES, key_hash
from engine.record import write_pending
from tests.helpers import demo_config, write_config
from tests.test_cfgfix_config import program

RUN = "orch-20260101T000000-0000512e"
KEY = "0123456789abcdef0123456789abcdef"
TOKEN = "recv2-size-token-51c3"
WRITE = ["handoff", "write", "--run-id", RUN, "--agent", "webster", "--status", "complete",
         "--key", KEY]  # fmt: skip


def _pending(records: Path, **extra: object) -> None:
    write_pending(records, RUN, {"target": "webster", "pid": os.getpid(),
                                 "key_sha256": key_hash(KEY), **extra})  # fmt: skip


def _refused(got: subprocess.CompletedProcess[str], size_over: int, limit: int) -> str:
    """The one paragraph of a refusal (exit 2) naming the size, above ``size_over``, and
    the limit."""
    assert got.returncode == 2, got.stdout + got.stderr
    assert "Traceback" not in got.stderr and len(got.stderr.strip().splitlines()) == 1
    text = " ".join(got.stderr.split())
    assert f"over the limit of {limit} bytes" in text, text
    assert int(text.split(" bytes, over")[0].rsplit(" ", 1)[-1]) > size_over
    return text


def test_a_result_file_of_1_mib_is_refused_before_writing(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    _pending(out)
    big = tmp_path / "result.txt"
    big.write_text("x" * MAX_HANDOFF_BYTES)
    got = program("orchestrate", *WRITE, "--result-file", str(big), "--dir", str(out),
                  cwd=tmp_path)  # fmt: skip
    text = _refused(got, MAX_HANDOFF_BYTES, MAX_HANDOFF_BYTES)
    assert "`max_handoff_bytes`" in text and "Shorten the result" in text
    assert not (out / f"{RUN}.json").exists()
    # just under the limit is written, and the engine's own reader takes it
    big.write_text("x" * (MAX_HANDOFF_BYTES - 1024))
    got = program("orchestrate", *WRITE, "--result-file", str(big), "--dir", str(out),
                  cwd=tmp_path)  # fmt: skip
    assert got.returncode == 0, got.stderr
    assert (out / f"{RUN}.json").stat().st_size <= MAX_HANDOFF_BYTES


def test_the_pending_envelope_limit_counts_data_too(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    _pending(out, max_handoff_bytes=2000)
    data = tmp_path / "data.json"
    data.write_text(json.dumps({"rows": ["r" * 100] * 20}))
    got = program("orchestrate", *WRITE, "--result", "short", "--data-file", str(data),
                  "--dir", str(out), cwd=tmp_path)  # fmt: skip
    _refused(got, 2000, 2000)
    assert not (out / f"{RUN}.json").exists()


def test_the_config_limit_without_a_pending_envelope(tmp_path: Path) -> None:
    raw = demo_config(tmp_path)
    raw["max_handoff_bytes"] = 4096
    cfg_path = write_config(tmp_path, raw)
    got = program("orchestrate", *WRITE, "--result", "y" * 5000, "--config", str(cfg_path),
                  cwd=tmp_path)  # fmt: skip
    _refused(got, 4096, 4096)
    assert not list((tmp_path / "handoffs").rglob(f"{RUN}*"))


def test_the_receiver_gets_utf8_json_the_size_of_the_file(tmp_path: Path) -> None:
    cfg = load_config(write_config(tmp_path, demo_config(tmp_path)))
    _pending(cfg.handoffs_dir)
    result = "é" * 400_000  # 800 KB of UTF-8; 2.4 MB as \\u00e9 escapes
    (tmp_path / "result.txt").write_text(result, encoding="utf-8")
    with LocalGateway(cfg, token=TOKEN, port=0) as gw:
        got = program("orchestrate", *WRITE, "--result-file", str(tmp_path / "result.txt"),
                      "--receiver", gw.url, "--token-env", "HOOKS_TOKEN", cwd=tmp_path,
                      env={"HOOKS_TOKEN": TOKEN})  # fmt: skip
    assert got.returncode == 0, got.stdout + got.stderr
    delivered = cfg.handoffs_dir / "inbox" / f"{RUN}.json"  # the caller (this test) waits
    assert json.loads(delivered.read_text(encoding="utf-8"))["result"] == result
