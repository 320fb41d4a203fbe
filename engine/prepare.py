"""Planning a run without running it: find, load and plan a workflow (``prepare``).

Kept apart from the executor (``engine.runner``, which re-exports both names) so that
``workflow validate`` and ``workflow run --dry-run`` load only the planner: not the run
store, the journal's read model or the thread pool.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from engine.config import Config


@dataclass(frozen=True)
class Prepared:
    """A workflow loaded, planned and ready to run or to print as a dry run."""

    spec: Any
    plan: Any
    renderer: Any
    #: The NAME or path the workflow was asked for (``workflow run NAME``), as given.
    ref: str = ""


def prepare(
    cfg: Config,
    name_or_path: str,
    inputs: dict[str, str],
    *,
    caller: str | None = None,
    spec: Any = None,
) -> Prepared:
    """Find, load and plan a workflow: every check of the planner, nothing dispatched.

    ``spec``: the workflow already loaded from ``name_or_path`` (it is not read again).
    """
    from engine.acl import Acl
    from engine.dag import plan_workflow
    from engine.registry import Registry
    from engine.renderer import TaskRenderer
    from engine.workflow import find_workflow, load_child_workflow, load_workflow

    if spec is None:
        spec = load_workflow(find_workflow(name_or_path, cfg))
    registry = Registry.from_config(cfg)
    renderer = TaskRenderer(spec)
    plan = plan_workflow(
        spec,
        registry=registry,
        acl=Acl(cfg.acl, registry.names),
        inputs=inputs,
        caller=caller,
        validator=cfg.validator,
        renderer=renderer,
        load_child=lambda name, parent: load_child_workflow(name, parent, cfg),
    )
    return Prepared(spec, plan, renderer, str(name_or_path))


def check_approvals(plan: Any, approve: Iterable[str]) -> None:
    """Refuse (UsageError, exit 2) a ``--approve STEP`` that names no step of ``plan``
    (with the near miss), a step without a gate, or a gate that asks for an input (given
    only when the run parks there). A run and its dry run check the same."""
    from engine.errors import UsageError, did_you_mean

    for step in approve:
        if step not in plan.steps:
            raise UsageError(
                f"`--approve {step}`: no such step{did_you_mean(step, list(plan.steps))}"
            )
        gate = plan.steps[step].spec.gate
        if gate is None:
            raise UsageError(f"`--approve {step}`: that step has no approval gate.")
        if gate.input_schema is not None:
            raise UsageError(
                f"`--approve {step}`: its gate asks for an input; give it when the run "
                f"parks there: `workflow approve RUN {step} --input VALUE`."
            )
