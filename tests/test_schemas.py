"""The shipped JSON Schemas: valid against the metaschema, and the fast and full validators
agree on what they accept (engine.schemas checks valid data with jsonschema-rs only)."""

from __future__ import annotations

import datetime

import pytest
from jsonschema import Draft202012Validator

from engine.schemas import schema, schema_problems, validator

NAMES = ("config", "handoff", "metrics", "workflow")


@pytest.mark.parametrize("name", NAMES)
def test_shipped_schema_is_valid(name: str) -> None:
    Draft202012Validator.check_schema(schema(name))


CASES = [
    ("config", {"handoffs_dir": "h"}),
    ("config", {"agents": {"webster": {"url": "http://127.0.0.1:1", "token_env": "T"}}}),
    ("config", {"agents": {"webster": {"url": 5}}}),
    ("config", {"agents": {"Web ster": {"url": "local"}}}),
    ("config", {"agents": {"webster\n": {"url": "local"}}}),
    ("config", {"pool": {"enabled": "yes"}}),
    ("config", {"agents": {"a": {"url": "local", "when": datetime.date(2020, 1, 1)}}}),
    ("config", {"retry": {"delays": [10**30]}}),
    ("workflow", {"name": "w", "steps": [{"id": "a", "agent": "x", "task": "t"}]}),
    ("workflow", {"name": "w", "steps": [{"id": "a", "agent": "x"}]}),
    ("workflow", {"name": "w", "steps": []}),
    ("handoff", {"schemaVersion": "1.0", "runId": "orch-1", "agent": "a",
                 "status": "complete", "result": "r", "confidence": "high"}),
    ("handoff", {"schemaVersion": "1.0", "runId": "orch-1", "agent": "a",
                 "status": "complete", "result": "r", "confidence": "high",
                 "producedAt": "not a date"}),
    ("handoff", {"runId": "orch-1\n", "status": "done"}),
]


@pytest.mark.parametrize(("name", "data"), CASES)
def test_fast_path_agrees_with_jsonschema(name: str, data: object) -> None:
    full = sorted({e.message for e in validator(name).iter_errors(data)})
    problems = schema_problems(name, data)
    assert bool(problems) == bool(full), (problems, full)
