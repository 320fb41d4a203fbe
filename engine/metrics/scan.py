"""The scan: one pass over the store's records, pending envelopes and runs into the
metrics document (``schemas/metrics.schema.json``), keeping only the numbers it needs.
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
from engine.files import SAFE_ID
from engine.handoff import STATUSES as HANDOFF_STATUSES
from engine.record import (
    INBOX_DIR,
    OUTCOMES,
    PENDING_DIR,
    REJECTED_DIR,
    json_problem,
    read_json,
    record_problem,
)
from engine.states import Confidence, RunState, StepState
from engine.store import FileRunStore, waiter_alive

SCHEMA_VERSION = "1.0"
CONFIDENCES = (*(c.value for c in Confidence), "none")
#: ``engine.states.RunState`` values.
RUN_STATUSES = tuple(s.value for s in RunState)
#: ``engine.states.StepState`` values.
STEP_STATUSES = tuple(s.value for s in StepState)
#: At most this many problem files are listed by path (all of them are counted).
MAX_LISTED = 100
_CHUNK = 1 << 18

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

    def add_repairs(self, env: dict[str, Any]) -> None:
        """Count the corrective messages an envelope lists (``envelope.repairs``)."""
        repairs = env.get("repairs")
        if isinstance(repairs, list) and repairs:
            self.repaired += 1
            self.repairs += len(repairs)

    def add_usage(self, usage: dict[str, Any]) -> None:
        """Count a record's model usage (tokens, cost, model)."""
        self.usage_records += 1
        self.tokens_in += int(_num(usage.get("input_tokens")) or 0)
        self.tokens_out += int(_num(usage.get("output_tokens")) or 0)
        self.cost += _num(usage.get("cost")) or 0.0
        model = usage.get("model")
        if isinstance(model, str) and model:
            self.models[model] = self.models.get(model, 0) + 1

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

    def add_run(self, s: dict[str, Any]) -> None:
        """Count one run's summary (``summary.json``) and each of its steps."""
        self.runs += 1
        self.by_status[s["status"]] += 1
        duration = _num(s.get("duration_ms"))
        if duration is not None and s["status"] not in ("running", "waiting_approval"):
            self.durations.append(duration)
        gate = _num(s.get("gate_wait_ms"))
        if gate:
            self.gate_waits.append(gate)
        self.retries += _positive(s.get("retries"))
        for sid, st in s["steps"].items():
            if isinstance(st, dict) and st.get("status") in STEP_STATUSES:
                self.add_step(sid, st)

    def add_step(self, sid: str, st: dict[str, Any]) -> None:
        """Count one step of a run (its status is a known one)."""
        row = self.steps.get(sid)
        if row is None:
            row = self.steps[sid] = _Steps()
        row.n += 1
        row.by_status[st["status"]] += 1
        if st["status"] == "skipped":
            self.skipped += 1
        d = _num(st.get("duration_ms"))
        if d is not None:
            row.durations.append(d)
        # an attempt that carries an answer to the agent's question is not a retry
        row.retries += max(0, _positive(st.get("attempts")) - 1 - _positive(st.get("answered")))

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


#: (envelope or None, outcome, agent, caller or None, when) of one record.
_Fields = tuple[dict[str, Any] | None, str, str, str | None, Any]


