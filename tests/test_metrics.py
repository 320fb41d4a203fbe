"""Metrics over delegation records and workflow runs: real records, a generated set whose
expected figures are computed here independently, percentiles, filters and broken files."""

from __future__ import annotations

import json
import os
import random
import socket
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from engine.config import Config, load_config
from engine.delegate import DelegationRequest, Outcome, open_delegator
from engine.errors import EXIT_USAGE, UsageError
from engine.handoff import make_handoff, write_handoff
from engine.metrics import (
    MAX_LISTED,
    OUTCOMES,
    RUN_STATUSES,
    STEP_STATUSES,
    compute_metrics,
    parse_since,
    percentile,
    render_text,
)
from engine.runner import RunOptions, RunState, StepState, WorkflowRunner, prepare
from engine.runs import replay, summarize
from engine.schemas import schema_problems
from tests.helpers import demo_config, write_config

RUN_WORKFLOWS = Path(__file__).parent / "workflows" / "run"
FLAKY = """
import os, pathlib, sys
counter = pathlib.Path(os.environ["FLAKY_COUNTER"])
n = int(counter.read_text()) + 1 if counter.exists() else 1
counter.write_text(str(n))
if n < 3:
    sys.exit("flaky failure %d" % n)
print("worked on try %d" % n)
"""
NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)


# ----------------------------------------------------------------------------- helpers


def nearest_rank(values: Iterable[float], p: float) -> float | None:
    """The definition, computed the slow way: the smallest value v such that at least
    p % of the values are <= v (independent of engine.metrics' arithmetic)."""
    vals = list(values)
    for v in sorted(set(vals)):
        if sum(1 for x in vals if x <= v) * 100 >= p * len(vals):
            return v
    return None


def dist(values: Iterable[float]) -> dict[str, Any]:
    vals = list(values)
    if not vals:
        return {"count": 0, "p50": None, "p95": None, "max": None}
    return {
        "count": len(vals),
        "p50": nearest_rank(vals, 50),
        "p95": nearest_rank(vals, 95),
        "max": max(vals),
    }


def valid(doc: dict[str, Any]) -> dict[str, Any]:
    """Assert ``doc`` matches schemas/metrics.schema.json (and is plain JSON); return it."""
    assert schema_problems("metrics", doc, style="pointer") == []
    assert json.loads(json.dumps(doc)) == doc
    return doc


def iso(t: datetime) -> str:
    return t.isoformat(timespec="milliseconds").replace("+00:00", "Z")


# ----------------------------------------------------------------------------- the basics


def test_status_names_match_the_engine() -> None:
    assert set(OUTCOMES) == {o.value for o in Outcome}
    assert RUN_STATUSES == tuple(s.value for s in RunState)
    assert STEP_STATUSES == tuple(s.value for s in StepState)


@pytest.mark.parametrize(
    "values,p,expected",
    [
        ([7.0], 50, 7.0),
        ([7.0], 95, 7.0),
        ([7.0], 100, 7.0),
        ([7.0], 1, 7.0),
        ([5.0, 5.0, 5.0, 5.0], 50, 5.0),
        ([5.0, 5.0, 5.0, 5.0], 95, 5.0),
        ([1.0, 2.0, 3.0, 4.0], 50, 2.0),
        ([4.0, 3.0, 2.0, 1.0], 50, 2.0),
        ([10.0, 20.0], 50, 10.0),
        ([10.0, 20.0], 95, 20.0),
        ([float(i) for i in range(1, 21)], 95, 19.0),
        ([float(i) for i in range(1, 21)], 50, 10.0),
        ([float(i) for i in range(1, 101)], 95, 95.0),
        ([1.0, 1.0, 1.0, 9.0], 95, 9.0),
        ([1.0, 1.0, 1.0, 9.0], 75, 1.0),
        ([], 50, None),
    ],
    ids=lambda v: str(v) if not isinstance(v, list) else f"n{len(v)}",
)
def test_percentile_nearest_rank(values: list[float], p: float, expected: float | None) -> None:
    assert percentile(values, p) == expected


def test_percentile_agrees_with_the_definition_on_random_lists() -> None:
    rnd = random.Random(5)
    for _ in range(300):
        n = rnd.randint(1, 40)
        values = [float(rnd.randint(0, 12)) for _ in range(n)]  # many ties
        for p in (1, 25, 50, 90, 95, 99, 100):
            assert percentile(values, p) == nearest_rank(values, p), (values, p)


@pytest.mark.parametrize(
    "text,expected",
    [
        ("24h", NOW - timedelta(hours=24)),
        ("7d", NOW - timedelta(days=7)),
        ("30m", NOW - timedelta(minutes=30)),
        ("90s", NOW - timedelta(seconds=90)),
        ("2w", NOW - timedelta(weeks=2)),
        ("1.5h", NOW - timedelta(minutes=90)),
        (" 24H ", NOW - timedelta(hours=24)),
        ("2026-11-20", datetime(2026, 11, 20, tzinfo=UTC)),
        ("2026-11-20T08:30:00Z", datetime(2026, 11, 20, 8, 30, tzinfo=UTC)),
        ("2026-11-20T10:30:00+02:00", datetime(2026, 11, 20, 8, 30, tzinfo=UTC)),
        ("2026-11-20T08:30", datetime(2026, 11, 20, 8, 30, tzinfo=UTC)),
    ],
)
def test_parse_since(text: str, expected: datetime) -> None:
    got = parse_since(text, now=NOW)
    assert got == expected and got.tzinfo is not None


