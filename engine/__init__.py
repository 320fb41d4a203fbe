"""Agent orchestrator: synchronous delegation and YAML workflows over OpenClaw hooks.

The public API, imported lazily so that ``import engine`` (and the CLI's start-up) stays
cheap::

    from engine import load_config, open_delegator, DelegationRequest

    cfg = load_config("orchestrator.yaml")
    with open_delegator(cfg) as delegator:
        result = delegator.delegate(
            DelegationRequest(target="webster", task="Find CTE of Zerodur", caller="manager"))
    print(result.outcome, result.record["result"])
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "Config": "engine.config",
    "load_config": "engine.config",
    "Registry": "engine.registry",
    "Acl": "engine.acl",
    "DelegationRequest": "engine.delegate",
    "DelegationResult": "engine.delegate",
    "Delegator": "engine.delegate",
    "Outcome": "engine.delegate",
    "open_delegator": "engine.delegate",
    "make_handoff": "engine.handoff",
    "validate_handoff": "engine.handoff",
    "write_handoff": "engine.handoff",
    "prepare": "engine.runner",
    "RunOptions": "engine.runner",
    "RunResult": "engine.runner",
    "RunState": "engine.runner",
    "StepState": "engine.runner",
    "WorkflowRunner": "engine.runner",
    "LocalGateway": "engine.gateway.server",
    "Reporter": "engine.reporter",
    "OrchestratorError": "engine.errors",
}

__all__ = sorted([*_EXPORTS, "__version__"])


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'engine' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
