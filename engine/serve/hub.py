"""The live event feed: tails every run's journal, numbers events, wakes subscribers.

The journals stay the truth. The hub only notices new lines (at once when the server's own
runs report, within ``poll`` seconds for runs of other processes), gives each event a
global sequence number for ``/v1/events?after=N``, and wakes the SSE streams waiting on it.
A run's own cursor is its journal line number, which survives restarts.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from engine.redact import redact_obj

#: Events kept for ``after=N`` queries over all runs (older cursors get ``reset``).
BUFFER = 20000


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
    """Tails ``runs_dir/*/events.jsonl`` inside the server's event loop."""

    def __init__(
        self,
        runs_dir: Path,
        *,
        on_event: Callable[[str, dict[str, Any]], None] | None = None,
        poll: float = 0.5,
    ) -> None:
        self.runs_dir = runs_dir
        self.on_event = on_event
        self.poll = poll
        self.seq = 0
        self.buffer: deque[dict[str, Any]] = deque(maxlen=BUFFER)
        self._tails: dict[str, tuple[int, int]] = {}  # run id -> (byte offset, lines read)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._changed: asyncio.Event | None = None

    # -- lifecycle ------------------------------------------------------------------------

    def prime(self) -> None:
        """Skip what the journals hold already: the feed starts now."""
        for run_id, path in self._journals():
            lines = len(read_journal(path))
            try:
                self._tails[run_id] = (path.stat().st_size, lines)
            except OSError:
                continue

    async def run(self) -> None:
        """Scan whenever woken, and every ``poll`` seconds; until cancelled."""
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._changed = asyncio.Event()
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), self.poll)
            except TimeoutError:
                pass
            self._wake.clear()
            self.scan()

    def wake(self) -> None:
        """Ask for a scan now; safe from any thread."""
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(wake.set)
            except RuntimeError:  # the loop closed meanwhile
                pass

    # -- feeding --------------------------------------------------------------------------

    def _journals(self) -> list[tuple[str, Path]]:
        try:
            names = os.listdir(self.runs_dir)
        except OSError:
            return []
        return [(n, self.runs_dir / n / "events.jsonl") for n in names]

    def scan(self) -> int:
        """Read new journal lines of every run; return how many events were added."""
        added = 0
        for run_id, path in self._journals():
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
                try:
                    ev = json.loads(raw)
                except ValueError:
                    continue
                if isinstance(ev, dict) and "event" in ev:
                    self._add({**ev, "runId": run_id, "line": lines})
                    added += 1
            self._tails[run_id] = (offset + end + 1, lines)
        if added:
            self._notify()
        return added

    def publish(self, run_id: str, kind: str, **fields: Any) -> None:
        """Add an event that no journal holds (a delegation's start and end); any thread."""
        ev = {"event": kind, "runId": run_id, **fields}
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

    def _add(self, ev: dict[str, Any]) -> None:
        self.seq += 1
        ev = redact_obj({**ev, "seq": self.seq})
        self.buffer.append(ev)
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
        return int(self.buffer[0]["seq"]) if self.buffer else self.seq + 1

    def since(
        self, after: int, run_id: str | None = None, limit: int = 1000
    ) -> list[dict[str, Any]]:
        """Events with ``seq > after`` (of one run, or all), oldest first."""
        out: list[dict[str, Any]] = []
        if after >= self.seq:
            return out
        for ev in self.buffer:
            if ev["seq"] <= after or (run_id is not None and ev.get("runId") != run_id):
                continue
            out.append(ev)
            if len(out) >= limit:
                break
        return out
