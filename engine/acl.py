"""Who may delegate to whom: the ACL matrix (pure, no IO)."""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from engine.errors import AclDeniedError


@dataclass(frozen=True)
class Acl:
    """A delegation matrix: ``rules[caller]`` lists the targets, ``"*"`` meaning all agents
    and ``"!name"`` excluding ``name`` (seed 001's "Tech Lead -> all except Manager" is
    ``("*", "!manager")``); an exclusion wins over ``"*"`` and over the name itself.

    Example::

        acl = Acl({"manager": ("*",), "tech-lead": ("webster",)}, agents=("manager", "webster"))
        acl.allows("tech-lead", "webster")   # True
    """

    rules: Mapping[str, tuple[str, ...]]
    agents: tuple[str, ...]

    def targets(self, caller: str) -> tuple[str, ...]:
        """Return the agents ``caller`` may delegate to, in registry order (never itself)."""
        return tuple(a for a in self.agents if self.allows(caller, a))

    @functools.cached_property
    def _known(self) -> frozenset[str]:
        """The registry's agents as a set (built once: ``allows`` runs per step and edge)."""
        return frozenset(self.agents)

    def allows(self, caller: str, target: str) -> bool:
        """True when ``caller`` may delegate to ``target`` (``target in targets(caller)``)."""
        if target == caller or target not in self._known:
            return False
        allowed = self.rules.get(caller, ())
        if "!" + target in allowed:
            return False
        return "*" in allowed or target in allowed

    def check(self, caller: str, target: str) -> None:
        """Raise AclDeniedError unless allowed: the message names the caller's allowed
        targets, or an agent that may delegate to ``target`` when the caller may not
        delegate at all (docs/delegation.md, "Who may delegate to whom")."""
        if self.allows(caller, target):
            return
        if target == caller:
            raise AclDeniedError(
                f"ACL refuses `{caller}` -> `{caller}`: an agent never delegates to itself. "
                "Nothing was sent.",
                agent=target,
            )
        allowed = self.targets(caller)
        if allowed:
            listed = ", ".join(f"`{a}`" for a in allowed)
            hint = f"`{caller}` may delegate to: {listed}."
        else:
            hint = f"`{caller}` may not delegate to anyone"
            fix = exclusions_only_hint(caller, self.rules.get(caller, ()))
            if fix:
                hint += f" ({fix})"
            others = [a for a in self.agents if a != caller and self.allows(a, target)]
            if others:
                hint += f"; ask an agent that may (e.g. `{others[0]}`)."
            else:
                hint += f"; no agent may delegate to `{target}`."
        raise AclDeniedError(
            f"ACL refuses `{caller}` -> `{target}`: {hint} Nothing was sent.", agent=target
        )


def exclusions_only_hint(caller: str, targets: Iterable[str]) -> str | None:
    """The fix for ``acl.<caller>`` when ``targets`` holds only exclusions (``!name``)
    and at least one: such a list allows nobody, since an exclusion only narrows ``"*"``
    or the names listed. None for any other list (an empty one included)."""
    listed = list(targets)
    if not listed or not all(t.startswith("!") for t in listed):
        return None
    shown = ", ".join(f"'{t}'" for t in ["*", *listed])
    return (
        f"`acl.{caller}` lists only exclusions, which allows no agent at all; to allow "
        f"every agent but those write `{caller}: [{shown}]`"
    )


def acl_warnings(rules: Mapping[str, Iterable[str]]) -> list[str]:
    """Warnings about a config's ``acl`` (``caller -> targets``): entries that list only
    exclusions and so allow nobody (see ``exclusions_only_hint``)."""
    found = (exclusions_only_hint(caller, targets) for caller, targets in rules.items())
    return [f"{hint}." for hint in found if hint]


def check_chain(chain: Iterable[str], target: str, *, max_depth: int) -> None:
    """Refuse a sub-delegation that would revisit an agent or go deeper than ``max_depth``.

    ``chain`` is the callers from the root down to the current caller.
    """
    path = list(chain)
    if target in path:
        cycle = " -> ".join([*path[path.index(target) :], target])
        raise AclDeniedError(f"delegation cycle refused: {cycle}. Nothing was sent.", agent=target)
    depth = len(path) - 1  # a top-level delegation has depth 0, its sub-delegations 1, ...
    if depth > max_depth:
        raise AclDeniedError(
            f"delegation chain {' -> '.join([*path, target])} is deeper than `max_depth` "
            f"({max_depth}); raise `max_depth` in the config or delegate from higher up. "
            "Nothing was sent.",
            agent=target,
        )
