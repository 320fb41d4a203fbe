"""Planning a run without running it: find, load and plan a workflow (``prepare``).

Kept apart from the executor (``engine.runner``, which re-exports both names) so that
``workflow validate`` and ``workflow run --dry-run`` load only the planner: not the run
store, the journal's read model or the thread pool.
"""

from __future__ import annotations

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
