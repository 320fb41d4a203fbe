"""``FileRunStore``: the run store as a handoffs directory; the one place that knows its layout.

Layout (``<handoffs>/`` holds top-level delegations, ``<handoffs>/sub/`` sub-delegations;
each of the two is a *records directory*, see ``engine.record`` for the merge rule)::

    <records>/<runId>.json             the record: handoff fields + "envelope"
    <records>/inbox/<runId>.json       where the agent delivers (never rewritten by us)
    <records>/.pending/<runId>.json    envelope of a delegation not final yet
    <records>/.pending/.lock           one deliverer at a time (flock)
    <records>/rejected/<runId>.<n>.json  refused handoffs, kept
    <records>/progress/<runId>.json    the latest progress line (engine.liveness)
    <handoffs>/workflows/<run>/run.json      workflow, inputs, plan, fingerprint
    <handoffs>/workflows/<run>/events.jsonl  the journal (append-only)
    <handoffs>/workflows/<run>/<step>.json   one per finished step
    <handoffs>/workflows/<run>/summary.json  at the end, on pause, on cancel
    <handoffs>/workflows/<run>/CANCEL        a cancel request
    <handoffs>/workflows/<run>/.lock         held (flock) by the run's one executor

``FileHandoffSignals`` wakes waiters through inotify on the inbox and the records
directory (one watch per directory per process, ``engine.watch``), polling where inotify
is missing.
"""

from __future__ import annotations

import fcntl
import functools
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from engine import record as _rec
from engine.errors import RunStateError
from engine.files import SAFE_ID, check_id, utcnow_iso, write_json_atomic, write_json_new
from engine.redact import redact
from engine.store.liveness import process_alive
from engine.store.protocol import Delivery, Waiter

__all__ = [
    "CANCEL_FILE",
    "RUNS_DIR",
    "SUB_DIR",
    "FileHandoffSignals",
    "FileJournal",
    "FileRunStore",
    "RunLock",
    "handoff_path",
    "lock_held",
    "read_events",
    "records_dir",
]

SUB_DIR = "sub"
RUNS_DIR = "workflows"
CANCEL_FILE = "CANCEL"
RUN_META = "run.json"
EVENTS = "events.jsonl"
SUMMARY = "summary.json"
LOCK = ".lock"
PROGRESS_DIR = "progress"


