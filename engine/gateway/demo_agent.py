"""A deterministic stand-in for the eight seed agents, run by the local gateway per task.

Usage (the local gateway sets the ``ORCH_*`` variables)::

    python -m engine.gateway.demo_agent --role webster

It reads ``ORCH_TASK``, ``ORCH_RUN_ID``, ``ORCH_AGENT``, ``ORCH_HANDOFF_PATH`` and
``ORCH_HANDOFF_KEY`` (the delegation's key, returned in the handoff) and
writes a valid handoff whose result is a short answer in the role's voice, derived only
from the task text and clearly labelled as demo output. Directives anywhere in the task
text steer it in tests: ``DEMO_SLEEP=<s>``, ``DEMO_STATUS=<status>``,
``DEMO_CONFIDENCE=<level>``, ``DEMO_CRASH``, ``DEMO_NO_HANDOFF``, ``DEMO_APPROVE``,
``DEMO_REJECT``. When the task asks for structured data (a step with a
``result_schema``: the task ends with the schema, see ``engine.runner.with_schema``), the
handoff's ``data`` is an example of that schema (``demo_data``), so such steps complete.
It is started once per task, so it imports little.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from typing import Any

from engine.states import Confidence, HandoffStatus

ROLES = (
    "manager",
    "tech-lead",
    "secretary",
    "auditor",
    "optimizer",
    "study-builder",
    "nx-expert",
    "webster",
)
#: Roles that answer ``APPROVED:`` to a review request unless told ``DEMO_REJECT``.
VALIDATORS = ("tech-lead", "auditor")
_DIRECTIVE = re.compile(r"\bDEMO_[A-Z_]+(?:=\S*)?")
_STATUSES = tuple(s.value for s in HandoffStatus)
_CONFIDENCES = tuple(c.value for c in Confidence)
_STOPWORDS = frozenset(
    "the and for with from into about find what which this that give list make check "
    "between over under please using review validate verify approve".split()
)
#: The line ``engine.runner.with_schema`` puts before the JSON Schema of the wanted ``data``.
SCHEMA_MARKER = "matching this JSON Schema (keep `result` a short summary):\n"
EXIT_CRASH = 3
EXIT_USAGE = 2


def directives(task: str) -> dict[str, str]:
    """Return the ``DEMO_*`` directives found in ``task`` (flags map to ``""``)."""
    found: dict[str, str] = {}
    for m in _DIRECTIVE.finditer(task):
        key, _, value = m.group(0).partition("=")
        found[key] = value
    return found


def subject(task: str, limit: int = 160) -> str:
    """The task text without directives, on one line, at most ``limit`` characters."""
    text = " ".join(_DIRECTIVE.sub(" ", task).split())
    if len(text) > limit:
        text = text[: limit - 1].rstrip() + "…"
    return text or "(empty task)"


def _keywords(text: str, n: int = 3) -> list[str]:
    """The ``n`` longest distinct words of ``text``, in order of first appearance."""
    words: list[str] = []
    seen: set[str] = set()
    for w in re.findall(r"[A-Za-z][A-Za-z0-9.+-]{2,}", text):
        w = w.strip(".")
        if w.lower() not in seen and w.lower() not in _STOPWORDS:
            seen.add(w.lower())
            words.append(w)
    longest = sorted(words, key=lambda w: (-len(w), words.index(w)))[:n]
    return [w for w in words if w in longest]


def answer(role: str, task: str) -> str:
    """The role-flavoured body of the result for ``task`` (deterministic)."""
    s = subject(task)
    keys = ", ".join(_keywords(s)) or "the request"
    if role == "manager":
        return (
            f"Plan for “{s}”: research by webster, technical review by tech-lead, "
            f"audit by auditor, notes by secretary. Focus: {keys}."
        )
    if role == "tech-lead":
        return (
            f"Technical assessment of “{s}”: the approach is sound; check assumptions "
            f"about {keys} before committing; no blocking issue found."
        )
    if role == "secretary":
        return (
            f"Recorded: “{s}”. Action items: 1) follow up on {keys}; "
            "2) report status at the next sync."
        )
    if role == "auditor":
        return f"Audit of “{s}”: 3 checks passed, 0 blocking findings; traceability for {keys}."
    if role == "optimizer":
        return (
            f"Optimization setup for “{s}”: objective and constraints drawn from {keys}; "
            "suggested method: gradient-free search with 20 initial samples."
        )
    if role == "study-builder":
        return (
            f"Study definition for “{s}”: parameters {keys}; "
            "baseline run plus 3 variations prepared."
        )
    if role == "nx-expert":
        return (
            f"NX/CAD notes for “{s}”: model features tied to {keys}; "
            "mesh at 2 mm with local refinement."
        )
    if role == "webster":
        return (
            f"Research summary for “{s}”: key terms {keys}; no live sources were consulted (demo)."
        )
    return f"Answer to “{s}”: covering {keys}."


def result_text(role: str, task: str, found: dict[str, str]) -> str:
    """The whole result: validator verdict (if any), label, and the role's answer."""
    label = f"[demo output from {role} — not a real agent]"
    verdict = ""
    if "DEMO_REJECT" in found:
        verdict = "REJECTED: "
    elif "DEMO_APPROVE" in found:
        verdict = "APPROVED: "
    elif role in VALIDATORS and re.search(r"(?i)\b(validat|review|approv|verif)", task):
        verdict = "APPROVED: "
    return f"{verdict}{label} {answer(role, task)}"


