"""The public API is curated: this pins it."""

from __future__ import annotations

import subprocess
import sys

import engine

EXPECTED = [
    "Acl",
    "Config",
    "DelegationRequest",
    "DelegationResult",
    "Delegator",
    "LocalGateway",
    "OrchestratorError",
    "Outcome",
    "Registry",
    "Reporter",
    "RunOptions",
    "RunResult",
    "RunState",
    "StepState",
    "WorkflowRunner",
    "__version__",
    "load_config",
    "make_handoff",
    "open_delegator",
    "prepare",
    "validate_handoff",
    "write_handoff",
]


def test_all_is_pinned() -> None:
    assert engine.__all__ == EXPECTED


def test_every_name_resolves() -> None:
    for name in engine.__all__:
        assert getattr(engine, name) is not None


def test_import_engine_is_cheap() -> None:
    code = (
        "import sys, engine; heavy = {'httpx', 'jsonschema', 'networkx', 'jinja2', 'yaml', "
        "'rich'} & set(sys.modules); print(sorted(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_outcomes_have_one_definition() -> None:
    from engine.delegate import Outcome
    from engine.record import OUTCOMES

    assert tuple(o.value for o in Outcome) == OUTCOMES