class _Scan:
    """Everything one pass over a handoffs directory accumulates."""

    def __init__(
        self,
        store: FileRunStore,
        since: datetime | None,
        agent: str | None,
        workflow: str | None,
        caller: str | None,
    ) -> None:
        self.store = store
        self.root = os.fspath(store.root)
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
        #: Paths of the engine's records with a final outcome (a pending envelope beside
        #: one is stale: its delegation is not in flight).
        self.final: set[str] = set()
        #: Workflow run id -> when it ended (its summary's ``finished_at``; "" while it
        #: has not), as looked up.
        self.ended: dict[str, str] = {}
        self.host = socket.gethostname()
        self.step_waits: dict[str, list[float]] = {}  # workflow -> its steps' token waits
        self.run_ids: set[str] = set()  # run ids of the records counted so far

    # -- problems -------------------------------------------------------------------

    def bad(self, path: str, reason: str) -> None:
        self.invalid += 1
        if len(self.invalid_files) < MAX_LISTED:
            self.invalid_files.append({"path": os.path.relpath(path, self.root), "reason": reason})

    # -- delegation records -----------------------------------------------------------

    def listing(self, directory: str) -> Any:
        """``os.scandir(directory)``; None when it is missing, or unreadable (noted)."""
        try:
            return os.scandir(directory)
        except FileNotFoundError:
            return None
        except OSError as exc:
            self.bad(directory, f"unreadable directory: {exc.strerror or exc}")
            return None

    def scan_records(self, directory: str, *, sub: bool) -> None:
        it = self.listing(directory)
        if it is None:
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
                    self.record(data, entry.path, sub, name=name)
                    if _final_record(data):
                        self.final.add(entry.path)
        # Handoffs delivered to the inbox that were never recorded (nobody waited for
        # them): counted by their own status, as `unrecorded`.
        for entry in _json_entries(os.path.join(directory, INBOX_DIR)):
            name = entry.name
            if name in recorded:
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
        except (ValueError, RecursionError, MemoryError):
            # the slow path only for a damaged file: the phrase every reader uses
            self.bad(path, json_problem(raw)[1] or "not JSON")
        return _MISSING

    def named_as(self, data: dict[str, Any], path: str, name: str) -> bool:
        """Whether the record ``data`` in the file ``name`` is one to count: its file name
        is ``<runId>.json`` with a valid run id (``engine.files.SAFE_ID``: what
        ``orchestrate show`` takes), seen once. Else the file is noted as a problem."""
        rid = data.get("runId")
        stem = name[: -len(".json")]
        if not isinstance(rid, str) or rid != stem:
            shown = f"`{rid}`" if isinstance(rid, str) else "missing"
            self.bad(path, f"not counted: the file name is not `<runId>.json` (`runId` is {shown})")
            return False
        if not SAFE_ID.match(rid):
            self.bad(
                path,
                f"not counted: {rid!r} is not a run id (letters, digits, `-` and `_`, not "
                "starting with `-`)",
            )
            return False
        if rid in self.run_ids:
            self.bad(path, f"not counted: run `{rid}` is already counted from another file")
            return False
        self.run_ids.add(rid)
        return True

    def record(self, data: Any, path: str, sub: bool, *, name: str | None = None) -> None:
        """Count one delegation record (or plain handoff), if it passes the filters; one
        from a records directory (its file ``name`` given) only if ``named_as`` it."""
        fields = self.fields(data, path)
        if fields is None or (name is not None and not self.named_as(data, path, name)):
            return
        env, outcome, agent, caller, when = fields
        if not self.wanted(agent, caller, env, when):
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
        usage = data.get("usage")
        if isinstance(usage, dict):
            g.add_usage(usage)
        latency = None
        if env is None:
            g.unrecorded += 1
        else:
            latency = self.envelope(g, env)
        if caller is not None:
            e = self.edges.get((caller, agent))
            if e is None:
                e = self.edges[(caller, agent)] = _Group()
            e.n += 1
            e.by_status[outcome] += 1
            if env is not None:
                e.add_repairs(env)
            if latency is not None:
                e.latency.append(latency)

    def fields(self, data: Any, path: str) -> _Fields | None:
        """(envelope, outcome, agent, caller, when) of a record or a plain handoff.

        None, with the file noted as a problem, when it is neither.
        """
        problem = record_problem(data)
        if problem is not None:
            self.bad(path, problem)
            return None
        env = data.get("envelope")
        if isinstance(env, dict):
            outcome, agent, caller = (
                env.get("outcome"),
                env.get("target") or data.get("agent"),
                env.get("caller"),
            )
            when = env.get("dispatched_at") or env.get("created_at") or data.get("timestamp")
            known, what = OUTCOMES, "not a record: `envelope.outcome`"
        elif env is None:
            outcome, agent, caller, when = (
                data.get("status"),
                data.get("agent"),
                None,
                data.get("timestamp"),
            )
            known, what = HANDOFF_STATUSES, "not a handoff: `status`"
        else:
            self.bad(path, "not a record: `envelope` is not an object")
            return None
        if outcome not in known:
            self.bad(path, f"{what} is not one of " + ", ".join(known))
            return None
        if not isinstance(agent, str) or not agent:
            self.bad(path, "not a record: no `agent` (or `envelope.target`)")
            return None
        return env, outcome, agent, caller if isinstance(caller, str) and caller else None, when

    def wanted(self, agent: str, caller: Any, env: Any, when: Any) -> bool:
        """Whether a delegation passes the filters (agent, caller, workflow label, since)."""
        if (
            (self.agent is not None and agent != self.agent)
            or (self.caller is not None and caller != self.caller)
            or (self.workflow is not None and _label(env, "workflow") != self.workflow)
        ):
            return False
        if self.since is None:
            return True
        t = _when(when)
        return t is not None and t >= self.since

    def envelope(self, g: _Group, env: dict[str, Any]) -> float | None:
        """Count what a record's envelope says into ``g``; its latency (ms), if any."""
        latency = _num(env.get("duration_ms"))
        if latency is not None:
            g.latency.append(latency)
        if env.get("late") is True:
            g.late += 1
        g.add_repairs(env)
        wait = _num(env.get("token_wait_ms"))
        if wait is not None:
            g.token_wait.append(wait)
            flow = _label(env, "workflow")
            if type(flow) is str:
                self.step_waits.setdefault(flow, []).append(wait)
        return latency

    def scan_pending(self, directory: str) -> None:
        """Count delegations dispatched and not yet recorded (``.pending/``)."""
        for entry in _json_entries(os.path.join(directory, PENDING_DIR)):
            env = self.load(entry.path)
            if not isinstance(env, dict):
                if env is not _MISSING:
                    self.bad(entry.path, "not an envelope: the JSON is not an object")
                continue
            if env.get("outcome") not in (None, "dispatched"):
                continue  # a timeout or refusal kept for a late handoff: recorded already
            if os.path.join(directory, entry.name) in self.final or self.run_ended(env):
                continue  # left behind: its record is final, or its workflow run ended
            target = env.get("target")
            if not isinstance(target, str):
                continue
            if not self.wanted(target, env.get("caller"), env, env.get("created_at")):
                continue
            self.in_flight[target] = self.in_flight.get(target, 0) + 1
            if not waiter_alive(env, host=self.host):
                self.orphaned += 1

    def run_ended(self, env: dict[str, Any]) -> bool:
        """Whether the workflow run an envelope's ``labels.workflow_run`` names ended
        (complete, failed or cancelled, by its ``summary.json``) after the envelope was
        last written (``created_at``, ``reattached_at``, ``renewed_at``): a resumed run's
        delegations, written after its earlier ending, are in flight."""
        run = _label(env, "workflow_run")
        if type(run) is not str or not run or "/" in run or run[0] == ".":
            return False
        finished = self.ended.get(run, "")
        if run not in self.ended:
            data = _read_json(os.path.join(self.store.runs_root, run, "summary.json"))
            if isinstance(data, dict) and data.get("status") in _RUN_ENDED:
                at = data.get("finished_at")
                finished = at if isinstance(at, str) else ""
            self.ended[run] = finished
        if not finished:
            return False
        stamps = [env.get(k) for k in ("created_at", "reattached_at", "renewed_at")]
        return all(type(t) is str and t <= finished for t in stamps if t is not None)

    def count_rejected(self, directory: str) -> None:
        try:
            with os.scandir(os.path.join(directory, REJECTED_DIR)) as it:
                self.rejected += sum(1 for e in it if e.name[0] != ".")
        except OSError:
            pass

    # -- workflow runs ------------------------------------------------------------------

    def scan_runs(self, directory: str) -> None:
        it = self.listing(directory)
        if it is None:
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
            from engine.runs.replay import replay_run, summarize

            self.scanned += 1
            data = summarize(replay_run(self.store, os.path.basename(path)))
        except Exception as exc:  # a broken run is reported, never a crash
            self.bad(path, f"cannot replay the run: {exc}")
            return None
        return data if _summary_ok(data) else None

    def run(self, s: dict[str, Any]) -> None:
        """Count one workflow run (its summary), if it passes the filters."""
        if not self.run_wanted(s):
            self.excluded += 1
            return
        w = self.workflows.get(s["workflow"])
        if w is None:
            w = self.workflows[s["workflow"]] = _Workflow()
        w.add_run(s)

    def run_wanted(self, s: dict[str, Any]) -> bool:
        """Whether a run passes the filters (workflow, caller, an agent of a step, since)."""
        if (
            (self.workflow is not None and s["workflow"] != self.workflow)
            or (self.caller is not None and s.get("caller") != self.caller)
            or (self.agent is not None and not _has_agent(s["steps"], self.agent))
        ):
            return False
        if self.since is None:
            return True
        t = _when(s.get("started_at"))
        return t is not None and t >= self.since

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