def schema_of(task: str) -> dict[str, Any] | None:
    """The JSON Schema the task asks ``data`` to match (the last one given), or None."""
    at = task.rfind(SCHEMA_MARKER)
    if at < 0:
        return None
    try:
        schema, _ = json.JSONDecoder().raw_decode(task, at + len(SCHEMA_MARKER))
    except ValueError:
        return None
    return schema if isinstance(schema, dict) else None


def demo_data(schema: Any, label: str = "data") -> Any:
    """A deterministic example of a JSON Schema (``engine.schemas.example_value``), its
    text ``demo <field>``."""
    from engine.schemas import example_value

    return example_value(schema, label, lambda where: f"demo {where}", paths=False)


def _role_from_argv(argv: list[str]) -> str | None:
    for i, arg in enumerate(argv):
        if arg == "--role" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--role="):
            return arg.partition("=")[2]
    return None


def main(argv: list[str] | None = None) -> int:
    """Run one demo task from the ``ORCH_*`` environment; return the exit code."""
    args = sys.argv[1:] if argv is None else argv
    if "-h" in args or "--help" in args:
        print(__doc__)
        return 0
    role = _role_from_argv(args) or os.environ.get("ORCH_AGENT") or "agent"
    task = os.environ.get("ORCH_TASK", "")
    found = directives(task)

    status = found.get("DEMO_STATUS", "complete") or "complete"
    confidence = found.get("DEMO_CONFIDENCE", "medium") or "medium"
    if status not in _STATUSES or confidence not in _CONFIDENCES:
        print(
            f"demo agent {role}: bad directive: DEMO_STATUS must be one of {_STATUSES}, "
            f"DEMO_CONFIDENCE one of {_CONFIDENCES}",
            file=sys.stderr,
        )
        return EXIT_USAGE
    if "DEMO_SLEEP" in found:
        try:
            time.sleep(max(0.0, float(found["DEMO_SLEEP"])))
        except ValueError:
            print(f"demo agent {role}: DEMO_SLEEP needs a number of seconds", file=sys.stderr)
            return EXIT_USAGE
    if "DEMO_CRASH" in found:
        print(f"demo agent {role}: simulated crash (DEMO_CRASH)", file=sys.stderr)
        return EXIT_CRASH

    result = result_text(role, task, found)
    path = os.environ.get("ORCH_HANDOFF_PATH", "")
    if "DEMO_NO_HANDOFF" in found or not path:
        print(result)
        return 0

    from pathlib import Path

    from engine.errors import OrchestratorError
    from engine.handoff import make_handoff, write_handoff

    schema = schema_of(task)
    handoff = make_handoff(
        run_id=os.environ.get("ORCH_RUN_ID", ""),
        agent=os.environ.get("ORCH_AGENT") or role,
        status=status,
        result=result,
        confidence=confidence,
        notes=f"deterministic demo agent (role {role})",
        usage={
            "input_tokens": len(task.split()),
            "output_tokens": len(result.split()),
            "cost": 0.0,
            "model": "demo",
        },
        key=os.environ.get("ORCH_HANDOFF_KEY") or None,
    )
    if schema is not None and status in ("complete", "partial"):
        handoff["data"] = demo_data(schema)
    try:
        write_handoff(Path(path), handoff, replace=False)
    except (OrchestratorError, OSError) as exc:
        print(f"demo agent {role}: cannot write the handoff: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
