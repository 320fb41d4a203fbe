"""Moving history between a handoffs directory and a PostgreSQL store, both ways.

``import_files(root, store)`` copies what a file store holds into the database: final
records, pending envelopes and progress lines of delegations and sub-delegations, the
handoffs agents
delivered (byte for byte: those already recorded, those refused, those nobody recorded
yet), and workflow runs (metadata, journal in order, step results, summary, cancel
requests). It is what ``orchestrate store migrate --from file://DIR --to postgresql://…``
runs; running it again changes nothing (rows are upserted, a handoff or a journal that is
there already is not copied twice).

``export_files(store, root)`` writes the database back as a handoffs directory of the
file layout (``engine.store.file``): for a backup, or to read the database with tools
that scan files (``metrics`` uses it: ``metrics_of``).

Example::

    report = import_files(Path("handoffs"), PostgresRunStore(Database.from_url(url)))
    print(report.as_text())   # "12 records, 3 pending, 14 handoffs, 2 runs (40 events)"
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine import record as _rec
from engine.files import SAFE_ID, write_json_atomic
from engine.states import HandoffStatus
from engine.store.file import (
    CANCEL_FILE,
    EVENTS,
    PROGRESS_DIR,
    RUN_META,
    RUNS_DIR,
    SUB_DIR,
    SUMMARY,
)
from engine.store.postgres import PostgresRunStore

if TYPE_CHECKING:
    from engine.config import Config

__all__ = ["Transfer", "export_files", "file_store_problem", "import_files", "metrics_of"]

_INBOX_NAME = re.compile(r"^([A-Za-z0-9][A-Za-z0-9_-]{0,127})(?:\.(\d+))?\.json$")
_AGENT_STATUSES = tuple(s.value for s in HandoffStatus)


@dataclass
class Transfer:
    """What a transfer copied (counts)."""

    records: int = 0
    pending: int = 0
    handoffs: int = 0
    runs: int = 0
    events: int = 0
    steps: int = 0
    #: Found already there (an import repeated): records, pending, handoffs, runs.
    already: dict[str, int] = field(default_factory=dict)

    def seen(self, kind: str) -> None:
        """Count one ``kind`` (``records``, ``pending``, ``handoffs``, ``runs``) that the
        target already held, so was not copied again."""
        self.already[kind] = self.already.get(kind, 0) + 1

    def as_text(self) -> str:
        """One line: ``N records, N pending, N handoffs, N runs (N events, N steps)``,
        then ``; already there: N records, ...`` when some were (nothing copied twice)."""
        text = (
            f"{self.records} records, {self.pending} pending, {self.handoffs} handoffs, "
            f"{self.runs} runs ({self.events} events, {self.steps} steps)"
        )
        if any(self.already.values()):
            kinds = ("records", "pending", "handoffs", "runs")
            text += "; already there: " + ", ".join(
                f"{self.already.get(k, 0)} {k}" for k in kinds
            )
        return text


def _json_files(directory: Path) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(directory) as it:
            return sorted(
                (e for e in it if e.name[0] != "." and e.name.endswith(".json") and e.is_file()),
                key=lambda e: e.name,
            )
    except OSError:
        return []


def _read_bytes(path: str) -> bytes | None:
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except OSError:
        return None


#: What a records directory holds once the engine used it (``engine.store.file``):
#: ``.pending/`` (made by the first delegation), ``inbox/`` (where agents deliver) and,
#: at the top, ``.pool/`` (the host's token pool).
_RECORDS_MARKERS = (_rec.PENDING_DIR, _rec.INBOX_DIR)
_STORE_LAYOUT = (
    "delegation records `<run-id>.json`, `.pending/`, `inbox/`, `.pool/`, `sub/`, "
    "`workflows/<run-id>/run.json`"
)


def _is_records_dir(directory: Path) -> bool:
    """``directory`` holds a marker directory or an engine record (``OSError`` if unreadable)."""
    if any((directory / m).is_dir() for m in _RECORDS_MARKERS):
        return True
    return any(
        SAFE_ID.match(e.name[: -len(".json")])
        and _rec.is_engine_record(_rec.read_json(Path(e.path)))
        for e in _json_files(directory)
    )


def _is_file_store(root: Path) -> bool:
    if _is_records_dir(root) or (root / ".pool").is_dir():
        return True
    if (root / SUB_DIR).is_dir() and _is_records_dir(root / SUB_DIR):
        return True
    try:
        with os.scandir(root / RUNS_DIR) as it:
            return any(e.is_dir() and (Path(e.path) / RUN_META).is_file() for e in it)
    except (FileNotFoundError, NotADirectoryError):
        return False


def file_store_problem(root: Path) -> str | None:
    """Why ``root`` (given as ``--from``) is not a handoffs directory to import, or None.

    A handoffs directory is one the engine used: it holds at least one of what
    ``engine.store.file`` lays out (``_STORE_LAYOUT``, or ``.pool/``), at its top or in
    ``sub/``; one with nothing recorded yet still has the marker directories, and imports
    nothing without an error. An empty directory, a source tree or the directory above
    the handoffs directory is refused (with the subdirectory that is one, if any)."""
    given = f"`--from file://{root}`"
    try:
        if not root.is_dir():
            return f"{given}: `{root}` is not a directory; give the handoffs directory to import."
        if _is_file_store(root):
            return None
        inside = sorted(
            str(Path(e.path)) for e in os.scandir(root)
            if e.is_dir() and not e.name.startswith(".") and _is_file_store(Path(e.path))
        )  # fmt: skip
    except OSError as exc:
        return f"{given}: `{root}` cannot be read ({exc.strerror or exc}); nothing was imported."
    hint = (
        f" `{inside[0]}` is one: `--from file://{inside[0]}`."
        if inside
        else " Give the `handoffs_dir` of the host whose history you import "
        "(e.g. `--from file://./handoffs`)."
    )
    return (
        f"{given}: `{root}` is not a handoffs directory: it holds none of what one holds "
        f"({_STORE_LAYOUT}), so there is nothing to import; nothing was changed.{hint}"
    )


def import_files(root: Path, store: PostgresRunStore) -> Transfer:
    """Copy the file store at ``root`` into ``store`` (see the module docstring)."""
    done = Transfer()
    conn = store._conn()
    for sub in (False, True):
        records = Path(root) / SUB_DIR if sub else Path(root)
        with conn.transaction():
            _import_records(conn, store, records, sub, done)
    runs_root = Path(root) / RUNS_DIR
    try:
        run_dirs = sorted(e.path for e in os.scandir(runs_root) if e.is_dir())
    except OSError:
        run_dirs = []
    for run_dir in run_dirs:
        if not SAFE_ID.match(os.path.basename(run_dir)):
            continue
        with conn.transaction():
            _import_run(conn, store, Path(run_dir), done)
    return done


def _import_records(
    conn: Any, store: PostgresRunStore, records: Path, sub: bool, done: Transfer
) -> None:
    """One records folder (top level or ``sub/``): final records, pending envelopes,
    progress lines, then the received and refused handoff files."""
    finals: dict[str, dict[str, Any]] = {}
    for entry in _json_files(records):
        run_id = entry.name[: -len(".json")]
        data = _rec.read_json(Path(entry.path)) if SAFE_ID.match(run_id) else None
        if isinstance(data, dict) and _rec.is_engine_record(data):
            finals[run_id] = data["envelope"]
            have = conn.execute(
                "SELECT record FROM delegations WHERE run_id = %s AND sub = %s", (run_id, sub)
            ).fetchone()
            if have and have[0] == json.loads(json.dumps(data)):
                done.seen("records")
                continue
            store._install(conn, run_id, sub, data, drop=False)
            done.records += 1
    for entry in _json_files(records / _rec.PENDING_DIR):
        run_id = entry.name[: -len(".json")]
        env = _rec.read_json(Path(entry.path))
        if SAFE_ID.match(run_id) and isinstance(env, dict):
            have = conn.execute(
                "SELECT envelope FROM delegations WHERE run_id = %s AND sub = %s", (run_id, sub)
            ).fetchone()
            if have and have[0] is not None:
                done.seen("pending")
                continue
            store.pending(run_id, env, sub=sub)
            done.pending += 1
    for entry in _json_files(records / PROGRESS_DIR):
        line = _rec.read_json(Path(entry.path))
        if SAFE_ID.match(entry.name[: -len(".json")]) and isinstance(line, dict):
            store.write_progress(entry.name[: -len(".json")], line, sub=sub)
    for folder, state in ((_rec.INBOX_DIR, "inbox"), (_rec.REJECTED_DIR, "rejected")):
        for entry in _json_files(records / folder):
            _import_handoff(conn, entry, state, sub, finals, done)


def _import_handoff(
    conn: Any,
    entry: os.DirEntry[str],
    state: str,
    sub: bool,
    finals: dict[str, dict[str, Any]],
    done: Transfer,
) -> None:
    """One file of ``inbox/`` or ``rejected/``, as a handoff row in the state it has:
    the one its record took is ``recorded``, another beside a final record ``kept``."""
    m = _INBOX_NAME.match(entry.name)
    body = _read_bytes(entry.path)
    if m is None or body is None:
        return
    run_id, n = m.group(1), int(m.group(2) or 1)
    env = finals.get(run_id)
    kept = state
    if state == "inbox" and env is not None:
        if Path(str(env.get("handoff_file") or "")).name == entry.name:
            kept = "recorded"
        elif env.get("outcome") in _AGENT_STATUSES:
            kept = "kept"
    if state == "rejected":
        n += 10_000  # after the run's inbox handoffs, in the order they were kept
    row = conn.execute(
        "INSERT INTO handoffs (run_id, sub, n, body, state) VALUES (%s, %s, %s, %s, %s) "
        "ON CONFLICT (run_id, sub, n) DO NOTHING RETURNING id",
        (run_id, sub, n, body, kept),
    ).fetchone()
    if row:
        done.handoffs += 1
    else:
        done.seen("handoffs")


def _import_run(conn: Any, store: PostgresRunStore, run_dir: Path, done: Transfer) -> None:
    run_id = run_dir.name
    meta = _rec.read_json(run_dir / RUN_META)
    if meta is None:
        return
    have = conn.execute("SELECT meta FROM runs WHERE run_id = %s", (run_id,)).fetchone()
    if have and have[0] == json.loads(json.dumps(meta)):
        done.seen("runs")  # imported before: its events and steps with it
        return
    store.create_run(run_id, meta)
    done.runs += 1
    have = conn.execute("SELECT count(*) FROM run_events WHERE run_id = %s", (run_id,)).fetchone()
    if not have or not have[0]:
        try:
            lines = (run_dir / EVENTS).read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            lines = []
        for line in lines:
            try:
                json.loads(line)
            except ValueError:
                continue  # a torn line: the file store's readers leave it out too
            conn.execute(
                "INSERT INTO run_events (run_id, body) VALUES (%s, %s)", (run_id, line)
            )
            done.events += 1
    for entry in _json_files(run_dir):
        name = entry.name
        if name in (RUN_META, SUMMARY):
            continue
        data = _rec.read_json(Path(entry.path))
        if isinstance(data, dict) and SAFE_ID.match(name[: -len(".json")]):
            store.write_step(run_id, name[: -len(".json")], data)
            done.steps += 1
    summary = _rec.read_json(run_dir / SUMMARY)
    if isinstance(summary, dict):
        store.write_summary(run_id, summary)
    if (run_dir / CANCEL_FILE).exists():
        store.request_cancel(run_id)


def export_files(store: PostgresRunStore, root: Path) -> Transfer:
    """Write everything ``store`` holds under ``root`` in the file layout."""
    done = Transfer()
    conn = store._conn()
    root = Path(root)
    for sub in (False, True):
        records = root / SUB_DIR if sub else root
        rows = conn.execute(
            "SELECT run_id, envelope, record FROM delegations WHERE sub = %s", (sub,)
        ).fetchall()
        for run_id, env, record in rows:
            if _rec.is_engine_record(record):
                write_json_atomic(records / f"{run_id}.json", record)
                done.records += 1
            if isinstance(env, dict):
                write_json_atomic(records / _rec.PENDING_DIR / f"{run_id}.json", env)
                done.pending += 1
        handoffs = conn.execute(
            "SELECT run_id, n, body, state FROM handoffs WHERE sub = %s ORDER BY run_id, n",
            (sub,),
        ).fetchall()
        for run_id, line in conn.execute(
            "SELECT run_id, line FROM progress WHERE sub = %s", (sub,)
        ).fetchall():
            write_json_atomic(records / PROGRESS_DIR / f"{run_id}.json", line)
        rejected: dict[str, int] = {}
        for run_id, n, body, state in handoffs:
            if state == "rejected":
                rejected[run_id] = rejected.get(run_id, 0) + 1
                path = records / _rec.REJECTED_DIR / f"{run_id}.{rejected[run_id]}.json"
            else:
                path = records / _rec.INBOX_DIR / (
                    f"{run_id}.json" if n == 1 else f"{run_id}.{n}.json"
                )
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(bytes(body))
            done.handoffs += 1
    for run_id in store.list_runs():
        run_dir = root / RUNS_DIR / run_id
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(run_dir / RUN_META, store.read_run(run_id))
        done.runs += 1
        bodies = conn.execute(
            "SELECT body FROM run_events WHERE run_id = %s ORDER BY id", (run_id,)
        ).fetchall()
        with open(run_dir / EVENTS, "w", encoding="utf-8") as fh:
            for (body,) in bodies:
                fh.write(body + "\n")
                done.events += 1
        steps = conn.execute(
            "SELECT step_id, data FROM step_results WHERE run_id = %s", (run_id,)
        ).fetchall()
        for step_id, data in steps:
            write_json_atomic(run_dir / f"{step_id}.json", data)
            done.steps += 1
        summary = store.read_summary(run_id)
        if summary is not None:
            write_json_atomic(run_dir / SUMMARY, summary)
        if store.cancel_requested(run_id):
            (run_dir / CANCEL_FILE).write_text("requested")
    return done


def metrics_of(where: PostgresRunStore | Config, **filters: Any) -> dict[str, Any]:
    """``engine.metrics.compute_metrics`` over the database of a store or of a config's
    ``store:`` (late handoffs reconciled first, then a temporary export; ``handoffs_dir``
    in the document is the store's URL)."""
    from engine.metrics import compute_metrics
    from engine.store import open_store

    if isinstance(where, PostgresRunStore):
        store = where
    else:
        opened = open_store(where)
        assert isinstance(opened, PostgresRunStore)
        store = opened
    store.reconcile(sub=False)
    store.reconcile(sub=True)
    with tempfile.TemporaryDirectory(prefix="orch-metrics-") as tmp:
        export_files(store, Path(tmp))
        doc = compute_metrics(Path(tmp), reconcile=False, **filters)
    doc["handoffs_dir"] = store.location
    return doc
