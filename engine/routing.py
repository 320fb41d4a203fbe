"""Capability routing: pick the agent for a task by what it can do and how busy it is."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from engine.acl import Acl
from engine.errors import AclDeniedError, UnknownAgentError, did_you_mean
from engine.registry import Registry
from engine.store import RunStore, waiter_alive


@dataclass(frozen=True)
class Route:
    """The routing decision: the chosen agent and every candidate with its load."""

    capability: str
    agent: str
    candidates: tuple[tuple[str, int], ...]  # (agent, tasks in flight), registry order
    excluded: tuple[tuple[str, str], ...]  # (agent, why not)

    def explain(self) -> str:
        """A few lines saying what was chosen and why."""
        lines = [
            f"capability `{self.capability}` -> `{self.agent}` (fewest tasks in flight; "
            "ties go to the first in the registry)"
        ]
        for name, n in self.candidates:
            mark = "*" if name == self.agent else " "
            lines.append(f"  {mark} {name}: {n} in flight")
        for name, why in self.excluded:
            lines.append(f"    {name}: not eligible ({why})")
        return "\n".join(lines)


def route(
    registry: Registry,
    acl: Acl,
    *,
    caller: str,
    capability: str,
    inflight: Mapping[str, int],
) -> Route:
    """Choose among agents with ``capability`` that ``caller`` may delegate to (pure)."""
    capable = registry.with_capability(capability)
    if not capable:
        raise UnknownAgentError(
            f"no agent has capability `{capability}`"
            f"{did_you_mean(capability, registry.capabilities) or '.'} Known capabilities: "
            f"{', '.join(registry.capabilities) or 'none'}."
        )
    allowed = [a.name for a in capable if acl.allows(caller, a.name)]
    excluded = tuple(
        (a.name, f"`{caller}` may not delegate to it") for a in capable if a.name not in allowed
    )
    if not allowed:
        raise AclDeniedError(
            f"no agent with capability `{capability}` may be used by `{caller}`: "
            + ", ".join(f"`{a.name}`" for a in capable)
            + f" have it, but the ACL does not allow `{caller}` to delegate to them. "
            "Nothing was sent."
        )
    candidates = tuple((name, int(inflight.get(name, 0))) for name in allowed)
    best = min(candidates, key=lambda c: c[1])  # min keeps the first of equals
    return Route(capability, best[0], candidates, excluded)


def inflight_counts(store: RunStore) -> dict[str, int]:
    """Delegations in flight per target: pending envelopes whose waiter is alive
    (``engine.store.waiter_alive``), top-level and sub-delegations."""
    counts: dict[str, int] = {}
    for sub in (False, True):
        for _, env in store.list_pending(sub=sub):
            if env.get("outcome") != "dispatched" or not waiter_alive(env):
                continue
            target = env.get("target")
            if isinstance(target, str):
                counts[target] = counts.get(target, 0) + 1
    return counts
