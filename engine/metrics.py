"""Statistics over delegation records and workflow runs: what ``metrics text|json`` shows.

``compute_metrics(handoffs_dir)`` reads, one file at a time and keeping only the numbers
it needs (a few floats per record, for the percentiles)::

    <handoffs_dir>/<runId>.json          delegation records (handoff fields + ``envelope``),
                                         or plain handoffs never recorded (``unrecorded``)
    <handoffs_dir>/sub/<runId>.json      records of sub-delegations
    <handoffs_dir>/.pending/*.json       envelopes of delegations still in flight (counted)
    <handoffs_dir>/rejected/*            refused handoff files (counted, not parsed: each
                                         one already has an ``invalid`` record)
    <handoffs_dir>/workflows/<run-id>/   summary.json (else a replay of events.jsonl)

and skips ``.tmp-*`` and every other hidden entry (``.pool/``, ``.workspaces/``), and files
that do not end in ``.json``. A file that cannot be read, parsed or understood is counted
and listed under ``files``; it never stops the report.

``render_text(doc)`` turns the document into aligned tables (rich, rendered to a string).
Percentiles are nearest-rank (see ``percentile``). The document's contract is
``schemas/metrics.schema.json``; docs/metrics.md explains every figure.
"""

from __future__ import annotations

import json
import math
import os
import re
import socket
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from engine.errors import UsageError
from engine.handoff import STATUSES as HANDOFF_STATUSES
from engine.record import INBOX_DIR, OUTCOMES
from engine.states import Confidence, RunState, StepState
from engine.store import waiter_alive

SCHEMA_VERSION = "1.0"
CONFIDENCES = (*(c.value for c in Confidence), "none")
#: ``engine.states.RunState`` values.
RUN_STATUSES = tuple(s.value for s in RunState)
#: ``engine.states.StepState`` values.
STEP_STATUSES = tuple(s.value for s in StepState)
#: At most this many problem files are listed by path (all of them are counted).
MAX_LISTED = 100
_CHUNK = 1 << 18

_SUB_DIR = "sub"
_PENDING_DIR = ".pending"
_REJECTED_DIR = "rejected"
_RUNS_DIR = "workflows"
# Membership is tested against tuples, not sets: a value from a file may be a list or an
# object, which a set lookup would refuse with a TypeError (unhashable).
_CONF = tuple(c.value for c in Confidence)
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(s|m|h|d|w)")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_MAX_SINCE_S = 100 * 366 * 86400


def _short(text: str) -> str:
    return text if len(text) <= 40 else text[:40] + "…"


