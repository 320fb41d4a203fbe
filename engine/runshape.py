"""The shape of a workflow run record, checked before anything uses it.

A run record (``run.json``, ``events.jsonl``, one ``<step>.json`` per finished step) is
written by the engine, but people edit, truncate and copy them. ``shape_problem`` says
what in a record has the wrong type, so that ``workflow runs``, ``status``, ``resume``,
``approve``, ``reject`` and ``cancel`` answer with one paragraph instead of failing deep
inside the runner (the replay itself skips malformed journal events, with a warning). It
only looks at values already parsed; it does no IO.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

_META_TEXT = ("workflow", "workflow_path", "version", "caller", "config", "created_at")
_STEP_TEXT = ("step", "agent", "status", "started_at", "finished_at", "delegation_run_id")
_STEP_MAPPING = ("handoff", "validation", "gate")


def shape_problem(meta: Any, step_files: Mapping[str, Any]) -> str | None:
    """The first problem of a run record's shape, as ``file: what``; None when it is sound.

    ``meta`` is the parsed ``run.json``, ``step_files`` maps step ids to their parsed
    ``<step>.json`` (None when missing). Journal events are not checked here: the replay
    skips a malformed event and names it in its warnings.
    """
    problem = _meta_problem(meta)
    if problem:
        return f"`run.json`: {problem}"
    for step, data in step_files.items():
        problem = _step_problem(data)
        if problem:
            return f"`{step}.json`: {problem}"
    return None


def _meta_problem(meta: Any) -> str | None:
    if not isinstance(meta, dict):
        return "is not a JSON object"
    if not isinstance(meta.get("runId"), str):
        return "`runId` is not text"
    for key in _META_TEXT:
        if key in meta and not isinstance(meta[key], str):
            return f"`{key}` is not text"
    for key in ("inputs", "fingerprint"):
        value = meta.get(key, {})
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            return f"`{key}` is not a mapping of texts"
    return _plan_problem(meta.get("plan"))


def _plan_problem(plan: Any) -> str | None:
    if not isinstance(plan, dict):
        return "`plan` is not a mapping"
    groups, steps = plan.get("groups"), plan.get("steps")
    if not isinstance(groups, list) or not all(
        isinstance(g, list) and all(isinstance(s, str) for s in g) for g in groups
    ):
        return "`plan.groups` is not a list of lists of step ids"
    if not isinstance(steps, dict) or not all(isinstance(v, dict) for v in steps.values()):
        return "`plan.steps` is not a mapping of steps"
    grouped = [s for g in groups for s in g]
    missing = [s for s in grouped if s not in steps]
    if missing:
        return f"`plan.groups` names `{missing[0][:40]}`, which `plan.steps` lacks"
    ungrouped = [s for s in steps if s not in grouped]
    if ungrouped:
        return f"`plan.steps` has `{str(ungrouped[0])[:40]}`, which `plan.groups` lacks"
    if len(set(grouped)) != len(grouped):
        return "`plan.groups` names a step twice"
    return None


def _step_problem(data: Any) -> str | None:
    if data is None:
        return None  # a missing or unreadable step file: the journal still says what happened
    if not isinstance(data, dict):
        return "is not a JSON object"
    for key in _STEP_TEXT:
        if data.get(key) is not None and not isinstance(data[key], str):
            return f"`{key}` is not text"
    for key in _STEP_MAPPING:
        if data.get(key) is not None and not isinstance(data[key], dict):
            return f"`{key}` is not a mapping"
    handoff = data.get("handoff") or {}
    for key in ("runId", "agent", "status", "confidence", "result", "notes"):
        if handoff.get(key) is not None and not isinstance(handoff[key], str):
            return f"`handoff.{key}` is not text"
    if handoff.get("artifacts") is not None and not isinstance(handoff["artifacts"], list):
        return "`handoff.artifacts` is not a list"
    attempts = data.get("attempts")
    if attempts is not None and not (
        isinstance(attempts, list) and all(isinstance(a, dict) for a in attempts)
    ):
        return "`attempts` is not a list of mappings"
    return None
