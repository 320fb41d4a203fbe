"""`workflow test --record RUN` on a damaged or unfinished run: one paragraph naming each
damaged file (empty, not JSON, not an object, not UTF-8) or why the run cannot be replayed
as recorded, exit 2, and nothing written (every file is checked before any is written)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.test_wf_fix_paths import _gate_wf, _parked, _wf


def _finished(tmp_path: Path) -> tuple[Path, Path, str, Path]:
    config, mine, rid = _parked(tmp_path, _gate_wf(inputs=True), "-i", "topic=ULE")
    assert _wf(mine, config, "approve", rid, "review").returncode == 0
    assert _wf(mine, config, "resume", rid).returncode == 0
    return config, mine, rid, tmp_path / "handoffs" / "workflows" / rid


@pytest.mark.parametrize(
    ("name", "content", "said"),
    [
        ("summary.json", b"", "empty"),
        ("summary.json", b"[1,2]", "not an object: the JSON is an array"),
        ("summary.json", b"\xff\xfe", "not JSON: the bytes are not UTF-8 text"),
        ("summary.json", b'{"outputs": {', "truncated JSON: "),
        ("review.json", b"", "empty"),
        ("review.json", b"garbage", "invalid JSON: Expecting value (line 1, column 1)"),
    ],
    ids=["empty", "array", "not-utf8", "truncated", "step-empty", "step-garbage"],
)
def test_a_damaged_file_is_named_and_nothing_is_written(
    tmp_path: Path, name: str, content: bytes, said: str
) -> None:
    config, mine, rid, run = _finished(tmp_path)
    (run / name).write_bytes(content)
    res = _wf(mine, config, "test", "--record", rid, "--fixtures", "fx")
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    assert f"run `{rid}` cannot be recorded as fixtures" in res.stderr
    assert f"`{run / name}`: {said}" in res.stderr
    assert not (mine / "fx").exists()


def test_a_run_parked_at_a_decided_gate_is_refused(tmp_path: Path) -> None:
    config, mine, rid = _parked(tmp_path, _gate_wf(inputs=True), "-i", "topic=ULE")
    assert _wf(mine, config, "reject", rid, "review", "--reason", "no").returncode == 0
    res = _wf(mine, config, "test", "--record", rid, "--fixtures", "fx")
    assert res.returncode == 2, res.stderr
    assert "is parked at a gate (`waiting_approval`; decided but not resumed: `review` " in (
        res.stderr
    )
    assert f"`workflow resume {rid}`" in res.stderr
    assert not (mine / "fx").exists()
    # resumed, it ends (failed: rejected), and its fixtures replay to what it came to
    assert _wf(mine, config, "resume", rid).returncode == 1
    res = _wf(mine, config, "test", "--record", rid, "--fixtures", "fx")
    assert res.returncode == 0, res.stderr
    replay = _wf(
        mine, config, "test", "wf/gate.yaml", "--fixtures", "fx", "--expect", "fx/expect.json"
    )
    assert replay.returncode == 0, replay.stdout + replay.stderr


def test_a_cancelled_run_is_refused(tmp_path: Path) -> None:
    config, mine, rid = _parked(tmp_path, _gate_wf(inputs=True), "-i", "topic=ULE")
    assert _wf(mine, config, "cancel", rid).returncode == 0
    res = _wf(mine, config, "test", "--record", rid, "--fixtures", "fx")
    assert res.returncode == 2, res.stderr
    assert "was `cancelled`: a replay runs every step to its end" in res.stderr
    assert not (mine / "fx").exists()


def test_the_undamaged_run_still_records(tmp_path: Path) -> None:
    config, mine, rid, _ = _finished(tmp_path)
    res = _wf(mine, config, "test", "--record", rid, "--fixtures", "fx")
    assert res.returncode == 0, res.stderr
    assert sorted(p.name for p in (mine / "fx").iterdir()) == [
        "expect.json",
        "gates.json",
        "inputs.json",
        "research.json",
        "review.json",
    ]