# ----------------------------------------------------------------------------- small parts


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """Turn ``--since`` text (``24h``, ``7d``, ``30m``, ``90s``, ``2w`` or an ISO date or
    date-time; naive means UTC) into an aware UTC datetime; raise ``UsageError`` otherwise.
    """
    value = text.strip()
    now = now or datetime.now(UTC)
    m = _DURATION.fullmatch(value.lower())
    if m:
        seconds = float(m.group(1)) * _UNIT_S[m.group(2)] if len(m.group(1)) <= 12 else math.inf
        if seconds > _MAX_SINCE_S:
            raise UsageError(
                f"`--since {_short(text)}` reaches back more than 100 years; give a shorter "
                "duration (e.g. `30d`) or an ISO date."
            )
        return now - timedelta(seconds=seconds)
    try:
        if len(value) > 64:
            raise ValueError(value)
        when = datetime.fromisoformat(value.replace("z", "Z").replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(
            f"`--since {_short(text)}`: expected a duration such as `24h`, `7d`, `30m` or an ISO "
            "date such as `2026-11-21` or `2026-11-21T08:00:00Z`."
        ) from None
    try:
        return when.astimezone(UTC) if when.tzinfo else when.replace(tzinfo=UTC)
    except (OverflowError, ValueError):
        raise UsageError(f"`--since {_short(text)}` is out of range; give a real date.") from None


def percentile(values: Iterable[float], p: float) -> float | None:
    """The ``p``-th percentile of ``values`` by nearest rank; None when there are none.

    Nearest rank: sort the n values and take the one at rank ``ceil(p / 100 * n)`` (at
    least 1). It is always one of the values; with one value every percentile is it.
    """
    ordered = sorted(values)
    return _nearest_rank(ordered, p)


def _nearest_rank(ordered: Sequence[float], p: float) -> float | None:
    n = len(ordered)
    if n == 0:
        return None
    # p * n first, then / 100: p / 100 * n is off by an ulp for some inputs (0.07 * 100 is
    # 7.000000000000001), and ceil would then skip to the next rank.
    rank = math.ceil(round(p * n, 9) / 100)
    return ordered[min(n, max(1, rank)) - 1]


def _dist(values: list[float]) -> dict[str, Any]:
    """``{"count", "p50", "p95", "max"}`` of a list of milliseconds (sorted in place)."""
    values.sort()
    if not values:
        return {"count": 0, "p50": None, "p95": None, "max": None}
    return {
        "count": len(values),
        "p50": round(_nearest_rank(values, 50) or 0.0, 3),
        "p95": round(_nearest_rank(values, 95) or 0.0, 3),
        "max": round(values[-1], 3),
    }


def _num(value: Any) -> float | None:
    """A finite, non-negative number from JSON, else None (bools are not numbers here)."""
    kind = type(value)  # exact types: called ~5 times per record, isinstance costs more
    if kind is float:
        return value if 0.0 <= value < math.inf else None
    if kind is int:
        return float(value) if value >= 0 else None
    return None


def _read(path: str) -> bytes:
    """The bytes of a file: os-level calls, cheaper than ``open()`` for 100,000 small files."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)  # a FIFO must not hang
    try:
        data = os.read(fd, _CHUNK)
        if len(data) < _CHUNK:  # a short read of a regular file is its end
            return data
        chunks = [data]
        while data:
            data = os.read(fd, _CHUNK)
            chunks.append(data)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _when(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        t = datetime.fromisoformat(value)  # 3.11 reads a trailing Z
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def _rate(by_status: dict[str, int], total: int) -> float | None:
    if not total:
        return None
    return round((by_status["complete"] + by_status["partial"]) / total, 4)


# ----------------------------------------------------------------------------- accumulators


class _Group:
    """Counts and numbers of one agent or one caller -> target edge."""

    __slots__ = (
        "n",
        "by_status",
        "latency",
        "sub",
        "unrecorded",
        "late",
        "confidence",
        "usage_records",
        "tokens_in",
        "tokens_out",
        "cost",
        "models",
        "token_wait",
        "repaired",
        "repairs",
    )

    def __init__(self) -> None:
        self.n = 0
        self.by_status = dict.fromkeys(OUTCOMES, 0)
        self.latency: list[float] = []
        self.sub = 0
        self.unrecorded = 0
        self.late = 0
        self.confidence = dict.fromkeys(CONFIDENCES, 0)
        self.usage_records = 0
        self.tokens_in = 0
        self.tokens_out = 0
        self.cost = 0.0
        self.models: dict[str, int] = {}
        self.token_wait: list[float] = []
        self.repaired = 0  # delegations that needed at least one repair
        self.repairs = 0  # repair messages sent

    def add(self, other: _Group) -> None:
        """Fold ``other`` into this group (the totals are the sum of the agents)."""
        self.n += other.n
        self.sub += other.sub
        self.unrecorded += other.unrecorded
        self.late += other.late
        for k, v in other.by_status.items():
            self.by_status[k] += v
        for k, v in other.confidence.items():
            self.confidence[k] += v
        self.latency.extend(other.latency)
        self.token_wait.extend(other.token_wait)
        self.repaired += other.repaired
        self.repairs += other.repairs
        self.usage_records += other.usage_records
        self.tokens_in += other.tokens_in
        self.tokens_out += other.tokens_out
        self.cost += other.cost
        for m, c in other.models.items():
            self.models[m] = self.models.get(m, 0) + c

    def agent_doc(self) -> dict[str, Any]:
        """The ``agents.<name>`` object."""
        return {
            "delegations": self.n,
            "sub_delegations": self.sub,
            "unrecorded": self.unrecorded,
            "late": self.late,
            "by_status": self.by_status,
            "success_rate": _rate(self.by_status, self.n),
            "latency_ms": _dist(self.latency),
            "confidence": self.confidence,
            "usage": self.usage_doc(),
            "token_wait_ms": _dist(self.token_wait),
            "repairs": self.repairs_doc(),
        }

    def repairs_doc(self) -> dict[str, Any]:
        """How often the agent needed a corrective message (``envelope.repairs``)."""
        rate = round(self.repaired / self.n, 4) if self.n else None
        return {"delegations": self.repaired, "messages": self.repairs, "rate": rate}

    def edge_doc(self, caller: str, target: str) -> dict[str, Any]:
        """One item of ``edges``."""
        return {
            "caller": caller,
            "target": target,
            "count": self.n,
            "by_status": self.by_status,
            "success_rate": _rate(self.by_status, self.n),
            "latency_ms": _dist(self.latency),
            "repairs": self.repairs_doc(),
        }

    def usage_doc(self) -> dict[str, Any]:
        return {
            "records": self.usage_records,
            "input_tokens": self.tokens_in,
            "output_tokens": self.tokens_out,
            "cost": round(self.cost, 6),
            "models": dict(sorted(self.models.items())),
        }


class _Steps:
    """One step of one workflow, over its runs."""

    __slots__ = ("n", "by_status", "durations", "retries")

    def __init__(self) -> None:
        self.n = 0
        self.by_status = dict.fromkeys(STEP_STATUSES, 0)
        self.durations: list[float] = []
        self.retries = 0

    def doc(self) -> dict[str, Any]:
        """The ``workflows.<name>.steps.<id>`` object."""
        return {
            "count": self.n,
            "by_status": self.by_status,
            "duration_ms": _dist(self.durations),
            "retries": self.retries,
            "skipped": self.by_status["skipped"],
        }


class _Workflow:
    """One workflow, over its runs."""

    __slots__ = ("runs", "by_status", "durations", "gate_waits", "retries", "skipped", "steps")

    def __init__(self) -> None:
        self.runs = 0
        self.by_status = dict.fromkeys(RUN_STATUSES, 0)
        self.durations: list[float] = []
        self.gate_waits: list[float] = []
        self.retries = 0
        self.skipped = 0
        self.steps: dict[str, _Steps] = {}

    def doc(self, token_waits: list[float]) -> dict[str, Any]:
        """The ``workflows.<name>`` object."""
        st = self.by_status
        finished = st["complete"] + st["failed"] + st["cancelled"]
        return {
            "runs": self.runs,
            "by_status": st,
            "success_rate": round(st["complete"] / finished, 4) if finished else None,
            "duration_ms": _dist(self.durations),
            "gate_wait_ms": _gate(self.gate_waits),
            "retries": self.retries,
            "skipped_steps": self.skipped,
            "token_wait_ms": _dist(token_waits),
            "steps": {sid: step.doc() for sid, step in self.steps.items()},
        }


class _Scan:
    """Everything one pass over a handoffs directory accumulates."""

    def __init__(
        self,
        root: str,
        since: datetime | None,
        agent: str | None,
        workflow: str | None,
        caller: str | None,
    ) -> None:
        self.root = root
        self.since = since
        self.agent = agent
        self.workflow = workflow
        self.caller = caller
        self.agents: dict[str, _Group] = {}
        self.edges: dict[tuple[str, str], _Group] = {}
        self.workflows: dict[str, _Workflow] = {}
        self.scanned = 0
        self.excluded = 0
        self.invalid = 0
        self.invalid_files: list[dict[str, str]] = []
        self.rejected = 0
        self.in_flight: dict[str, int] = {}
        self.orphaned = 0
        self.host = socket.gethostname()
        self.step_waits: dict[str, list[float]] = {}  # workflow -> its steps' token waits

    # -- problems -------------------------------------------------------------------

    def bad(self, path: str, reason: str) -> None:
        self.invalid += 1
        if len(self.invalid_files) < MAX_LISTED:
            self.invalid_files.append({"path": os.path.relpath(path, self.root), "reason": reason})

    # -- delegation records -----------------------------------------------------------

    def scan_records(self, directory: str, *, sub: bool) -> None:
        try:
            it = os.scandir(directory)
        except FileNotFoundError:
            return
        except OSError as exc:
            self.bad(directory, f"unreadable directory: {exc.strerror or exc}")
            return
        recorded: set[str] = set()
        with it:
            for entry in it:
                name = entry.name
                if name[0] == "." or not name.endswith(".json"):
                    continue
                recorded.add(name)
                data = self.load(entry.path)
                if data is not _MISSING:
                    self.record(data, entry.path, sub)
        # Handoffs delivered to the inbox that were never recorded (nobody waited for
        # them): counted by their own status, as `unrecorded`.
        try:
            inbox = os.scandir(os.path.join(directory, INBOX_DIR))
        except OSError:
            return
        with inbox:
            for entry in inbox:
                name = entry.name
                if name[0] == "." or not name.endswith(".json") or name in recorded:
                    continue
                if "." in name[: -len(".json")]:
                    # `<runId>.<n>.json`: a second delivery kept beside the first (run ids
                    # have no dots); its record lists it under `also_received`.
                    continue
                data = self.load(entry.path)
                if data is not _MISSING:
                    self.record(data, entry.path, sub)

    def load(self, path: str) -> Any:
        """Parse one JSON file; on a problem, note it and return ``_MISSING``."""
        try:
            raw = _read(path)
        except FileNotFoundError:
            if os.path.lexists(path):
                self.bad(path, "unreadable: a symbolic link to nothing")
            # else it was moved away meanwhile (to rejected/, or replaced): not a problem
            return _MISSING
        except IsADirectoryError:
            self.bad(path, "unreadable: a directory, not a file")
            return _MISSING
        except OSError as exc:
            self.bad(path, f"unreadable: {exc.strerror or exc}")
            return _MISSING
        self.scanned += 1
        try:
            return json.loads(raw)
        except UnicodeDecodeError:
            self.bad(path, "not JSON: the bytes are not UTF-8 text")
        except json.JSONDecodeError as exc:
            # cut short: the parser ran out of text (in a string, or after the last value)
            cut = exc.pos >= len(raw.rstrip()) or exc.msg.startswith("Unterminated string")
            what = "truncated JSON" if cut else "invalid JSON"
            self.bad(path, f"{what}: {exc.msg} (line {exc.lineno}, column {exc.colno})")
        except ValueError as exc:
            self.bad(path, f"invalid JSON: {exc}")
        except (RecursionError, MemoryError):
            self.bad(path, "invalid JSON: nested too deeply (or too large) to read")
        return _MISSING

    def record(self, data: Any, path: str, sub: bool) -> None:
        """Count one delegation record (or plain handoff), if it passes the filters."""
        if not isinstance(data, dict):
            self.bad(path, f"not a record: the JSON is {_kind(data)}, not an object")
            return
        env = data.get("envelope")
        if isinstance(env, dict):
            outcome = env.get("outcome")
            agent = env.get("target") or data.get("agent")
            caller = env.get("caller")
            when = env.get("dispatched_at") or env.get("created_at") or data.get("timestamp")
            if outcome not in OUTCOMES:
                self.bad(
                    path, "not a record: `envelope.outcome` is not one of " + ", ".join(OUTCOMES)
                )
                return
        elif env is None:
            outcome = data.get("status")
            agent = data.get("agent")
            caller = None
            when = data.get("timestamp")
            if outcome not in HANDOFF_STATUSES:
                self.bad(
                    path, "not a handoff: `status` is not one of " + ", ".join(HANDOFF_STATUSES)
                )
                return
        else:
            self.bad(path, "not a record: `envelope` is not an object")
            return
        if not isinstance(agent, str) or not agent:
            self.bad(path, "not a record: no `agent` (or `envelope.target`)")
            return
        if not isinstance(caller, str) or not caller:
            caller = None
        if (
            (self.agent is not None and agent != self.agent)
            or (self.caller is not None and caller != self.caller)
            or (self.workflow is not None and _label(env, "workflow") != self.workflow)
        ):
            self.excluded += 1
            return
        if self.since is not None:
            t = _when(when)
            if t is None or t < self.since:
                self.excluded += 1
                return

        g = self.agents.get(agent)
        if g is None:
            g = self.agents[agent] = _Group()
        g.n += 1
        g.by_status[outcome] += 1
        if sub:
            g.sub += 1
        conf = data.get("confidence")
        g.confidence[conf if conf in _CONF else "none"] += 1
        latency = None
        if env is None:
            g.unrecorded += 1
        else:
            latency = _num(env.get("duration_ms"))
            if latency is not None:
                g.latency.append(latency)
            if env.get("late") is True:
                g.late += 1
            repairs = env.get("repairs")
            repaired = len(repairs) if isinstance(repairs, list) else 0
            if repaired:
                g.repaired += 1
                g.repairs += repaired
            wait = _num(env.get("token_wait_ms"))
            if wait is not None:
                g.token_wait.append(wait)
                flow = _label(env, "workflow")
                if type(flow) is str:
                    self.step_waits.setdefault(flow, []).append(wait)
        usage = data.get("usage")
        if isinstance(usage, dict):
            g.usage_records += 1
            g.tokens_in += int(_num(usage.get("input_tokens")) or 0)
            g.tokens_out += int(_num(usage.get("output_tokens")) or 0)
            g.cost += _num(usage.get("cost")) or 0.0
            model = usage.get("model")
            if isinstance(model, str) and model:
                g.models[model] = g.models.get(model, 0) + 1
        if caller is not None:
            e = self.edges.get((caller, agent))
            if e is None:
                e = self.edges[(caller, agent)] = _Group()
            e.n += 1
            e.by_status[outcome] += 1
            if env is not None and isinstance(env.get("repairs"), list) and env["repairs"]:
                e.repaired += 1
                e.repairs += len(env["repairs"])
            if latency is not None:
                e.latency.append(latency)

    def scan_pending(self, directory: str) -> None:
        """Count delegations dispatched and not yet recorded (``.pending/``)."""
        try:
            it = os.scandir(os.path.join(directory, _PENDING_DIR))
        except OSError:
            return
        with it:
            for entry in it:
                if entry.name[0] == "." or not entry.name.endswith(".json"):
                    continue
                env = self.load(entry.path)
                if not isinstance(env, dict):
                    if env is not _MISSING:
                        self.bad(entry.path, "not an envelope: the JSON is not an object")
                    continue
                if env.get("outcome") not in (None, "dispatched"):
                    continue  # a timeout or refusal kept for a late handoff: recorded already
                target = env.get("target")
                if not isinstance(target, str):
                    continue
                if (
                    (self.agent is not None and target != self.agent)
                    or (self.caller is not None and env.get("caller") != self.caller)
                    or (self.workflow is not None and _label(env, "workflow") != self.workflow)
                ):
                    continue
                if self.since is not None:
                    t = _when(env.get("created_at"))
                    if t is None or t < self.since:
                        continue
                self.in_flight[target] = self.in_flight.get(target, 0) + 1
                if not waiter_alive(env, host=self.host):
                    self.orphaned += 1

    def count_rejected(self, directory: str) -> None:
        try:
            with os.scandir(os.path.join(directory, _REJECTED_DIR)) as it:
                self.rejected += sum(1 for e in it if e.name[0] != ".")
        except OSError:
            pass

    # -- workflow runs ------------------------------------------------------------------

    def scan_runs(self, directory: str) -> None:
        try:
            it = os.scandir(directory)
        except FileNotFoundError:
            return
        except OSError as exc:
            self.bad(directory, f"unreadable directory: {exc.strerror or exc}")
            return
        with it:
            for entry in it:
                if entry.name[0] == "." or not entry.is_dir():
                    continue
                summary = self.run_summary(entry.path)
                if summary is not None:
                    self.run(summary)

    def run_summary(self, path: str) -> dict[str, Any] | None:
        """summary.json, or a replay of the journal when there is none (or it is broken)."""
        spath = os.path.join(path, "summary.json")
        if os.path.lexists(spath):
            data = self.load(spath)
            if data is not _MISSING:
                if _summary_ok(data):
                    return data  # type: ignore[no-any-return]
                self.bad(spath, "not a run summary: needs `workflow`, a known `status` and `steps`")
        if not os.path.exists(os.path.join(path, "run.json")):
            self.bad(path, "not a workflow run: no `run.json`")
            return None
        try:
            from engine.runs import replay, summarize

            self.scanned += 1
            data = summarize(replay(Path(path)))
        except Exception as exc:  # a broken run is reported, never a crash
            self.bad(path, f"cannot replay the run: {exc}")
            return None
        return data if _summary_ok(data) else None

    def run(self, s: dict[str, Any]) -> None:
        """Count one workflow run (its summary), if it passes the filters."""
        steps = s["steps"]
        name = s["workflow"]
        if (
            (self.workflow is not None and name != self.workflow)
            or (self.caller is not None and s.get("caller") != self.caller)
            or (
                self.agent is not None
                and not any(
                    isinstance(st, dict) and st.get("agent") == self.agent for st in steps.values()
                )
            )
        ):
            self.excluded += 1
            return
        if self.since is not None:
            t = _when(s.get("started_at"))
            if t is None or t < self.since:
                self.excluded += 1
                return
        w = self.workflows.get(name)
        if w is None:
            w = self.workflows[name] = _Workflow()
        w.runs += 1
        w.by_status[s["status"]] += 1
        duration = _num(s.get("duration_ms"))
        if duration is not None and s["status"] not in ("running", "waiting_approval"):
            w.durations.append(duration)
        gate = _num(s.get("gate_wait_ms"))
        if gate:
            w.gate_waits.append(gate)
        retries = s.get("retries")
        if isinstance(retries, int) and not isinstance(retries, bool) and retries > 0:
            w.retries += retries
        for sid, st in steps.items():
            if not isinstance(st, dict) or st.get("status") not in STEP_STATUSES:
                continue
            row = w.steps.get(sid)
            if row is None:
                row = w.steps[sid] = _Steps()
            row.n += 1
            row.by_status[st["status"]] += 1
            if st["status"] == "skipped":
                w.skipped += 1
            d = _num(st.get("duration_ms"))
            if d is not None:
                row.durations.append(d)
            attempts = st.get("attempts")
            if isinstance(attempts, int) and not isinstance(attempts, bool) and attempts > 1:
                row.retries += attempts - 1

    # -- the document ---------------------------------------------------------------------

    def document(self, handoffs_dir: Path, exists: bool) -> dict[str, Any]:
        """The metrics document (schemas/metrics.schema.json)."""
        total = _Group()
        agents: dict[str, Any] = {}
        for name in sorted(self.agents):
            agents[name] = self.agents[name].agent_doc()  # sorts its lists: fold them after
            total.add(self.agents[name])
        edges = [e.edge_doc(caller, target) for (caller, target), e in sorted(self.edges.items())]
        workflows = {
            name: self.workflows[name].doc(self.step_waits.get(name, []))
            for name in sorted(self.workflows)
        }
        run_states = dict.fromkeys(RUN_STATUSES, 0)
        for w in self.workflows.values():
            for k, v in w.by_status.items():
                run_states[k] += v
        gate_all = [x for w in self.workflows.values() for x in w.gate_waits]
        step_waits = [x for waits in self.step_waits.values() for x in waits]
        runs = sum(w.runs for w in self.workflows.values())
        return {
            "schemaVersion": SCHEMA_VERSION,
            "generated_at": datetime.now(UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "handoffs_dir": str(handoffs_dir),
            "filters": {
                "since": self.since.isoformat().replace("+00:00", "Z") if self.since else None,
                "agent": self.agent,
                "workflow": self.workflow,
                "caller": self.caller,
            },
            "percentiles": "nearest-rank",
            "totals": {
                "delegations": total.n,
                "sub_delegations": total.sub,
                "unrecorded": total.unrecorded,
                "late": total.late,
                "by_status": total.by_status,
                "success_rate": _rate(total.by_status, total.n),
                "latency_ms": _dist(total.latency),
                "confidence": total.confidence,
                "usage": total.usage_doc(),
                "workflow_runs": runs,
            },
            "agents": agents,
            "edges": edges,
            "workflows": workflows,
            "waiting": {
                "token_wait_ms": _dist(total.token_wait),
                "step_token_wait_ms": _dist(step_waits),
                "gate_wait_ms": _gate(gate_all),
                "runs_waiting_approval": run_states["waiting_approval"],
                "runs_running": run_states["running"],
                "in_flight": {
                    "count": sum(self.in_flight.values()),
                    "agents": dict(sorted(self.in_flight.items())),
                    "orphaned": self.orphaned,
                },
            },
            "files": {
                "exists": exists,
                "scanned": self.scanned,
                "excluded_by_filters": self.excluded,
                "invalid": self.invalid,
                "invalid_files": self.invalid_files,
                "rejected_handoffs": self.rejected,
            },
        }


_MISSING: Any = object()


def _kind(value: Any) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    return "a number"


def _label(env: Any, key: str) -> Any:
    labels = env.get("labels") if isinstance(env, dict) else None
    return labels.get(key) if isinstance(labels, dict) else None


def _summary_ok(data: Any) -> bool:
    return (
        isinstance(data, dict)
        and isinstance(data.get("workflow"), str)
        and data.get("status") in RUN_STATUSES
        and isinstance(data.get("steps"), dict)
    )


def _gate(values: list[float]) -> dict[str, Any]:
    total = round(sum(values), 3)
    return {**_dist(values), "total": total}


# ----------------------------------------------------------------------------- entry points


def compute_metrics(
    handoffs_dir: Path,
    *,
    since: datetime | None = None,
    agent: str | None = None,
    workflow: str | None = None,
    caller: str | None = None,
    reconcile: bool = True,
) -> dict[str, Any]:
    """Scan ``handoffs_dir`` and return the metrics document (``schemas/metrics.schema.json``).

    Filters: records dispatched (or created) at or after ``since``; delegations to
    ``agent`` (and workflow runs with a step run by it); delegations by ``caller`` (and
    runs started for it); runs of ``workflow`` (and the delegations of its steps). With
    ``reconcile`` (the default), handoffs that arrived after their delegation gave up are
    first merged into records (``engine.record.reconcile``), as every reader does.
    """
    root = os.fspath(handoffs_dir)
    if since is not None and since.tzinfo is None:
        since = since.replace(tzinfo=UTC)
    scan = _Scan(root, since, agent, workflow, caller)
    exists = os.path.isdir(root)
    sub = os.path.join(root, _SUB_DIR)
    if exists:
        if reconcile:
            _reconcile(Path(root))
            _reconcile(Path(sub))
        scan.scan_records(root, sub=False)
        scan.scan_records(sub, sub=True)
        scan.scan_pending(root)
        scan.scan_pending(sub)
        scan.count_rejected(root)
        scan.count_rejected(sub)
        scan.scan_runs(os.path.join(root, _RUNS_DIR))
    return scan.document(handoffs_dir, exists)


def _reconcile(records_dir: Path) -> None:
    """Merge late handoffs, when there is a pending envelope at all (cheap otherwise)."""
    try:
        with os.scandir(records_dir / _PENDING_DIR) as it:
            if not any(e.name.endswith(".json") for e in it):
                return
        from engine.record import reconcile

        reconcile(records_dir)
    except Exception:  # a read-only or damaged directory: report what is there
        return


# ----------------------------------------------------------------------------- text


def render_text(doc: dict[str, Any], *, width: int = 140) -> str:
    """The metrics document as aligned text tables (rich, no colour), ending in a newline."""
    import io

    from rich.console import Console
    from rich.text import Text

    buf = io.StringIO()
    console = Console(file=buf, width=width, color_system=None, force_terminal=False)
    for block in _blocks(doc):
        if isinstance(block, str):
            console.print(Text(block))  # Text: a name from a file is never read as markup
        else:
            title, columns, rows = block
            console.print()
            console.print(_table(title, columns, rows))
    # rich pads every line to the table's width: trailing blanks only get in the way
    return "\n".join(line.rstrip() for line in buf.getvalue().rstrip().splitlines()) + "\n"


#: A line of text, or a table: (title, column names, rows of cell texts).
_Block = str | tuple[str, Sequence[str], Sequence[Sequence[str]]]
_LEFT_COLUMNS = frozenset(
    ("agent", "caller", "target", "workflow", "step", "statuses", "models", "where")
)
_WRAPPING_COLUMNS = frozenset(("statuses", "models"))
_STEP_COLUMNS = ("step", "runs", "statuses", "p50", "p95", "retries", "skipped")


def _table(title: str, columns: Sequence[str], rows: Sequence[Sequence[str]]) -> Any:
    from rich import box
    from rich.table import Table
    from rich.text import Text

    t = Table(
        title=Text(title),  # Text: a workflow name is never read as markup
        title_justify="left",
        box=box.SIMPLE,
        pad_edge=False,
        show_edge=False,
        collapse_padding=True,
    )
    for col in columns:
        t.add_column(
            col,
            justify="left" if col in _LEFT_COLUMNS else "right",
            no_wrap=col not in _WRAPPING_COLUMNS,
            min_width=len(col),
        )
    for row in rows:
        t.add_row(*(Text(cell) for cell in row))
    return t


def _blocks(doc: dict[str, Any]) -> list[_Block]:
    totals, files = doc["totals"], doc["files"]
    out: list[_Block] = [_headline(doc)]
    if totals["delegations"] == 0 and totals["workflow_runs"] == 0:
        where = doc["handoffs_dir"]
        if not files["exists"]:
            why = f"`{where}` does not exist"
        elif files["excluded_by_filters"]:
            why = f"nothing in `{where}` matches the filters"
        else:
            why = f"`{where}` holds no delegation records or workflow runs"
        return [*out, f"No records: {why}.", *_file_lines(files)]
    lat = totals["latency_ms"]
    out.append(
        f"{totals['delegations']} delegations ({totals['sub_delegations']} sub-delegations, "
        f"{totals['unrecorded']} unrecorded, {totals['late']} late) · success "
        f"{_pct(totals['success_rate'])} · latency p50 {_ms(lat['p50'])}, p95 "
        f"{_ms(lat['p95'])} · {totals['workflow_runs']} workflow runs"
    )
    if doc["agents"]:
        out.extend(_agent_tables(doc))
    if doc["edges"]:
        rows = [
            [e["caller"], e["target"], str(e["count"]), _pct(e["success_rate"]),
             _mix(e["by_status"]), *_lat(e["latency_ms"])]
            for e in doc["edges"]
        ]  # fmt: skip
        cols = ("caller", "target", "count", "success", "statuses", "p50", "p95", "max")
        out.append(("Caller -> target", cols, rows))
    if doc["workflows"]:
        out.extend(_workflow_tables(doc["workflows"]))
    out.extend(_waiting_blocks(doc["waiting"]))
    out.extend(_file_lines(files))
    return out


def _agent_tables(doc: dict[str, Any]) -> list[_Block]:
    agents, by_status = doc["agents"], doc["totals"]["by_status"]
    # the six statuses always; errored and cancelled only when they occur
    shown = [k for k in OUTCOMES if k not in ("errored", "cancelled") or by_status[k]]
    rows: list[Sequence[str]] = [
        [name, str(a["delegations"]), _pct(a["success_rate"]),
         *(str(a["by_status"][k]) for k in shown), *_lat(a["latency_ms"])]
        for name, a in agents.items()
    ]  # fmt: skip
    usage_rows: list[Sequence[str]] = []
    for name, a in agents.items():
        u = a["usage"]
        has = u["records"] > 0
        usage_rows.append([
            name, *(str(a["confidence"][c]) for c in CONFIDENCES), str(a["sub_delegations"]),
            str(a["unrecorded"]), str(a["late"]),
            f"{u['input_tokens']:,}" if has else "—", f"{u['output_tokens']:,}" if has else "—",
            f"{u['cost']:.4f}" if has else "—", ", ".join(u["models"]) or "—",
        ])  # fmt: skip
    return [
        ("Agents", ("agent", "delegations", "success", *shown, "p50", "p95", "max"), rows),
        ("Confidence and usage",
         ("agent", "high", "medium", "low", "none", "sub", "unrecorded", "late", "tokens in",
          "tokens out", "cost", "models"),
         usage_rows),
    ]  # fmt: skip


def _workflow_tables(workflows: dict[str, Any]) -> list[_Block]:
    rows: list[Sequence[str]] = []
    for name, w in workflows.items():
        st, gate = w["by_status"], w["gate_wait_ms"]
        rows.append([
            name, str(w["runs"]), str(st["complete"]), str(st["failed"]), str(st["cancelled"]),
            str(st["waiting_approval"]), str(st["running"]), *_lat(w["duration_ms"])[:2],
            _ms(gate["total"]) if gate["count"] else "—", str(w["retries"]),
            str(w["skipped_steps"]),
        ])  # fmt: skip
    cols = ("workflow", "runs", "complete", "failed", "cancelled", "waiting", "running", "p50",
            "p95", "gate wait", "retries", "skipped")  # fmt: skip
    out: list[_Block] = [("Workflows", cols, rows)]
    for name, w in workflows.items():
        steps = [
            [sid, str(s["count"]), _mix(s["by_status"]), *_lat(s["duration_ms"])[:2],
             str(s["retries"]), str(s["skipped"])]
            for sid, s in w["steps"].items()
        ]  # fmt: skip
        out.append((f"Steps of {name}", _STEP_COLUMNS, steps))
    return out


def _waiting_blocks(waiting: dict[str, Any]) -> list[_Block]:
    rows: list[Sequence[str]] = []
    for label, d in (
        ("pool token (delegations)", waiting["token_wait_ms"]),
        ("pool token (workflow steps)", waiting["step_token_wait_ms"]),
        ("approval gates (runs)", waiting["gate_wait_ms"]),
    ):
        total = _ms(d["total"]) if "total" in d and d["count"] else ""
        rows.append([label, str(d["count"]), *_lat(d), total])
    flight = waiting["in_flight"]
    line = f"In flight: {flight['count']} delegation(s)"
    if flight["count"]:
        line += " (" + ", ".join(f"{k} {v}" for k, v in flight["agents"].items()) + ")"
    if flight["orphaned"]:
        line += f", {flight['orphaned']} of them orphaned (their process is gone)"
    runs = (
        f"Workflow runs waiting for approval: {waiting['runs_waiting_approval']} · running: "
        f"{waiting['runs_running']}"
    )
    return [("Waiting", ("where", "count", "p50", "p95", "max", "total"), rows), line, runs]


def _file_lines(files: dict[str, Any]) -> list[_Block]:
    out: list[_Block] = []
    if files["invalid"]:
        lines = [f"Problem files: {files['invalid']} (counted nowhere else)"]
        lines += [f"  {f['path']}: {f['reason']}" for f in files["invalid_files"]]
        if files["invalid"] > len(files["invalid_files"]):
            lines.append(f"  ... and {files['invalid'] - len(files['invalid_files'])} more")
        out.append("\n".join(lines))
    if files["rejected_handoffs"]:
        out.append(f"Refused handoff files kept in rejected/: {files['rejected_handoffs']}")
    return out


def _lat(d: dict[str, Any]) -> list[str]:
    """p50, p95 and max of a distribution, as text."""
    return [_ms(d["p50"]), _ms(d["p95"]), _ms(d["max"])]


def _headline(doc: dict[str, Any]) -> str:
    f = doc["filters"]
    parts = [f"Metrics of {doc['handoffs_dir']}"]
    if f["since"]:
        parts.append(f"since {f['since']}")
    for key in ("agent", "workflow", "caller"):
        if f[key]:
            parts.append(f"{key} {f[key]}")
    return " · ".join(parts)


def _mix(by_status: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in by_status.items() if v) or "—"


def _pct(rate: float | None) -> str:
    return "—" if rate is None else f"{rate * 100:.1f}%"


def _ms(value: float | None) -> str:
    """Milliseconds as a short human duration: ``850 ms``, ``1.42 s``, ``3m 05s``, ``2h 10m``."""
    if value is None:
        return "—"
    if value < 1000:
        return f"{value:.0f} ms"
    s = value / 1000
    if s < 60:
        return f"{s:.2f} s"
    if s < 3600:
        return f"{int(s // 60)}m {int(s % 60):02d}s"
    return f"{int(s // 3600)}h {int(s % 3600 // 60):02d}m"
