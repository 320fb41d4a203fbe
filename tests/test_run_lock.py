"""The run lock (``.lock``, flock) of the file store: a look at it (``claimed``, as
``workflow status`` and the server's ``/wait`` take one) never makes a claim fail, and
two looks never see each other as the executor."""

from __future__ import annotations

import fcntl
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from engine.errors import RunStateError
from engine.files import new_run_id
from engine.store import FileRunStore

CLAIMS = 2000
MARKS = 2000


def _run(tmp_path: Path) -> tuple[FileRunStore, str]:
    store = FileRunStore(tmp_path / "handoffs")
    run_id = new_run_id("wf")
    store.create_run(run_id, {"runId": run_id, "workflow": "w", "plan": {}})
    return store, run_id


def test_claims_succeed_while_another_thread_keeps_looking(tmp_path: Path) -> None:
    """Each look holds the lock for an instant; a claim that meets one waits it out.
    Before, a claim that met a look failed `is being executed right now` (naming the pid
    of the process that looked): the server's `/wait` looked while its driver thread
    resumed the run just answered, and the run stayed parked. One claim in a dozen met
    the look here, so a few thousand claims fail without that wait."""
    store, run_id = _run(tmp_path)
    stop = threading.Event()
    looks = 0

    def look() -> None:
        nonlocal looks
        while not stop.is_set():
            store.claimed(run_id)
            looks += 1

    looker = threading.Thread(target=look, daemon=True)
    looker.start()
    try:
        for _ in range(CLAIMS):
            with store.claim(run_id):
                pass
    finally:
        stop.set()
        looker.join(60)
    assert looks > 0
    assert not store.claimed(run_id)


def test_claims_succeed_while_another_process_keeps_looking(tmp_path: Path) -> None:
    store, run_id = _run(tmp_path)
    root = Path(__file__).resolve().parents[1]
    source = (
        "import sys\nfrom pathlib import Path\nfrom engine.store import FileRunStore\n"
        f"store = FileRunStore(Path({str(store.root)!r}))\n"
        "print('looking', flush=True)\n"
        f"while not Path({str(tmp_path / 'stop')!r}).exists():\n"
        f"    store.claimed({run_id!r})\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", source], stdout=subprocess.PIPE, text=True, cwd=root
    )
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "looking"
        for _ in range(CLAIMS):
            with store.claim(run_id):
                pass
    finally:
        (tmp_path / "stop").touch()
        assert child.wait(60) == 0
        assert child.stdout is not None
        child.stdout.close()


def test_a_look_does_not_take_another_look_for_the_executor(tmp_path: Path) -> None:
    """A look in progress (a shared lock) is not an executor to a second look."""
    store, run_id = _run(tmp_path)
    with open(store.run_locator(run_id) / ".lock", "a+", encoding="utf-8") as fh:
        fcntl.flock(fh, fcntl.LOCK_SH | fcntl.LOCK_NB)
        assert not store.claimed(run_id)


def test_an_executor_is_refused_at_once_and_named(tmp_path: Path) -> None:
    """Another executor of this process holds the run: the claim is refused, naming it."""
    import os

    store, run_id = _run(tmp_path)
    with store.claim(run_id):
        other = FileRunStore(store.root)
        with pytest.raises(RunStateError, match=f"pid {os.getpid()}"):
            with other.claim(run_id):
                pass
    assert (store.run_locator(run_id) / ".lock").read_text() == ""  # no executor named
    with FileRunStore(store.root).claim(run_id):
        pass


def test_a_server_takes_its_mark_while_another_process_looks_for_it(tmp_path: Path) -> None:
    """``run_owner`` (every local `workflow status`) looks at the server's mark with a
    shared lock; a server starting at that instant served without its mark, and the
    runs it owned looked unowned (`workflow resume` advised beside it)."""
    import json
    import os

    from engine.config import config_from_dict
    from engine.serve import _presence
    from tests.helpers import demo_config

    cfg = config_from_dict(demo_config(tmp_path))
    owned = cfg.handoffs_dir / "serve"
    owned.mkdir(parents=True)
    (owned / "wf-x.json").write_text(json.dumps({"runId": "wf-x", "kind": "workflow"}))
    source = (
        "from pathlib import Path\nfrom engine.serve import run_owner\n"
        "print('looking', flush=True)\n"
        f"while not Path({str(tmp_path / 'stop')!r}).exists():\n"
        f"    run_owner(Path({str(cfg.handoffs_dir)!r}), 'wf-x')\n"
    )
    root = Path(__file__).resolve().parents[1]
    child = subprocess.Popen(
        [sys.executable, "-c", source], stdout=subprocess.PIPE, text=True, cwd=root
    )
    marks = []
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "looking"
        for n in range(MARKS):
            with _presence(cfg, f"http://127.0.0.1:{n}"):
                marks.append(json.loads((owned / ".server.lock").read_text()))
    finally:
        (tmp_path / "stop").touch()
        assert child.wait(60) == 0
        assert child.stdout is not None
        child.stdout.close()
    pid = os.getpid()
    assert marks == [{"pid": pid, "url": f"http://127.0.0.1:{n}"} for n in range(MARKS)]