class FileJournal:
    """The append-only event log of a run; one JSON object per line, thread-safe."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fh: IO[str] | None = None
        self._lock = threading.Lock()

    def append(self, kind: str, /, **fields: Any) -> dict[str, Any]:
        """Append one event (stamped with ``at``) and flush it to the OS."""
        event = {"event": kind, "at": utcnow_iso(), **fields}
        line = redact(json.dumps(event, ensure_ascii=False, default=str)) + "\n"
        with self._lock:
            if self._fh is None:
                self._fh = open(self.path, "a", encoding="utf-8")  # noqa: SIM115
            self._fh.write(line)
            self._fh.flush()
        return event

    def close(self) -> None:
        """Close the file."""
        with self._lock:
            if self._fh is not None:
                self._fh.close()
                self._fh = None


def read_numbered(path: Path) -> Iterator[tuple[int, Any]]:
    """Each parsed line of a journal with its line number; unparsable lines are left out."""
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            for number, line in enumerate(fh, 1):
                try:
                    yield number, json.loads(line)
                except (ValueError, RecursionError):
                    continue
    except FileNotFoundError:
        return


def read_events(path: Path) -> list[dict[str, Any]]:
    """Read a journal; a torn last line (a crash mid-write) is ignored."""
    return [ev for _, ev in read_numbered(path) if isinstance(ev, dict) and "event" in ev]


#: How long a claim waits for a lock that no executor names (a ``lock_held`` look in
#: this or another process holds it for an instant) before refusing, and how often it
#: tries again meanwhile (seconds).
PROBE_WAIT = 5.0
PROBE_RETRY = 0.005

# The (device, inode) of each run lock this process holds now: a lock that names this
# process's pid but is not listed here names a claim this process has released.
_HELD: set[tuple[int, int]] = set()
_HELD_LOCK = threading.Lock()


class RunLock:
    """An exclusive lock on a run directory: one process executes a run at a time.

    The holder writes its pid into ``.lock`` and empties it before releasing. A look
    (``lock_held``, e.g. ``workflow status`` or the server's ``/wait``) holds a shared
    lock for an instant; a claim that meets a lock naming no live executor is such a look
    (or an executor about to write its pid) and tries again for up to ``PROBE_WAIT``
    seconds, so that a look never makes a resume fail. ``RunStateError`` (naming the
    holder's pid) when another executor holds the run.
    """

    def __init__(self, path: Path) -> None:
        self.path = path / LOCK
        self._fh: IO[str] | None = None
        self._key: tuple[int, int] | None = None

    def __enter__(self) -> RunLock:
        fh = open(self.path, "a+", encoding="utf-8")  # noqa: SIM115
        holder = lock_past_looks(fh, lambda text: _an_executor(text.strip(), fh))
        if holder is not None:
            fh.close()
            raise RunStateError(
                f"run `{self.path.parent.name}` is being executed right now (pid "
                f"{holder.strip() or 'of another process'}); wait for it, or `workflow "
                "cancel` it."
            )
        st = os.fstat(fh.fileno())
        self._key = (st.st_dev, st.st_ino)
        with _HELD_LOCK:
            _HELD.add(self._key)
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        self._fh = fh
        return self

    def __exit__(self, *exc: object) -> None:
        fh, self._fh = self._fh, None
        if fh is None:
            return
        try:
            fh.seek(0)
            fh.truncate()  # no executor named while no executor holds it
            fh.flush()
        except OSError:
            pass
        if self._key is not None:
            with _HELD_LOCK:
                _HELD.discard(self._key)
        fcntl.flock(fh, fcntl.LOCK_UN)
        fh.close()


def lock_past_looks(fh: IO[str], holds: Callable[[str], bool]) -> str | None:
    """Take ``fh``'s exclusive ``flock``; None once taken. While another holds it, its
    text (what the holder wrote) goes to ``holds``: True names a real holder, and that
    text is returned at once; otherwise the lock is held by a look (a shared lock for an
    instant, ``lock_held``) or by a holder about to write, so it is tried again every
    ``PROBE_RETRY`` s (``flock`` has no timed wait) for up to ``PROBE_WAIT`` s, and the
    text is returned then. Used by the run lock and the server's mark."""
    deadline = time.monotonic() + PROBE_WAIT
    while True:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return None
        except BlockingIOError:
            pass
        fh.seek(0)
        text = fh.read()
        if holds(text) or time.monotonic() >= deadline:
            return text
        time.sleep(PROBE_RETRY)


def _an_executor(holder: str, fh: IO[str]) -> bool:
    """True when ``holder`` (the text of a held ``.lock``) names a live process that
    holds the claim; False for nothing, a dead pid, or this process's pid from a claim
    it has released (the lock is then held by a ``lock_held`` look, or by an executor
    that has not written its pid yet)."""
    if not holder.isdigit():
        return False
    pid = int(holder)
    if pid == os.getpid():
        st = os.fstat(fh.fileno())
        with _HELD_LOCK:
            return (st.st_dev, st.st_ino) in _HELD
    return process_alive(pid)


def lock_held(path: Path) -> bool:
    """True while some process holds the run lock of the run directory ``path``.

    The look takes a shared lock for an instant: two looks never see each other, and a
    claim that meets it waits for it (``RunLock``)."""
    try:
        fh = open(path / LOCK, "a+", encoding="utf-8")  # noqa: SIM115
    except OSError:
        return False
    try:
        fcntl.flock(fh, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        fh.close()
    return False


class FileRunStore:
    """Today's handoffs directory as a ``RunStore`` (``store: file://<dir>``)."""

    def __init__(self, handoffs_dir: Path, *, runs_root: Path | None = None) -> None:
        self.root = Path(handoffs_dir)
        self._sub_root = self.root / SUB_DIR  # asked for several times per delegation
        self._runs_root = runs_root if runs_root is not None else self.root / RUNS_DIR
        # Per thread: the delegation whose inbox file ``has_handoff`` just found, so that
        # the ``deliver`` that follows skips its own look before the lock (an lstat).
        self._found = threading.local()

    @classmethod
    def of_run(cls, run_dir: Path) -> tuple[FileRunStore, str]:
        """The store holding the run directory ``run_dir``, and the run's id."""
        run_dir = Path(run_dir)
        runs = run_dir.parent
        root = runs.parent if runs.name == RUNS_DIR else runs
        return cls(root, runs_root=runs), run_dir.name

    def __repr__(self) -> str:
        return f"FileRunStore({str(self.root)!r})"

    @property
    def location(self) -> str:
        """``file://`` and the absolute handoffs directory."""
        return f"file://{self.root}"

    # -- delegations -------------------------------------------------------------------

    def records_dir(self, *, sub: bool) -> Path:
        """The records directory of top-level (or sub-) delegations (file store only)."""
        return self._sub_root if sub else self.root

    def handoff_target(self, run_id: str, *, sub: bool) -> Path:
        """``<records>/inbox/<runId>.json``."""
        check_id(run_id, "run id")
        return Path(f"{self.records_dir(sub=sub)}/{_rec.INBOX_DIR}/{run_id}.json")

    def record_locator(self, run_id: str, *, sub: bool) -> Path:
        """``<records>/<runId>.json``."""
        check_id(run_id, "run id")
        return self.records_dir(sub=sub) / f"{run_id}.json"

    def pending(self, run_id: str, envelope: dict[str, Any], *, sub: bool) -> None:
        """Write ``.pending/<runId>.json`` atomically."""
        _rec.write_pending(self.records_dir(sub=sub), run_id, envelope)

    def read_pending(self, run_id: str, *, sub: bool) -> dict[str, Any] | None:
        """The envelope in ``.pending/<runId>.json``, or None."""
        data = _rec.read_json(_rec.pending_path(self.records_dir(sub=sub), run_id))
        return data if isinstance(data, dict) else None

    def finalize(
        self,
        run_id: str,
        envelope: dict[str, Any],
        *,
        sub: bool,
        keep_pending: bool,
        agent: str | None = None,
    ) -> tuple[Path, dict[str, Any]]:
        """Pending envelope first (so a late handoff finds it), then the record."""
        records = self.records_dir(sub=sub)
        if keep_pending:
            _rec.write_pending(records, run_id, envelope)
        data = _rec.record_of(None, envelope, run_id)
        if agent:
            data["agent"] = agent
        path = _rec.install_record(records, run_id, data)
        if not keep_pending:
            _rec.drop_pending(records, run_id)
        return path, data

    def deliver(
        self,
        run_id: str,
        *,
        sub: bool,
        envelope: dict[str, Any] | None = None,
        grace: float = 2.0,
    ) -> Delivery:
        """``engine.record.deliver`` on the run's records directory."""
        found = getattr(self._found, "run", None) == (run_id, sub)
        self._found.run = None
        return _rec.deliver(
            self.records_dir(sub=sub), run_id, envelope=envelope, grace=grace, look=not found
        )

    def is_sub(self, run_id: str) -> bool:
        """``sub/.pending/<runId>.json`` or ``sub/<runId>.json`` exists."""
        sub = self.records_dir(sub=True)
        return os.path.lexists(_rec.pending_path(sub, run_id)) or os.path.lexists(
            sub / f"{run_id}.json"
        )

    def put_handoff(self, run_id: str, handoff: dict[str, Any], *, sub: bool) -> Path:
        """``inbox/<runId>.json``, else the first free ``inbox/<runId>.<n>.json``."""
        target = self.handoff_target(run_id, sub=sub)
        stored, n = target, 1
        while not write_json_new(stored, handoff):  # never over another delivery
            n += 1
            stored = target.with_name(f"{run_id}.{n}.json")
        return stored

    def nothing_delivered(self, run_id: str, *, sub: bool) -> bool:
        """No inbox file for ``run_id`` (first or second copy) and no file at its record
        path: ``deliver`` would answer ``absent``."""
        return _rec.nothing_there(self.records_dir(sub=sub), run_id)

    def has_handoff(self, run_id: str, *, sub: bool) -> bool:
        """An inbox file for ``run_id`` exists."""
        there = os.path.lexists(self.handoff_target(run_id, sub=sub))
        self._found.run = (run_id, sub) if there else None
        return there

    def reject(
        self, run_id: str, problem: Any, envelope: dict[str, Any], *, sub: bool
    ) -> Path | None:
        """Move the inbox file to ``rejected/`` and list it in ``envelope``."""
        return _rec.refuse(
            self.records_dir(sub=sub),
            run_id,
            self.handoff_target(run_id, sub=sub),
            problem,
            envelope,
        )

    def read(self, run_id: str, *, sub: bool) -> dict[str, Any] | None:
        """The engine's record at ``<records>/<runId>.json`` (not a bare handoff)."""
        data = _rec.read_json(self.record_locator(run_id, sub=sub))
        return data if _rec.is_engine_record(data) else None

    def annotate(
        self, run_id: str, record: dict[str, Any], *, sub: bool
    ) -> tuple[Path, dict[str, Any]]:
        """Rewrite the record atomically (only over the engine's own record)."""
        path = _rec.install_record(self.records_dir(sub=sub), run_id, record)
        return path, record

    def find(self, run_id: str) -> tuple[Path, dict[str, Any]]:
        """``engine.record.find_record`` over both records directories."""
        return _rec.find_record(self.root, run_id)

    def list_pending(self, *, sub: bool) -> Iterator[tuple[str, dict[str, Any]]]:
        """Scan ``.pending/`` (temp files and unreadable envelopes left out)."""
        try:
            entries = list(os.scandir(self.records_dir(sub=sub) / _rec.PENDING_DIR))
        except OSError:
            return
        for entry in entries:
            name = entry.name
            if name[0] == "." or not name.endswith(".json"):
                continue
            env = _rec.read_json(Path(entry.path))
            if isinstance(env, dict):
                yield name[: -len(".json")], env

    def reconcile(self, *, sub: bool) -> list[Path]:
        """``engine.record.reconcile`` on the records directory."""
        return _rec.reconcile(self.records_dir(sub=sub))

    def tree(self, run_id: str) -> dict[str, Any] | None:
        """``engine.record.delegation_tree``."""
        return _rec.delegation_tree(self.root, run_id)

    # -- progress ----------------------------------------------------------------------

    def _progress_file(self, run_id: str, sub: bool) -> Path:
        check_id(run_id, "run id")
        return self.records_dir(sub=sub) / PROGRESS_DIR / f"{run_id}.json"

    def write_progress(self, run_id: str, line: dict[str, Any], *, sub: bool) -> None:
        """``<records>/progress/<runId>.json`` atomically."""
        write_json_atomic(self._progress_file(run_id, sub), line)

    def read_progress(self, run_id: str, *, sub: bool) -> dict[str, Any] | None:
        """``<records>/progress/<runId>.json`` as parsed, or None."""
        data = _rec.read_json(self._progress_file(run_id, sub))
        return data if isinstance(data, dict) else None

    # -- workflow runs -----------------------------------------------------------------

    @property
    def runs_root(self) -> Path:
        """``<handoffs>/workflows`` (file store only)."""
        return self._runs_root

    def run_locator(self, run_id: str) -> Path:
        """``<handoffs>/workflows/<run>``."""
        check_id(run_id, "workflow run id")
        return self.runs_root / run_id

    def run_exists(self, run_id: str) -> bool:
        """``run.json`` is there."""
        return (self.run_locator(run_id) / RUN_META).is_file()

    def create_run(self, run_id: str, meta: dict[str, Any]) -> Path:
        """Make the run directory and write ``run.json`` atomically."""
        path = self.run_locator(run_id)
        path.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path / RUN_META, meta)
        return path

    def read_run(self, run_id: str) -> Any:
        """``run.json`` as parsed, or None."""
        return _rec.read_json(self.run_locator(run_id) / RUN_META)

    def journal(self, run_id: str) -> FileJournal:
        """The journal file, opened for appending on first use."""
        return FileJournal(self.run_locator(run_id) / EVENTS)

    def events(self, run_id: str) -> list[tuple[int, Any]]:
        """Every parsable line of ``events.jsonl`` with its line number."""
        return list(read_numbered(self.run_locator(run_id) / EVENTS))

    def write_step(self, run_id: str, step_id: str, data: dict[str, Any]) -> None:
        """``<run>/<step>.json`` atomically."""
        path = self.run_locator(run_id) / f"{check_id(step_id, 'step id')}.json"
        write_json_atomic(path, data, fresh=True, compact=True)

    def read_step(self, run_id: str, step_id: str) -> Any:
        """``<run>/<step>.json`` as parsed, or None."""
        if not isinstance(step_id, str) or not SAFE_ID.match(step_id):
            return None
        return _rec.read_json(self.run_locator(run_id) / f"{step_id}.json")

    def write_summary(self, run_id: str, summary: dict[str, Any]) -> None:
        """``<run>/summary.json`` atomically."""
        write_json_atomic(self.run_locator(run_id) / SUMMARY, summary)

    def read_summary(self, run_id: str) -> dict[str, Any] | None:
        """``<run>/summary.json``, or None."""
        data = _rec.read_json(self.run_locator(run_id) / SUMMARY)
        return data if isinstance(data, dict) else None

    def claim(self, run_id: str) -> RunLock:
        """The run's ``.lock`` (flock; released with the process)."""
        return RunLock(self.run_locator(run_id))

    def claimed(self, run_id: str) -> bool:
        """Someone holds the run's ``.lock``."""
        return lock_held(self.run_locator(run_id))

    def request_cancel(self, run_id: str) -> None:
        """Write ``<run>/CANCEL``."""
        (self.run_locator(run_id) / CANCEL_FILE).write_text(utcnow_iso())

    def cancel_requested(self, run_id: str) -> bool:
        """``<run>/CANCEL`` exists."""
        return (self.run_locator(run_id) / CANCEL_FILE).exists()

    def list_runs(self) -> list[str]:
        """Directories of ``workflows/`` that hold a ``run.json``, by name."""
        try:
            entries = list(os.scandir(self.runs_root))
        except OSError:
            return []
        return sorted(
            e.name for e in entries if os.path.isfile(os.path.join(e.path, RUN_META))
        )


class FileHandoffSignals:
    """Wakes a delegation when its inbox name or its record path is written (inotify)."""

    def __init__(self, store: FileRunStore, *, backend: str = "auto") -> None:
        self.store = store
        self.backend = backend

    def expect(self, run_id: str, *, sub: bool) -> Waiter:
        """Watch ``inbox/<runId>.json`` and ``<runId>.json`` (where seed 004's agents
        write), through each directory's shared watcher."""
        from engine.watch import expect_any

        drop = self.store.handoff_target(run_id, sub=sub)
        return expect_any(
            [(drop.parent, drop.name), (self.store.records_dir(sub=sub), f"{run_id}.json")],
            backend=self.backend,
        )


@functools.lru_cache(maxsize=256)
def records_dir(handoffs_dir: Path, *, sub: bool = False) -> Path:
    """Where the records of top-level (or sub-) delegations are, on a file store (cached:
    a delegation asks several times)."""
    return FileRunStore(handoffs_dir).records_dir(sub=sub)


def handoff_path(handoffs_dir: Path, run_id: str, *, sub: bool = False) -> Path:
    """Where the agent delivers the handoff of ``run_id`` on a file store
    (``RunStore.handoff_target``)."""
    return FileRunStore(handoffs_dir).handoff_target(run_id, sub=sub)
