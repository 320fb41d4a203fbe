"""The workflow-language examples of docs/workflows.md run on the local gateway as documented.

Each example is a YAML block after a marker ``<!-- run: NAME {json} -->``; the JSON gives
the inputs, which agents fail (always, or on their first tries), and what the run comes
to: each step's status, the run's, and the waits before retries.
"""

from __future__ import annotations

import json
import re
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from engine.config import load_config
from engine.delegate import open_delegator
from engine.runner import RunOptions, WorkflowRunner, prepare
from tests.helpers import demo_config, write_config

DOCS = Path(__file__).resolve().parent.parent / "docs" / "workflows.md"
EXAMPLES = re.findall(
    r"<!-- run: (\S+) (.*?) -->\n```yaml\n(.*?)```", DOCS.read_text(encoding="utf-8"), re.S
)
FAILS_FIRST = """
import os, pathlib, sys
counter = pathlib.Path(os.environ["COUNTER"])
n = int(counter.read_text()) + 1 if counter.exists() else 1
counter.write_text(str(n))
if n <= int(os.environ["FAILS"]):
    sys.exit("the service is down (try %d)" % n)
print("worked on try %d" % n)
"""


def test_the_docs_keep_their_runnable_examples() -> None:
    assert {name for name, _, _ in EXAMPLES} >= {
        "nightly-digest",
        "resilient-search",
        "survey",
        "cte-check",
        "timed-search",
        "capped-survey",
        "checked-answer",
    }


@pytest.mark.parametrize(("name", "expect", "body"), EXAMPLES, ids=[e[0] for e in EXAMPLES])
def test_docs_example_runs_as_documented(tmp_path: Path, name: str, expect: str, body: str) -> None:
    expected: dict[str, Any] = json.loads(expect)
    raw = demo_config(tmp_path)
    agents = raw["gateway"]["agents"]
    for agent in expected.get("failing_agents", []):
        agents[agent] = {"kind": "command", "argv": [sys.executable, "-c", "raise SystemExit(1)"]}
    for agent, fails in expected.get("fails_first", {}).items():
        agents[agent] = {
            "kind": "command",
            "argv": [sys.executable, "-c", FAILS_FIRST],
            "env": {"COUNTER": str(tmp_path / f"{agent}.count"), "FAILS": str(fails)},
        }
    for agent, seconds in expected.get("slow_agents", {}).items():  # no handoff in time
        agents[agent] = {
            "kind": "command",
            "argv": [sys.executable, "-c", f"import time; time.sleep({seconds})"],
            "fallback_handoff": False,
        }
    for agent in expected.get("costly_agents", []):  # $0.03 and 150 tokens per handoff
        from tests.test_lang_budget import COSTLY

        agents[agent] = {
            "kind": "command",
            "argv": [sys.executable, "-c", COSTLY],
            "fallback_handoff": False,
        }
    for agent, data in expected.get("data_agents", {}).items():  # hands off this `data`
        from tests.test_lang_data import DATA_AGENT

        agents[agent] = {
            "kind": "command",
            "argv": [sys.executable, "-c", DATA_AGENT],
            "env": {"DATA_GOOD": json.dumps(data)},
            "fallback_handoff": False,
        }
    cfg = load_config(write_config(tmp_path, raw))
    path = tmp_path / f"{name}.yaml"
    path.write_text(body, encoding="utf-8")
    waits: list[float] = []

    def record(cancel: threading.Event, seconds: float) -> bool:
        waits.append(round(seconds, 3))
        return False

    with open_delegator(cfg) as d:
        runner = WorkflowRunner(cfg, d, retry_wait=record, rng=lambda: 0.0)
        result = runner.start(prepare(cfg, str(path), expected.get("inputs", {})), RunOptions())
    assert {k: v["status"] for k, v in result.summary["steps"].items()} == expected["steps"]
    assert result.state.value == expected["status"]
    assert waits == expected.get("waits", [])


def test_the_documented_policy_line_is_what_the_dry_run_prints() -> None:
    from engine.errors import WorkflowError
    from engine.planview import dry_run_text
    from engine.yamlio import parse_yaml
    from tests.test_lang_failure import _plan

    body = next(b for n, _, b in EXAMPLES if n == "resilient-search")
    raw = parse_yaml(body, source=Path("resilient-search.yaml"), error=WorkflowError)[0]
    plan, renderer = _plan(raw, {"topic": "ULE"})
    line = re.search(
        r"A dry run shows a policy that is more than a count:\n`(.*?)`\.",
        DOCS.read_text(encoding="utf-8"),
    )
    assert line is not None
    assert f"      {line.group(1)}\n" in dry_run_text(plan, renderer)


def test_the_documented_fan_out_line_is_what_the_dry_run_prints() -> None:
    from engine.errors import WorkflowError
    from engine.planview import dry_run_text
    from engine.workflow import load_workflow
    from engine.yamlio import parse_yaml
    from tests.test_lang_failure import _plan

    path = DOCS.parent.parent / "engine" / "workflows" / "material-survey.yaml"
    load_workflow(path)
    raw = parse_yaml(path.read_text(encoding="utf-8"), source=path, error=WorkflowError)[0]
    plan, renderer = _plan(raw, {"materials": "Zerodur, ULE, Invar 36", "requirements": "r"})
    line = re.search(
        r"the dry run shows the items when they come from the\ninputs \(`(.*?)`\)",
        DOCS.read_text(encoding="utf-8"),
        re.S,
    )
    assert line is not None
    assert f"      {line.group(1).replace(chr(10), ' ')}\n" in dry_run_text(plan, renderer)
