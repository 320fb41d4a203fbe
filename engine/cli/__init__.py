"""Command-line shells over the engine: ``orchestrate``, ``workflow`` and ``metrics``.

One module per program (``orchestrate.py``, ``workflow.py``, ``metrics.py``) and what
they share (``common.py``). Thin by design: each command parses options, calls one
engine function and renders the result. Heavy modules are imported inside commands so
``--help`` starts fast (a test pins that importing this package loads none of them).

The programs are loaded on first use (PEP 562 ``__getattr__``): ``workflow`` loads
``engine.cli.workflow`` and not the other two programs (~5 ms of imports). As before,
``engine.cli.workflow`` (``.metrics``, ``.orchestrate``) read from this package is the
program's click group, not its module: importing the module binds its name here, and
that binding is replaced by the group (``_Package.__setattr__``).
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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

_PROGRAM_OF = {name: name.removesuffix("_main") for name in __all__}


class _Package(types.ModuleType):
    """This package's module type: a program's module bound here becomes its group."""

    def __setattr__(self, name: str, value: Any) -> None:
        if (
            _PROGRAM_OF.get(name) == name
            and isinstance(value, types.ModuleType)
            and value.__name__ == f"{__name__}.{name}"
        ):
            value = getattr(value, name)
        super().__setattr__(name, value)


def __getattr__(name: str) -> Any:
    program = _PROGRAM_OF.get(name)
    if program is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{program}"), name)


sys.modules[__name__].__class__ = _Package
