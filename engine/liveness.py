"""Progress and liveness: what an agent says while it works, and when it fell silent.

An agent may report progress while it works (``orchestrate handoff progress --run-id R
"text"``, or ``POST {receiver}/progress`` from another host). The latest line is kept in
``<records>/progress/<runId>.json`` (``text``, ``at``, ``count``), written atomically;
``workflow status``, the live table and ``orchestrate show`` show it with its age.

``heartbeat_timeout`` (per step, else per agent; off by default) ends a delegation whose
agent has been silent that long (no progress since the dispatch or the last line) as
``lost``, the way Temporal and Step Functions heartbeats do, instead of waiting out the
whole timeout.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from engine.errors import UsageError
from engine.files import check_id, parse_iso, utcnow_iso, write_json_atomic

PROGRESS_DIR = "progress"
#: Longest progress line kept (longer text is cut).
MAX_PROGRESS = 500


def progress_path(records_dir: Path, run_id: str) -> Path:
    """Where the latest progress line of ``run_id`` is kept."""
    check_id(run_id, "run id")
    return records_dir / PROGRESS_DIR / f"{run_id}.json"


def report_progress(records_dir: Path, run_id: str, text: str) -> dict[str, Any]:
    """Record ``text`` as the latest progress line of ``run_id``; return what was written."""
    from engine.record import read_json
    from engine.redact import redact

    line = " ".join(text.split())
    if not line:
        raise UsageError("the progress text is empty: say what you are doing.")
    path = progress_path(records_dir, run_id)
    before = read_json(path)
    count = int(before.get("count", 0)) + 1 if isinstance(before, dict) else 1
    data = {"text": redact(line[:MAX_PROGRESS]), "at": utcnow_iso(), "count": count}
    write_json_atomic(path, data)
    return data


def latest_progress(records_dir: Path, run_id: str) -> dict[str, Any] | None:
    """The latest progress line of ``run_id`` with its ``age_s``, or None."""
    from engine.record import read_json

    data = read_json(progress_path(records_dir, run_id))
    if not isinstance(data, dict) or not isinstance(data.get("text"), str):
        return None
    try:
        age = max(0.0, time.time() - parse_iso(str(data["at"])).timestamp())
    except (KeyError, ValueError):
        age = None
    return {**data, "age_s": None if age is None else round(age, 1)}


def progress_note(records_dir: Path, run_id: str) -> str | None:
    """``"text" (12 s ago)`` for tables and ``orchestrate show``, or None."""
    p = latest_progress(records_dir, run_id)
    if p is None:
        return None
    age = p.get("age_s")
    return f"{p['text']}" + (f" ({age:.0f} s ago)" if isinstance(age, float) else "")


class Heartbeat:
    """When a delegation's agent counts as lost: silent for ``timeout`` seconds.

    ``last_sign`` is the later of the dispatch and the latest progress line (its file's
    mtime, so no clock is trusted but this host's).
    """

    def __init__(self, records_dir: Path, run_id: str, timeout: float) -> None:
        self.path = progress_path(records_dir, run_id)
        self.timeout = timeout
        self.started = time.time()

    def last_sign(self) -> float:
        """Wall-clock time of the last sign of life."""
        try:
            return max(self.started, os.stat(self.path).st_mtime)
        except OSError:
            return self.started

    def silent_for(self) -> float:
        """Seconds since the last sign of life."""
        return max(0.0, time.time() - self.last_sign())

    def left(self) -> float:
        """Seconds until the agent counts as lost (<= 0: it is)."""
        return self.timeout - self.silent_for()