@pytest.mark.parametrize("text", ["yesterday", "", "24", "h", "-1h", "24x", "2026-13-40", "7 days"])
def test_parse_since_refuses_with_a_usage_error(text: str) -> None:
    with pytest.raises(UsageError) as info:
        parse_since(text, now=NOW)
    assert info.value.exit_code == EXIT_USAGE == 2  # what `metrics --since` exits with
    assert str(info.value) == (
        f"`--since {text}`: expected a duration such as `24h`, `7d`, `30m` or an ISO date "
        "such as `2026-11-21` or `2026-11-21T08:00:00Z`."
    )


# ----------------------------------------------------------------------------- empty


def test_empty_directory_is_a_clear_report(tmp_path: Path) -> None:
    base = tmp_path / "handoffs"
    base.mkdir()
    (base / "README.md").write_text("not a record")
    (base / "workflows").mkdir()
    doc = valid(compute_metrics(base))
    assert doc["totals"]["delegations"] == 0 and doc["totals"]["workflow_runs"] == 0
    assert doc["agents"] == {} and doc["edges"] == [] and doc["workflows"] == {}
    assert doc["totals"]["success_rate"] is None
    assert doc["totals"]["latency_ms"] == {"count": 0, "p50": None, "p95": None, "max": None}
    assert doc["files"]["exists"] is True and doc["files"]["invalid"] == 0
    assert render_text(doc) == (
        f"Metrics of {base}\nNo records: `{base}` holds no delegation records or workflow runs.\n"
    )


def test_missing_directory_is_a_clear_report(tmp_path: Path) -> None:
    doc = valid(compute_metrics(tmp_path / "nope"))
    assert doc["files"]["exists"] is False
    assert f"No records: `{tmp_path / 'nope'}` does not exist." in render_text(doc)


# ----------------------------------------------------------------------------- real records


def _real_config(tmp_path: Path) -> Config:
    raw = demo_config(tmp_path)
    raw["pool"] = {"enabled": True, "min_tokens": 1, "max_tokens": 1, "adaptive": False}
    raw["gateway"]["agents"]["flaky"] = {
        "kind": "command",
        "argv": [sys.executable, "-c", FLAKY],
        "env": {"FLAKY_COUNTER": str(tmp_path / "flaky-count")},
    }
    raw["agents"]["flaky"] = {"url": "local"}
    # The timed-out secretary run below must not hand off while the fixture still runs
    # (its late handoff would be merged into the record): it runs until the gateway stops.
    raw["gateway"]["agents"]["secretary"]["timeout"] = 900
    return load_config(write_config(tmp_path, raw))


