"""Command-line shells over the engine: ``orchestrate``, ``workflow`` and ``metrics``.

One module per program (``orchestrate.py``, ``workflow.py``, ``metrics.py``) and what
they share (``common.py``). Thin by design: each command parses options, calls one
engine function and renders the result. Heavy modules are imported inside commands so
``--help`` starts fast (a test pins that importing this package loads none of them).
"""

from __future__ import annotations

from engine.cli.metrics import metrics, metrics_main
from engine.cli.orchestrate import orchestrate, orchestrate_main
from engine.cli.workflow import workflow, workflow_main

__all__ = [
    "metrics",
    "metrics_main",
    "orchestrate",
    "orchestrate_main",
    "workflow",
    "workflow_main",
]