def _json_entries(directory: str) -> list[os.DirEntry[str]]:
    """The visible ``*.json`` entries of ``directory``; none when it cannot be listed."""
    try:
        with os.scandir(directory) as it:
            return [e for e in it if e.name[0] != "." and e.name.endswith(".json")]
    except OSError:
        return []


def _has_agent(steps: dict[str, Any], agent: str) -> bool:
    return any(isinstance(st, dict) and st.get("agent") == agent for st in steps.values())


def _positive(value: Any) -> int:
    """A JSON count that is a positive integer, else 0 (bools are not counts)."""
    return value if type(value) is int and value > 0 else 0


#: The statuses of a workflow run that has ended.
_RUN_ENDED = frozenset({"complete", "failed", "cancelled"})


def _final_record(data: Any) -> bool:
    """An engine record (handoff fields + ``envelope``) with an outcome a resume does not
    wait on again: not ``dispatched``, ``timeout`` or ``cancelled`` (those a resumed
    workflow re-attaches to: ``Delegator._reattach``)."""
    env = data.get("envelope") if isinstance(data, dict) else None
    return isinstance(env, dict) and env.get("outcome") not in (
        None,
        "dispatched",
        "timeout",
        "cancelled",
    )


def _read_json(path: str) -> Any:
    """The JSON in ``path``, or None when it is missing or does not parse (the one
    bounded reader: ``engine.record.read_json``, no FIFO, no NaN, a size limit)."""
    return read_json(Path(path))


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
    store = FileRunStore(handoffs_dir)
    if since is not None and since.tzinfo is None:
        since = since.replace(tzinfo=UTC)
    scan = _Scan(store, since, agent, workflow, caller)
    exists = os.path.isdir(store.root)
    if exists:
        for sub in (False, True):
            if reconcile:
                _reconcile(store, sub=sub)
            directory = os.fspath(store.records_dir(sub=sub))
            scan.scan_records(directory, sub=sub)
            scan.scan_pending(directory)
            scan.count_rejected(directory)
        scan.scan_runs(os.fspath(store.runs_root))
    return scan.document(handoffs_dir, exists)


def _reconcile(store: FileRunStore, *, sub: bool) -> None:
    """Merge late handoffs, when there is a pending envelope at all (cheap otherwise)."""
    try:
        with os.scandir(store.records_dir(sub=sub) / PENDING_DIR) as it:
            if not any(e.name.endswith(".json") for e in it):
                return
        store.reconcile(sub=sub)
    except Exception:  # a read-only or damaged directory: report what is there
        return
