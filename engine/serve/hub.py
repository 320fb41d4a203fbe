"""The live event feed: tails every run's journal, numbers events, wakes subscribers.

The journals stay the truth. The hub only notices new lines (at once when the server's own
runs report, within ``poll`` seconds for runs of other processes), gives each event a
global sequence number for ``/v1/events?after=N``, and wakes the SSE streams waiting on it.
A run's own cursor is its journal line number, which survives restarts.

With a PostgreSQL store the journals are its ``run_events`` rows: the hub is woken by the
``NOTIFY`` every appended event sends (from any process on any host), reads the new rows
of that run, and looks at every run once per ``FULL_SCAN_PG`` seconds (each ``poll``
seconds while it cannot listen).
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from engine.files import utcnow_iso
from engine.redact import redact_obj

#: Events kept for ``after=N`` queries over all runs (older cursors get ``reset``).
BUFFER = 20000
#: With a PostgreSQL store, every run is looked at this often (seconds) while the hub
#: listens: a ``NOTIFY`` names each run that got an event, so this only repairs a miss.
FULL_SCAN_PG = 30.0


def read_journal(path: Path, after: int = 0) -> list[dict[str, Any]]:
    """The complete lines of a journal after line ``after``, each with its ``line`` number."""
    out = []
    try:
        with open(path, encoding="utf-8") as fh:
            for number, text in enumerate(fh, 1):
                if number <= after or not text.endswith("\n"):
                    continue
                try:
                    ev = json.loads(text)
                except ValueError:
                    continue
                if isinstance(ev, dict) and "event" in ev:
                    out.append({**ev, "line": number})
    except FileNotFoundError:
        pass
    return out


class EventHub:
    """Tails ``runs_dir/*/events.jsonl`` (or, given a ``PostgresRunStore`` as ``store``,
    its ``run_events``) inside the server's event loop.

    ``buffer[i]`` holds the event numbered ``base + i``; ``wire[i]`` is its JSON text,
    made (and redacted) once however many streams send it.
    """

    def __init__(
        self,
        runs_dir: Path,
        *,
        on_event: Callable[[str, dict[str, Any]], None] | None = None,
        poll: float = 0.5,
        keep: int = BUFFER,
        store: Any = None,
    ) -> None:
        self.runs_dir = runs_dir
        # The database of a PostgreSQL store (None: the journals are files in runs_dir).
        self._db: Any = getattr(store, "db", None) if hasattr(store, "watch_run") else None
        self._all = False
        self._untap: Callable[[], None] | None = None
        self.on_event = on_event
        self.poll = poll
        self.keep = keep
        self.seq = 0
        self.base = 1
        self.buffer: list[dict[str, Any]] = []
        self.wire: list[str] = []
        self._tails: dict[str, tuple[int, int]] = {}  # run id -> (byte offset, lines read)
        self._dirty: set[str] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._changed: asyncio.Event | None = None
        #: True once the server stops (``stop``): waits and streams end at once.
        self.stopping = False

    # -- lifecycle ------------------------------------------------------------------------

    def stop(self) -> None:
        """The server is stopping: set ``stopping`` and wake every wait and stream (they
        end, instead of being cancelled when the shutdown's grace runs out). Safe from any
        thread and from a signal handler."""
        self.stopping = True
        loop = self._loop
        if loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(self._notify)
            except RuntimeError:  # the loop closed meanwhile
                pass

    def prime(self) -> None:
        """Skip what the journals hold already: the feed starts now."""
        if self._db is not None:
            from engine.store.postgres_signals import journal_lengths

            for run_id, count in journal_lengths(self._db).items():
                self._tails[run_id] = (0, count)
            return
        for run_id, path in self._journals():
            try:
                with open(path, "rb") as fh:
                    data = fh.read()
            except OSError:
                continue
            # up to the last complete line: a line being written is read by ``scan``
            # once complete, and line numbers count every line (as ``read_journal``'s)
            end = data.rfind(b"\n") + 1
            self._tails[run_id] = (end, data.count(b"\n", 0, end))

    async def run(self) -> None:
        """Scan the runs that reported when woken, and every run each ``poll`` seconds."""
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._changed = asyncio.Event()
        last_full = 0.0
        try:
            while True:
                try:
                    await asyncio.wait_for(self._wake.wait(), self.poll)
                except TimeoutError:
                    pass
                self._wake.clear()
                now = self._loop.time()
                if self._all or now - last_full >= self._full_every():
                    last_full = now
                    self._all = False
                    self._dirty.clear()
                    self.scan()
                else:
                    dirty, self._dirty = self._dirty, set()
                    self.scan(dirty)
        finally:
            if self._untap is not None:
                self._untap()
                self._untap = None

    def _full_every(self) -> float:
        """Seconds between looks at every run: ``poll``, or with a PostgreSQL store
        ``FULL_SCAN_PG`` while its ``NOTIFY``s arrive (listening again if they stopped)."""
        if self._db is None:
            return self.poll
        from engine.store.postgres_signals import listener

        hub = listener(self._db)
        if self._untap is not None and hub.listening():
            return FULL_SCAN_PG
        try:
            if self._untap is None:
                self._untap = hub.tap(self._heard)
            else:
                hub.ensure()
        except Exception:  # noqa: BLE001 - the database is away: poll until it is back
            return self.poll
        return self.poll  # (re)started listening: look at everything once

    def _heard(self, payload: str | None) -> None:
        """A ``NOTIFY`` on the run channel (listening thread): wake for its run."""
        if payload is None:
            self.wake(None)
        elif payload.startswith("e:"):
            self.wake(payload[2:])

    def wake(self, run_id: str | None = None) -> None:
        """Ask for a scan now (of ``run_id``, else of every run); safe from any thread."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(self._mark, run_id)
            except RuntimeError:  # the loop closed meanwhile
                pass

    def _mark(self, run_id: str | None) -> None:
        if run_id is None:
            self._all = True
        else:
            self._dirty.add(run_id)
        if self._wake is not None:
            self._wake.set()

    # -- feeding --------------------------------------------------------------------------

    def _journals(self) -> list[tuple[str, Path]]:
        try:
            names = os.listdir(self.runs_dir)
        except OSError:
            return []
        return [(n, self.runs_dir / n / "events.jsonl") for n in names]

    def scan(self, only: set[str] | None = None) -> int:
        """Read new journal lines (of ``only``, else of every run); return how many."""
        if self._db is not None:
            return self._scan_db(only)
        added = 0
        journals = (
            self._journals()
            if only is None
            else [(n, self.runs_dir / n / "events.jsonl") for n in only]
        )
        for run_id, path in journals:
            try:
                size = path.stat().st_size
            except OSError:
                continue
            offset, lines = self._tails.get(run_id, (0, 0))
            if size <= offset:
                continue
            with open(path, "rb") as fh:
                fh.seek(offset)
                chunk = fh.read(size - offset)
            end = chunk.rfind(b"\n")
            if end < 0:
                continue  # a line still being written
            for raw in chunk[: end + 1].splitlines():
                lines += 1
                added += self._add_line(run_id, lines, raw)
            self._tails[run_id] = (offset + end + 1, lines)
        if added:
            self._notify()
        return added

    def _scan_db(self, only: set[str] | None) -> int:
        """``scan`` over a PostgreSQL store's ``run_events`` (a run's line is its event's
        number in the run, as ``/v1/runs/{id}/events`` numbers it)."""
        from engine.store.postgres_signals import journal_after, journal_lengths

        added = 0
        try:
            if only is None:
                lengths = journal_lengths(self._db)
                only = {n for n, count in lengths.items() if count > self._tails.get(n, (0, 0))[1]}
            for run_id in sorted(only):
                lines = self._tails.get(run_id, (0, 0))[1]
                for number, raw in journal_after(self._db, run_id, lines):
                    lines = number
                    added += self._add_line(run_id, number, raw)
                self._tails[run_id] = (0, lines)
        except Exception:  # noqa: BLE001 - the database is away: the next scan catches up
            pass
        if added:
            self._notify()
        return added

    def publish(self, run_id: str, kind: str, **fields: Any) -> None:
        """Add an event that no journal holds (a delegation's start and end); any thread."""
        ev = {"event": kind, "runId": run_id, "at": utcnow_iso(), **fields}
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            loop.call_soon_threadsafe(self._publish_now, ev)
        except RuntimeError:
            pass

    def _publish_now(self, ev: dict[str, Any]) -> None:
        self._add(ev)
        self._notify()

    def _add_line(self, run_id: str, line: int, raw: str | bytes) -> int:
        """Add journal line number ``line`` of run ``run_id``: 1 when it is an event,
        0 when it is not JSON or not an event (skipped, as replay skips it)."""
        try:
            ev = json.loads(raw)
        except ValueError:
            return 0
        if not (isinstance(ev, dict) and "event" in ev):
            return 0
        self._add({**ev, "runId": run_id, "line": line})
        return 1

    def _add(self, ev: dict[str, Any]) -> None:
        self.seq += 1
        ev = redact_obj({**ev, "seq": self.seq})
        self.buffer.append(ev)
        self.wire.append(json.dumps(ev, ensure_ascii=False, default=str))
        if len(self.buffer) > 2 * self.keep:  # trim in chunks: amortised O(1)
            cut = len(self.buffer) - self.keep
            del self.buffer[:cut]
            del self.wire[:cut]
            self.base += cut
        if self.on_event is not None:
            self.on_event(str(ev.get("runId")), ev)

    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = asyncio.Event()

    # -- reading --------------------------------------------------------------------------

    def changed(self) -> asyncio.Event:
        """An event set at the next addition (take it before checking ``since``)."""
        if self._changed is None:
            self._changed = asyncio.Event()
        return self._changed

    def oldest(self) -> int:
        """The sequence number of the oldest event kept (``seq + 1`` when none)."""
        return self.base if self.buffer else self.seq + 1

    def since(
        self, after: int, run_id: str | None = None, limit: int = 1000
    ) -> list[tuple[dict[str, Any], str]]:
        """``(event, its JSON)`` with ``seq > after`` (of one run, or all), oldest first."""
        out: list[tuple[dict[str, Any], str]] = []
        i = max(0, after + 1 - self.base)
        n = len(self.buffer)
        while i < n and len(out) < limit:
            ev = self.buffer[i]
            if run_id is None or ev.get("runId") == run_id:
                out.append((ev, self.wire[i]))
            i += 1
        return out
