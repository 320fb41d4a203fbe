"""New files are linked into place whole (an unnamed O_TMPFILE file, or a temp file where
the platform has none): never half-written, never over another file, no temp names left,
and the engine's directory watcher wakes on them."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from engine import files
from engine.watch import HandoffWatcher


@pytest.fixture(params=["unnamed", "temp file"])
def way(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both ways of placing a file: O_TMPFILE + link, and the temp-file fallback."""
    if request.param == "temp file":
        monkeypatch.setattr(files, "_O_TMPFILE", 0)
    elif not files._O_TMPFILE:
        pytest.skip("no O_TMPFILE or /proc/self/fd here")
    return str(request.param)


def test_write_json_new_places_once_and_never_replaces(tmp_path: Path, way: str) -> None:
    target = tmp_path / "records" / "r1.json"  # the directory is created on first write
    assert files.write_json_new(target, {"n": 1}) is True
    assert files.write_json_new(target, {"n": 2}) is False
    assert json.loads(target.read_text()) == {"n": 1}
    assert os.listdir(target.parent) == ["r1.json"]
    assert stat.S_IMODE(target.stat().st_mode) == 0o600


def test_fresh_atomic_write_creates_then_replaces(tmp_path: Path, way: str) -> None:
    target = tmp_path / "run" / "step.json"
    files.write_json_atomic(target, {"state": "running"}, fresh=True)
    assert json.loads(target.read_text()) == {"state": "running"}
    files.write_json_atomic(target, {"state": "done"}, fresh=True)  # a file is there
    assert json.loads(target.read_text()) == {"state": "done"}
    assert os.listdir(target.parent) == ["step.json"]


def test_a_value_json_cannot_hold_leaves_nothing(tmp_path: Path, way: str) -> None:
    with pytest.raises(ValueError):
        files.write_json_new(tmp_path / "x.json", {"n": float("nan")})
    with pytest.raises(ValueError):
        files.write_json_atomic(tmp_path / "y.json", {"n": float("inf")}, fresh=True)
    assert os.listdir(tmp_path) == []


def test_the_watcher_wakes_on_a_linked_file(tmp_path: Path, way: str) -> None:
    watcher = HandoffWatcher(tmp_path / "handoffs")
    try:
        with watcher.expect("run-1.json") as waiter:
            files.write_json_new(tmp_path / "handoffs" / "run-1.json", {"ok": True})
            assert waiter.wait(10.0) is True
    finally:
        watcher.close()


def test_made_aside_then_linked_into_a_watched_directory(tmp_path: Path, way: str) -> None:
    """``unnamed_in``: the watched directory sees the file's create, not the close of an
    unnamed file; a file already there is kept; without that directory the target's own
    directory is used."""
    from inotify_simple import INotify, flags

    watched, aside = tmp_path / "records", tmp_path / "records" / ".pending"
    aside.mkdir(parents=True)
    ino = INotify()
    try:
        ino.add_watch(str(watched), flags.CLOSE_WRITE | flags.MOVED_TO | flags.CREATE)
        assert files.write_json_new(watched / "r1.json", {"n": 1}, unnamed_in=aside) is True
        assert files.write_json_new(watched / "r1.json", {"n": 2}, unnamed_in=aside) is False
        names = [ev.name for ev in ino.read(timeout=1000)]
    finally:
        ino.close()
    assert json.loads((watched / "r1.json").read_text()) == {"n": 1}
    assert sorted(os.listdir(watched)) == [".pending", "r1.json"]
    assert os.listdir(aside) == []
    if way == "unnamed":
        assert names == ["r1.json"]  # its create only: no "#<inode>" close there
    missing = tmp_path / "no-such-dir"
    assert files.write_json_new(watched / "r2.json", {"n": 3}, unnamed_in=missing) is True
    assert json.loads((watched / "r2.json").read_text()) == {"n": 3}
    assert not missing.exists()