@pytest.fixture(scope="module")
def real(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Real delegations and workflow runs through the embedded gateway's demo agents."""
    tmp = tmp_path_factory.mktemp("real")
    cfg = _real_config(tmp)

    def gate_approver(_req: Any) -> str:
        time.sleep(0.3)  # someone reads the prompt
        return "approved"

    runs = {}
    with open_delegator(cfg) as d:

        def ask(target: str, task: str, caller: str = "manager", **kw: Any) -> Any:
            return d.delegate(DelegationRequest(target=target, task=task, caller=caller, **kw))

        ask("webster", "research CTE of ULE")
        ask("webster", "DEMO_STATUS=partial research")
        ask("webster", "DEMO_STATUS=blocked research")
        ask("webster", "DEMO_STATUS=failed DEMO_CONFIDENCE=low research")
        parent = ask("tech-lead", "DEMO_CONFIDENCE=high review the design")
        ask(
            "webster",
            "look this up for the review",
            caller="tech-lead",
            parent_run_id=parent.run_id,
        )
        timed_out = ask("secretary", "DEMO_SLEEP=600 too slow", timeout=1)
        assert timed_out.outcome is Outcome.TIMEOUT
        # two at once with one pool token: the second waits for the first
        pair = [
            threading.Thread(target=ask, args=("secretary", "DEMO_SLEEP=0.4 minutes"))
            for _ in range(2)
        ]
        for t in pair:
            t.start()
        for t in pair:
            t.join()
        for name, inputs, approver in (
            ("failure", {"first": "DEMO_STATUS=failed x"}, None),
            ("gate", {"query": "CTE of Zerodur"}, gate_approver),
            ("retry", {}, None),
        ):
            prepared = prepare(cfg, str(RUN_WORKFLOWS / f"{name}.yaml"), inputs)
            runs[name] = WorkflowRunner(cfg, d, approver=approver).start(prepared, RunOptions())
    # an agent's handoff that nobody recorded (its delegation is unknown here)
    write_handoff(
        cfg.handoffs_dir / "orch-20261121T000000-0000beef.json",
        make_handoff(
            run_id="orch-20261121T000000-0000beef",
            agent="auditor",
            status="complete",
            result="unasked",
            confidence="high",
        ),
    )
    assert runs["failure"].state is RunState.FAILED
    assert runs["gate"].state is RunState.COMPLETE
    assert runs["retry"].state is RunState.FAILED
    doc = compute_metrics(cfg.handoffs_dir)
    return {"cfg": cfg, "runs": runs, "doc": doc, "timed_out": timed_out.run_id}


def _records(base: Path) -> list[tuple[dict[str, Any], bool]]:
    """Every record file, read independently of engine.metrics: (data, is_sub)."""
    out = []
    for sub, pattern in ((False, "*.json"), (True, "sub/*.json")):
        for p in sorted(base.glob(pattern)):
            out.append((json.loads(p.read_text()), sub))
    return out


def test_real_records_per_agent(real: dict[str, Any]) -> None:
    cfg, doc = real["cfg"], valid(real["doc"])
    records = _records(cfg.handoffs_dir)
    assert doc["files"]["invalid"] == 0 and doc["files"]["exists"] is True
    assert doc["totals"]["delegations"] == len(records)
    by_agent: dict[str, Counter[str]] = {}
    latencies: dict[str, list[float]] = {}
    for data, _sub in records:
        env = data.get("envelope")
        agent = env["target"] if env else data["agent"]
        by_agent.setdefault(agent, Counter())[env["outcome"] if env else data["status"]] += 1
        if env and "duration_ms" in env:
            latencies.setdefault(agent, []).append(env["duration_ms"])
    assert set(doc["agents"]) == set(by_agent)
    for agent, counts in by_agent.items():
        row = doc["agents"][agent]
        assert row["by_status"] == {o: counts.get(o, 0) for o in OUTCOMES}, agent
        assert row["delegations"] == sum(counts.values())
        good = counts["complete"] + counts["partial"]
        assert row["success_rate"] == round(good / sum(counts.values()), 4)
        assert row["latency_ms"] == dist(latencies.get(agent, [])), agent

    webster = doc["agents"]["webster"]
    # direct: complete, partial, blocked, failed; sub: complete; workflow steps:
    # failure.first failed, gate.research complete, retry.blocked blocked (never retried)
    assert webster["by_status"]["blocked"] == 2 and webster["by_status"]["failed"] == 2
    assert webster["by_status"]["partial"] == 1 and webster["sub_delegations"] == 1
    assert webster["confidence"]["low"] == 1
    assert doc["agents"]["tech-lead"]["confidence"]["high"] == 1
    # the timeout: no handoff, so no confidence and no latency (the record has no duration)
    secretary = doc["agents"]["secretary"]
    timed_out = json.loads((cfg.handoffs_dir / f"{real['timed_out']}.json").read_text())
    assert "duration_ms" not in timed_out["envelope"]
    assert secretary["by_status"]["timeout"] == 1 and secretary["confidence"]["none"] == 1
    assert secretary["latency_ms"]["count"] == secretary["delegations"] - 1
    assert doc["agents"]["auditor"]["unrecorded"] == 1 == doc["totals"]["unrecorded"]
    assert doc["totals"]["sub_delegations"] == 1
    # usage: the demo agents report word counts
    tokens_in = sum(d["usage"]["input_tokens"] for d, _ in records if "usage" in d)
    assert doc["totals"]["usage"]["input_tokens"] == tokens_in
    assert doc["totals"]["usage"]["models"] == {"demo": sum(1 for d, _ in records if "usage" in d)}


def test_real_records_edges_and_waiting(real: dict[str, Any]) -> None:
    cfg, doc = real["cfg"], real["doc"]
    edges = {(e["caller"], e["target"]): e for e in doc["edges"]}
    assert edges[("tech-lead", "webster")]["count"] == 1
    assert edges[("tech-lead", "webster")]["by_status"]["complete"] == 1
    pairs = Counter(
        (d["envelope"]["caller"], d["envelope"]["target"])
        for d, _ in _records(cfg.handoffs_dir)
        if "envelope" in d
    )
    assert {k: e["count"] for k, e in edges.items()} == dict(pairs)
    # one pool token: one of the two concurrent delegations waited for the other
    waits = [
        d["envelope"]["token_wait_ms"]
        for d, _ in _records(cfg.handoffs_dir)
        if "token_wait_ms" in d.get("envelope", {})
    ]
    assert doc["waiting"]["token_wait_ms"] == dist(waits)
    assert doc["waiting"]["token_wait_ms"]["max"] >= 200
    assert doc["waiting"]["in_flight"] == {"count": 0, "agents": {}, "orphaned": 0}


def test_real_workflow_runs(real: dict[str, Any]) -> None:
    doc, runs = real["doc"], real["runs"]
    wf = doc["workflows"]
    assert set(wf) == {"failure", "gate", "retry"} and doc["totals"]["workflow_runs"] == 3
    failure = wf["failure"]
    assert failure["by_status"]["failed"] == 1 and failure["skipped_steps"] == 1
    assert failure["steps"]["after-first"]["by_status"]["skipped"] == 1
    assert failure["steps"]["first"]["by_status"]["failed"] == 1
    assert failure["steps"]["independent"]["by_status"]["complete"] == 1
    assert failure["duration_ms"]["count"] == 1
    assert failure["duration_ms"]["p50"] == runs["failure"].summary["duration_ms"]
    gate = wf["gate"]
    assert gate["gate_wait_ms"]["count"] == 1 and gate["gate_wait_ms"]["total"] >= 300
    assert gate["gate_wait_ms"]["total"] == runs["gate"].summary["gate_wait_ms"]
    assert doc["waiting"]["gate_wait_ms"]["total"] == gate["gate_wait_ms"]["total"]
    assert gate["success_rate"] == 1.0 and failure["success_rate"] == 0.0
    retry = wf["retry"]
    assert retry["retries"] == 2 and retry["steps"]["flaky"]["retries"] == 2
    assert retry["steps"]["flaky"]["by_status"]["complete"] == 1
    assert retry["steps"]["blocked"]["by_status"]["blocked"] == 1
    for name, result in runs.items():
        for sid, st in result.summary["steps"].items():
            row = wf[name]["steps"][sid]["duration_ms"]
            assert row == dist([st["duration_ms"]] if st["duration_ms"] is not None else [])
    # every attempt of a step is a delegation record labelled with its workflow; the
    # runner also lists the attempts in the step's file: the two must agree
    attempts: dict[str, list[float]] = {}
    for name, result in runs.items():
        for sid in result.summary["steps"]:
            step = json.loads((result.run_dir / f"{sid}.json").read_text())
            attempts.setdefault(name, []).extend(a["token_wait_ms"] for a in step["attempts"])
    assert {k: len(v) for k, v in attempts.items()} == {"failure": 2, "gate": 2, "retry": 4}
    for name, waits in attempts.items():
        assert wf[name]["token_wait_ms"] == dist(waits)
    assert doc["waiting"]["step_token_wait_ms"] == dist(sum(attempts.values(), []))


def test_real_text_report(real: dict[str, Any]) -> None:
    text = render_text(real["doc"])
    lines = text.splitlines()
    assert lines[0] == f"Metrics of {real['cfg'].handoffs_dir}"
    for title in (
        "Agents",
        "Confidence and usage",
        "Caller -> target",
        "Workflows",
        "Steps of failure",
        "Steps of gate",
        "Steps of retry",
        "Waiting",
    ):
        assert title in lines, title
    row = next(line for line in lines if line.startswith("webster "))
    assert row.split()[:3] == [
        "webster",
        str(real["doc"]["agents"]["webster"]["delegations"]),
        f"{real['doc']['agents']['webster']['success_rate']:.1%}",
    ]
    assert all(line == line.rstrip() for line in lines)
    assert lines[-2:] == [
        "In flight: 0 delegation(s)",
        "Workflow runs waiting for approval: 0 · running: 0",
    ]


def test_real_filters(real: dict[str, Any]) -> None:
    base = real["cfg"].handoffs_dir
    doc = valid(compute_metrics(base, agent="secretary"))
    assert set(doc["agents"]) == {"secretary"}
    assert {e["target"] for e in doc["edges"]} == {"secretary"}
    assert set(doc["workflows"]) == {"failure"}  # the only run with a secretary step
    assert doc["files"]["excluded_by_filters"] > 0
    assert doc["filters"] == {"since": None, "agent": "secretary", "workflow": None, "caller": None}

    doc = valid(compute_metrics(base, caller="tech-lead"))
    assert doc["totals"]["delegations"] == 1 and doc["totals"]["sub_delegations"] == 1
    assert doc["workflows"] == {}

    doc = valid(compute_metrics(base, workflow="gate"))
    assert set(doc["workflows"]) == {"gate"}
    assert {a: r["delegations"] for a, r in doc["agents"].items()} == {"webster": 1, "tech-lead": 1}

    assert (
        compute_metrics(base, since=parse_since("1h"))["totals"]["delegations"]
        == (real["doc"]["totals"]["delegations"])
    )
    doc = valid(compute_metrics(base, since=datetime.now(UTC) + timedelta(minutes=5)))
    assert doc["totals"]["delegations"] == 0 and doc["totals"]["workflow_runs"] == 0
    assert f"No records: nothing in `{base}` matches the filters." in render_text(doc)


# ----------------------------------------------------------------------------- generated


AGENTS = ("alpha", "beta", "gamma")
CALLERS = ("boss", "lead")
FLOWS = {"alpha-flow": ("a", "b", "c"), "beta-flow": ("x", "y")}


def _generate(base: Path, seed: int = 11) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Write records and runs with numbers chosen here; return the truth about them."""
    rnd = random.Random(seed)
    (base / "sub").mkdir(parents=True)
    truth = []
    for i in range(400):
        agent, caller = rnd.choice(AGENTS), rnd.choice(CALLERS)
        outcome = rnd.choice(OUTCOMES)
        when = NOW - timedelta(hours=i * 0.5)
        sub = i % 9 == 0
        handoff = outcome in ("complete", "partial", "blocked", "failed")
        unrecorded = handoff and i % 23 == 0
        t = {
            "agent": agent,
            "caller": None if unrecorded else caller,
            "outcome": outcome,
            "when": when,
            "sub": sub,
            "unrecorded": unrecorded,
            "latency": None
            if unrecorded
            else float(rnd.choice((40, 40, 90, 250, 250, 1300)) + rnd.randint(0, 3) * 0.5),
            "confidence": rnd.choice(("high", "medium", "low")) if handoff else None,
            "usage": (rnd.randint(0, 900), rnd.randint(0, 300), rnd.randint(0, 50) / 1000)
            if handoff and rnd.random() < 0.6
            else None,
            "wait": None if unrecorded or rnd.random() < 0.3 else float(rnd.randint(0, 20)),
            "late": not unrecorded and rnd.random() < 0.1,
            "workflow": None if unrecorded else rnd.choice((None, "alpha-flow", "beta-flow")),
        }
        truth.append(t)
        run_id = f"orch-20261121T000000-{i:08x}"
        data: dict[str, Any] = {"schemaVersion": "1.0", "runId": run_id, "agent": agent}
        if handoff:
            data.update(
                status=outcome,
                result="generated",
                confidence=t["confidence"],
                timestamp=iso(when + timedelta(seconds=1)),
            )
        if t["usage"]:
            data["usage"] = {
                "input_tokens": t["usage"][0],
                "output_tokens": t["usage"][1],
                "cost": t["usage"][2],
                "model": f"m{i % 2}",
            }
        if not unrecorded:
            env: dict[str, Any] = {
                "caller": caller,
                "target": agent,
                "outcome": outcome,
                "created_at": iso(when - timedelta(seconds=2)),
                "dispatched_at": iso(when),
                "duration_ms": t["latency"],
                "late": t["late"],
            }
            if t["wait"] is not None:
                env["token_wait_ms"] = t["wait"]
            if t["workflow"]:
                env["labels"] = {"workflow": t["workflow"], "step": "a"}
            data["envelope"] = env
        (base / ("sub" if sub else "") / f"{run_id}.json").write_text(json.dumps(data))

    runs = []
    for r in range(60):
        name = rnd.choice(list(FLOWS))
        status = rnd.choice(("complete", "complete", "failed", "cancelled", "waiting_approval"))
        started = NOW - timedelta(hours=r * 2)
        duration = float(rnd.choice((1000, 2000, 2000, 3500, 60000)))
        steps = {}
        for sid in FLOWS[name]:
            st = rnd.choice(("complete", "complete", "failed", "skipped", "partial"))
            attempts = 0 if st == "skipped" else rnd.choice((1, 1, 2, 3))
            steps[sid] = {
                "status": st,
                "agent": rnd.choice(AGENTS),
                "attempts": attempts,
                "duration_ms": None if st == "skipped" else float(rnd.randint(1, 9)),
            }
        gate = float(rnd.choice((0, 0, 500, 1500)))
        run = {
            "name": name,
            "status": status,
            "started": started,
            "duration": None if status == "waiting_approval" else duration,
            "gate": gate,
            "steps": steps,
            "caller": rnd.choice(CALLERS),
        }
        runs.append(run)
        path = base / "workflows" / f"wf-20261121T000000-{r:08x}"
        path.mkdir(parents=True)
        summary = {
            "runId": path.name,
            "workflow": name,
            "status": status,
            "caller": run["caller"],
            "inputs": {},
            "started_at": iso(started),
            "finished_at": None
            if run["duration"] is None
            else iso(started + timedelta(milliseconds=duration)),
            "duration_ms": run["duration"],
            "gate_wait_ms": gate,
            "retries": sum(max(0, s["attempts"] - 1) for s in steps.values()),
            "steps": steps,
            "outputs": {},
        }
        (path / "summary.json").write_text(json.dumps(summary))
        with open(path / "events.jsonl", "w") as fh:  # not read: the summary is there
            fh.write(json.dumps({"event": "run_started", "at": iso(started)}) + "\n")
            fh.write('{"event": "step_attempt", "token_wait_ms": 12')  # a torn last line
    return truth, runs


def _expected_agents(truth: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for agent in sorted({t["agent"] for t in truth}):
        mine = [t for t in truth if t["agent"] == agent]
        counts = Counter(t["outcome"] for t in mine)
        usage = [t["usage"] for t in mine if t["usage"]]
        out[agent] = {
            "delegations": len(mine),
            "sub_delegations": sum(t["sub"] for t in mine),
            "unrecorded": sum(t["unrecorded"] for t in mine),
            "late": sum(t["late"] for t in mine),
            "by_status": {o: counts.get(o, 0) for o in OUTCOMES},
            "success_rate": round((counts["complete"] + counts["partial"]) / len(mine), 4),
            "latency_ms": dist(t["latency"] for t in mine if t["latency"] is not None),
            "confidence": {
                c: sum(1 for t in mine if (t["confidence"] or "none") == c)
                for c in ("high", "medium", "low", "none")
            },
            "usage_sums": (
                len(usage),
                sum(u[0] for u in usage),
                sum(u[1] for u in usage),
                sum(u[2] for u in usage),
            ),
            "token_wait_ms": dist(t["wait"] for t in mine if t["wait"] is not None),
            "repairs": {"delegations": 0, "messages": 0, "rate": 0.0},
        }
    return out


def _check_agents(doc: dict[str, Any], truth: list[dict[str, Any]]) -> None:
    expected = _expected_agents(truth)
    assert set(doc["agents"]) == set(expected)
    for agent, exp in expected.items():
        got = dict(doc["agents"][agent])
        usage = got.pop("usage")
        n, tin, tout, cost = exp.pop("usage_sums")
        assert (usage["records"], usage["input_tokens"], usage["output_tokens"]) == (n, tin, tout)
        assert usage["cost"] == pytest.approx(cost, abs=1e-6)
        assert sum(usage["models"].values()) == n
        assert got == exp, agent
    edges = Counter((t["caller"], t["agent"]) for t in truth if t["caller"])
    assert [(e["caller"], e["target"], e["count"]) for e in doc["edges"]] == [
        (c, a, n) for (c, a), n in sorted(edges.items())
    ]
    for e in doc["edges"]:
        mine = [t for t in truth if (t["caller"], t["agent"]) == (e["caller"], e["target"])]
        assert e["latency_ms"] == dist(t["latency"] for t in mine)
        assert e["by_status"] == {o: sum(t["outcome"] == o for t in mine) for o in OUTCOMES}


def _check_workflows(
    doc: dict[str, Any], runs: list[dict[str, Any]], truth: list[dict[str, Any]]
) -> None:
    assert doc["totals"]["workflow_runs"] == len(runs)
    assert set(doc["workflows"]) == {r["name"] for r in runs}
    for name, got in doc["workflows"].items():
        mine = [r for r in runs if r["name"] == name]
        states = Counter(r["status"] for r in mine)
        assert got["runs"] == len(mine)
        assert got["by_status"] == {s: states.get(s, 0) for s in RUN_STATUSES}
        finished = states["complete"] + states["failed"] + states["cancelled"]
        assert got["success_rate"] == (
            round(states["complete"] / finished, 4) if finished else None
        )
        assert got["duration_ms"] == dist(r["duration"] for r in mine if r["duration"] is not None)
        gates = [r["gate"] for r in mine if r["gate"] > 0]
        assert got["gate_wait_ms"] == {**dist(gates), "total": sum(gates)}
        all_steps = [s for r in mine for s in r["steps"].values()]
        assert got["retries"] == sum(max(0, s["attempts"] - 1) for s in all_steps)
        assert got["skipped_steps"] == sum(s["status"] == "skipped" for s in all_steps)
        assert got["token_wait_ms"] == dist(
            t["wait"] for t in truth if t["workflow"] == name and t["wait"] is not None
        )
        for sid in FLOWS[name]:
            rows = [r["steps"][sid] for r in mine]
            assert got["steps"][sid] == {
                "count": len(rows),
                "by_status": {s: sum(x["status"] == s for x in rows) for s in STEP_STATUSES},
                "duration_ms": dist(x["duration_ms"] for x in rows if x["duration_ms"] is not None),
                "retries": sum(max(0, x["attempts"] - 1) for x in rows),
                "skipped": sum(x["status"] == "skipped" for x in rows),
            }
    gates = [r["gate"] for r in runs if r["gate"] > 0]
    assert doc["waiting"]["gate_wait_ms"] == {**dist(gates), "total": sum(gates)}
    assert doc["waiting"]["runs_waiting_approval"] == sum(
        r["status"] == "waiting_approval" for r in runs
    )


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Any], list[Any]]:
    base = tmp_path_factory.mktemp("generated") / "handoffs"
    truth, runs = _generate(base)
    return base, truth, runs


def test_generated_set_figures(generated: tuple[Path, list[Any], list[Any]]) -> None:
    base, truth, runs = generated
    doc = valid(compute_metrics(base))
    _check_agents(doc, truth)
    _check_workflows(doc, runs, truth)
    totals = doc["totals"]
    counts = Counter(t["outcome"] for t in truth)
    assert totals["delegations"] == len(truth)
    assert totals["by_status"] == {o: counts.get(o, 0) for o in OUTCOMES}
    assert totals["success_rate"] == round((counts["complete"] + counts["partial"]) / len(truth), 4)
    assert totals["latency_ms"] == dist(t["latency"] for t in truth if t["latency"] is not None)
    assert totals["sub_delegations"] == sum(t["sub"] for t in truth)
    assert totals["unrecorded"] == sum(t["unrecorded"] for t in truth) > 0
    assert doc["waiting"]["token_wait_ms"] == dist(
        t["wait"] for t in truth if t["wait"] is not None
    )
    assert doc["files"]["invalid"] == 0  # the torn journal lines are not problems


@pytest.mark.parametrize(
    "flt",
    [
        {"agent": "beta"},
        {"caller": "lead"},
        {"workflow": "alpha-flow"},
        {"since": NOW - timedelta(hours=30)},
        {"since": NOW - timedelta(days=3), "agent": "alpha", "caller": "boss"},
        {"agent": "nobody"},
    ],
    ids=lambda f: "+".join(sorted(f)) + ("-none" if f.get("agent") == "nobody" else ""),
)
def test_generated_set_filters(
    generated: tuple[Path, list[Any], list[Any]], flt: dict[str, Any]
) -> None:
    base, truth, runs = generated

    def keep(t: dict[str, Any]) -> bool:
        return (
            (flt.get("agent") is None or t["agent"] == flt["agent"])
            and (flt.get("caller") is None or t["caller"] == flt["caller"])
            and (flt.get("workflow") is None or t["workflow"] == flt["workflow"])
            and (flt.get("since") is None or t["when"] >= flt["since"])
        )

    def keep_run(r: dict[str, Any]) -> bool:
        return (
            (
                flt.get("agent") is None
                or any(s["agent"] == flt["agent"] for s in r["steps"].values())
            )
            and (flt.get("caller") is None or r["caller"] == flt["caller"])
            and (flt.get("workflow") is None or r["name"] == flt["workflow"])
            and (flt.get("since") is None or r["started"] >= flt["since"])
        )

    doc = valid(compute_metrics(base, **flt))
    kept, kept_runs = [t for t in truth if keep(t)], [r for r in runs if keep_run(r)]
    assert doc["totals"]["delegations"] == len(kept)
    assert doc["files"]["excluded_by_filters"] == len(truth) - len(kept) + len(runs) - len(
        kept_runs
    )
    if kept:
        _check_agents(doc, kept)
    else:
        assert doc["agents"] == {} and doc["edges"] == []
    if kept_runs:
        _check_workflows(doc, kept_runs, kept)
    else:
        assert doc["workflows"] == {}


def test_generated_set_text(generated: tuple[Path, list[Any], list[Any]]) -> None:
    doc = compute_metrics(generated[0])
    text = render_text(doc)
    # every status column is there, errored and cancelled too since they occur
    header = next(line for line in text.splitlines() if line.startswith("agent "))
    assert header.split() == ["agent", "delegations", "success", *OUTCOMES, "p50", "p95", "max"]
    assert max(len(line) for line in text.splitlines()) <= 140
    assert "approval gates (runs)" in text
    odd = json.loads(json.dumps(doc))
    odd["workflows"] = {"[bold]x[/bold]": odd["workflows"]["alpha-flow"]}
    odd["agents"] = {"[red]a": odd["agents"]["alpha"]}
    text = render_text(odd)
    assert "Steps of [bold]x[/bold]" in text and "\n[red]a " in text


# ----------------------------------------------------------------------------- robustness


def _good(run_id: str, **env: Any) -> dict[str, Any]:
    data = make_handoff(run_id=run_id, agent="webster", status="complete", result="ok")
    data["envelope"] = {
        "caller": "manager",
        "target": "webster",
        "outcome": "complete",
        "dispatched_at": data["timestamp"],
        "duration_ms": 10.0,
        **env,
    }
    return data


def test_corrupt_files_are_counted_and_listed(tmp_path: Path) -> None:
    base = tmp_path / "handoffs"
    (base / "sub").mkdir(parents=True)
    (base / "orch-1.json").write_text(json.dumps(_good("orch-1")))
    text = json.dumps(_good("orch-2"), indent=2)
    (base / "truncated.json").write_text(text[: len(text) // 2])
    (base / "broken.json").write_text('{"runId": "x",, }')
    (base / "array.json").write_text("[1, 2, 3]")
    (base / "binary.json").write_bytes(b"\xff\xfe\x00\x9c garbage \x80\x81")
    (base / "empty.json").write_text("")
    (base / "a-dir.json").mkdir()
    os.symlink(base / "gone.json", base / "dangling.json")
    (base / "sub" / "odd.json").write_text(json.dumps({"agent": "webster", "status": "done"}))
    (base / "sub" / "weird-env.json").write_text(json.dumps({"agent": "x", "envelope": [1]}))
    (base / "sub" / "no-agent.json").write_text(
        json.dumps({"status": "complete", "confidence": "high"})
    )
    (base / "sub" / "lists.json").write_text(json.dumps({"agent": "x", "status": ["complete"]}))
    odd_values = _good("orch-4", outcome="complete", late=[1], duration_ms="7")
    odd_values.update(confidence={"a": 1}, usage={"cost": [1], "model": {}})
    (base / "orch-4.json").write_text(json.dumps(odd_values))  # counted, odd values ignored
    nan = _good("orch-3")
    nan["envelope"]["duration_ms"] = float("nan")
    (base / "orch-3.json").write_text(json.dumps(nan))  # counted, without a latency
    # never read: temp files, hidden and other directories, other extensions
    (base / ".tmp-abc.json").write_text("{")
    (base / "README.md").write_text("#")
    for hidden in (".pool", ".workspaces"):
        (base / hidden).mkdir()
        (base / hidden / "state.json").write_text("{")
    (base / "rejected").mkdir()
    (base / "rejected" / "orch-9.1.json").write_text("{not json")
    (base / ".pending").mkdir()
    (base / ".pending" / "orch-7.json").write_text(
        json.dumps(
            {
                "caller": "manager",
                "target": "nx-expert",
                "outcome": "dispatched",
                "created_at": iso(datetime.now(UTC)),
                "pid": os.getpid(),
            }
        )
    )
    (base / ".pending" / "orch-8.json").write_text("{")
    gone = {"caller": "manager", "target": "nx-expert", "outcome": "dispatched",
            "pid": 2**22 + 12345, "host": socket.gethostname()}  # fmt: skip
    (base / ".pending" / "orch-6.json").write_text(json.dumps(gone))  # a killed caller's
    runs = base / "workflows"
    (runs / "no-run-json").mkdir(parents=True)
    (runs / "no-run-json" / "events.jsonl").write_text("")
    (runs / "bad-summary").mkdir()
    (runs / "bad-summary" / "summary.json").write_text('{"workflow": 3}')
    (runs / "junk.txt").write_text("x")

    doc = valid(compute_metrics(base))
    assert doc["totals"]["delegations"] == 3
    webster = doc["agents"]["webster"]
    assert webster["latency_ms"]["count"] == 1 and webster["confidence"]["none"] == 1
    assert webster["usage"]["records"] == 1 and webster["usage"]["models"] == {}
    reasons = {f["path"]: f["reason"] for f in doc["files"]["invalid_files"]}
    assert reasons == {
        "truncated.json": reasons["truncated.json"],
        "broken.json": "invalid JSON: Expecting property name enclosed in double quotes "
        "(line 1, column 15)",
        "array.json": "not a record: the JSON is an array, not an object",
        "binary.json": "not JSON: the bytes are not UTF-8 text",
        "empty.json": "empty",
        "a-dir.json": "unreadable: a directory, not a file",
        "dangling.json": "unreadable: a symbolic link to nothing",
        "sub/odd.json": "not a handoff: `status` is not one of complete, partial, blocked, failed",
        "sub/weird-env.json": "not a record: `envelope` is not an object",
        "sub/no-agent.json": "not a record: no `agent` (or `envelope.target`)",
        "sub/lists.json": "not a handoff: `status` is not one of complete, partial, blocked, "
        "failed",
        ".pending/orch-8.json": reasons[".pending/orch-8.json"],
        "workflows/no-run-json": "not a workflow run: no `run.json`",
        "workflows/bad-summary/summary.json": "not a run summary: needs `workflow`, a known "
        "`status` and `steps`",
        "workflows/bad-summary": "not a workflow run: no `run.json`",
    }
    assert reasons["truncated.json"].startswith("truncated JSON: ")
    assert reasons[".pending/orch-8.json"].startswith("truncated JSON: ")
    assert doc["files"]["invalid"] == len(reasons)
    assert doc["files"]["rejected_handoffs"] == 1
    assert doc["waiting"]["in_flight"] == {"count": 2, "agents": {"nx-expert": 2}, "orphaned": 1}
    text = render_text(doc)
    assert f"Problem files: {len(reasons)} (counted nowhere else)" in text
    assert "  a-dir.json: unreadable: a directory, not a file" in text.splitlines()
    assert "Refused handoff files kept in rejected/: 1" in text
    assert (
        "In flight: 2 delegation(s) (nx-expert 2), 1 of them orphaned (their process is gone)"
        in (text.splitlines())
    )


def test_a_broken_summary_falls_back_to_the_journal(tmp_path: Path) -> None:
    cfg = load_config(write_config(tmp_path, demo_config(tmp_path)))
    with open_delegator(cfg) as d:
        prepared = prepare(cfg, "quick-research", {"query": "CTE of ULE"})
        result = WorkflowRunner(cfg, d).start(prepared, RunOptions())
    good = valid(compute_metrics(cfg.handoffs_dir))["workflows"]["quick-research"]

    replayed = summarize(replay(result.run_dir))  # what the journal alone says

    def same(got: dict[str, Any]) -> None:
        # counts as with the summary; durations from the journal's clock readings, which
        # differ from the runner's in-memory ones by a few ms (more on a loaded machine)
        for row, ref in [
            (got, good),
            *((got["steps"][s], good["steps"][s]) for s in good["steps"]),
        ]:
            assert {k: v for k, v in row.items() if k not in ("duration_ms", "steps")} == {
                k: v for k, v in ref.items() if k not in ("duration_ms", "steps")
            }
        assert got["duration_ms"] == dist([replayed["duration_ms"]])
        for sid, st in replayed["steps"].items():
            assert got["steps"][sid]["duration_ms"] == dist([st["duration_ms"]])

    (result.run_dir / "summary.json").write_text('{"runId": "')  # torn
    doc = valid(compute_metrics(cfg.handoffs_dir))
    same(doc["workflows"]["quick-research"])
    assert doc["files"]["invalid_files"] == [
        {
            "path": f"workflows/{result.run_id}/summary.json",
            "reason": "truncated JSON: Unterminated string starting at (line 1, column 11)",
        }
    ]
    (result.run_dir / "summary.json").unlink()  # a run still going, or crashed
    doc = valid(compute_metrics(cfg.handoffs_dir))
    same(doc["workflows"]["quick-research"])
    assert doc["files"]["invalid"] == 0


def test_many_problem_files_are_all_counted_some_listed(tmp_path: Path) -> None:
    base = tmp_path / "handoffs"
    base.mkdir()
    for i in range(MAX_LISTED + 5):
        (base / f"bad-{i:03d}.json").write_text("{")
    doc = valid(compute_metrics(base))
    assert doc["files"]["invalid"] == MAX_LISTED + 5
    assert len(doc["files"]["invalid_files"]) == MAX_LISTED
    text = render_text(doc)
    assert "No records: " in text and "  ... and 5 more" in text


def test_a_late_handoff_is_merged_before_counting(tmp_path: Path) -> None:
    base = tmp_path / "handoffs"
    run_id = "orch-20261121T000000-00000001"
    envelope = {
        "caller": "manager",
        "target": "webster",
        "outcome": "timeout",
        "created_at": "2026-11-21T00:00:00.000Z",
        "dispatched_at": "2026-11-21T00:00:00.100Z",
        "deadline_at": "2026-11-21T00:00:01.100Z",
        "timeout_s": 1.0,
    }
    (base / ".pending").mkdir(parents=True)
    (base / ".pending" / f"{run_id}.json").write_text(json.dumps(envelope))
    write_handoff(
        base / "inbox" / f"{run_id}.json",
        make_handoff(run_id=run_id, agent="webster", status="partial", result="late but here"),
    )
    unmerged = valid(compute_metrics(base, reconcile=False))
    assert unmerged["totals"]["unrecorded"] == 1 and unmerged["edges"] == []
    doc = valid(compute_metrics(base))
    assert doc["totals"]["unrecorded"] == 0 and doc["totals"]["late"] == 1
    assert doc["totals"]["by_status"]["partial"] == 1
    assert doc["edges"][0]["caller"] == "manager"
    assert doc["waiting"]["in_flight"]["count"] == 0
