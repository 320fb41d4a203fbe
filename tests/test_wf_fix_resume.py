"""`workflow resume` and `approve` after a template changed, and what they say.

A template whose steps are not the run's any more (one added, removed or renamed) is
refused by `resume`, with or without `--force`, before anything is written; so is a
parent whose child run's template changed (unless `--force`, which reaches the child).
`--approve-all` passes by a gate that asks for an input, `-i` on resume gives again only
inputs that held a secret, `workflow status` after `approve` names the resume, and a
sub-workflow step's first announce line names its workflow.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

WORKFLOW = [sys.executable, "-c", "from engine.cli import workflow_main; workflow_main()"]

CONFIG = """\
handoffs_dir: ./handoffs
default_timeout: 20
pool: {adaptive: false}  # not this host's load average: a busy test host stopped grants
validator: checker
gateway: {embedded: true, agents: {echo: {kind: echo}, checker: {kind: echo}}}
agents: {boss: {url: local}, echo: {url: local, timeout: 20}, checker: {url: local, timeout: 20}}
acl: {boss: ['*']}
"""

G3 = """\
name: g3
caller: boss
steps:
  - {id: a, agent: echo, task: "first"}
  - {id: g, agent: echo, task: "second", depends_on: [a], gate: {prompt: "ok?"}}
  - {id: c, agent: echo, task: "third", depends_on: [g]}
outputs:
  first: "{{ steps.a.result }}"
"""

ASKS = """\
name: asks
caller: boss
inputs: {q: {required: true}}
steps:
  - id: g
    agent: echo
    task: "go {{ inputs.q }}"
    gate:
      prompt: "How deep?"
      input: {schema: {type: object, required: [depth], properties: {depth: {type: string}}}}
  - {id: after, agent: echo, depends_on: [g], task: "depth {{ steps.g.input.depth }}"}
"""

GATED = """\
name: gated
caller: boss
inputs: {q: {required: true}}
steps:
  - {id: g, agent: echo, task: "go {{ inputs.q }}", gate: {prompt: "ok?"}}
"""

PARENT = """\
name: pd
caller: boss
steps:
  - {id: kid, workflow: gated, inputs: {q: "1"}}
  - {id: after, agent: echo, depends_on: [kid], task: "after {{ steps.kid.result }}"}
finally:
  - {id: bye, agent: echo, task: "ended {{ run.status }}"}
"""


def _wf(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*WORKFLOW, *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )


def _setup(tmp_path: Path, **templates: str) -> None:
    (tmp_path / "orchestrator.yaml").write_text(CONFIG, encoding="utf-8")
    (tmp_path / "workflows").mkdir()
    for name, text in templates.items():
        (tmp_path / "workflows" / f"{name}.yaml").write_text(text, encoding="utf-8")


def _park(tmp_path: Path, name: str, *args: str) -> dict[str, Any]:
    """Run ``name`` with ``--non-interactive --json``: it parks (exit 3); its summary."""
    res = _wf(tmp_path, "run", name, "--non-interactive", "--json", *args)
    assert res.returncode == 3, res.stdout + res.stderr
    summary: dict[str, Any] = json.loads(res.stdout)
    return summary


def _files(tmp_path: Path) -> dict[str, str]:
    """Every run's records (not `.lock`, which says who last claimed a run)."""
    runs = tmp_path / "handoffs" / "workflows"
    return {
        str(p.relative_to(runs)): p.read_text(encoding="utf-8")
        for p in sorted(runs.rglob("*"))
        if p.is_file() and p.name != ".lock"
    }


def _refused(res: subprocess.CompletedProcess[str]) -> str:
    """The paragraph of a `--json` command refused with exit 2 (no traceback)."""
    assert res.returncode == 2, res.stdout + res.stderr
    assert "Traceback" not in res.stderr
    error = json.loads(res.stdout)
    assert error["exit_code"] == 2
    return str(error["error"])


@pytest.mark.parametrize(
    ("change", "said"),
    [
        ("add", "(added `z`;"),
        ("rename", "(added `c2`; removed `c`;"),
        ("remove-last", "(removed `c`;"),
        ("remove-first", "(removed `a`;"),
    ],
)
def test_a_template_with_other_steps_is_refused_even_with_force(
    tmp_path: Path, change: str, said: str
) -> None:
    _setup(tmp_path, g3=G3)
    rid = _park(tmp_path, "g3")["runId"]
    assert _wf(tmp_path, "approve", rid, "g").returncode == 0
    path = tmp_path / "workflows" / "g3.yaml"
    edited = {
        "add": G3.replace("outputs:", '  - {id: z, agent: echo, task: "more"}\noutputs:'),
        "rename": G3.replace("id: c,", "id: c2,"),
        "remove-last": G3.replace('  - {id: c, agent: echo, task: "third", depends_on: [g]}\n', ""),
        "remove-first": G3.replace('  - {id: a, agent: echo, task: "first"}\n', "")
        .replace(", depends_on: [a]", "")
        .replace("{{ steps.a.result }}", "none"),
    }[change]
    assert edited != G3
    path.write_text(edited, encoding="utf-8")
    before = _files(tmp_path)
    for extra in (["--force"], []):
        error = _refused(_wf(tmp_path, "resume", rid, "--json", *extra))
        assert error.startswith(f"run `{rid}` cannot resume, not even with `--force`: ")
        assert f"the steps of its template `{path.resolve()}` are not the run's any more" in error
        assert said in error
        assert "Nothing was changed." in error and "start a new run: workflow run g3" in error
    assert _files(tmp_path) == before  # no `run_resumed`, no step touched
    path.write_text(G3, encoding="utf-8")  # the run's steps again: it resumes
    res = _wf(tmp_path, "resume", rid, "--json")
    assert res.returncode == 0, res.stdout + res.stderr
    summary = json.loads(res.stdout)
    assert summary["status"] == "complete"
    assert summary["outputs"] == {"first": "echo: first"}
    assert {s: v["status"] for s, v in summary["steps"].items()} == dict.fromkeys(
        ("a", "g", "c"), "complete"
    )


def test_force_still_resumes_the_same_steps_with_their_current_definitions(
    tmp_path: Path,
) -> None:
    _setup(tmp_path, g3=G3)
    rid = _park(tmp_path, "g3")["runId"]
    assert _wf(tmp_path, "approve", rid, "g").returncode == 0
    path = tmp_path / "workflows" / "g3.yaml"
    path.write_text(G3.replace('task: "third"', 'task: "third, rewritten"'), encoding="utf-8")
    assert "the template" in _refused(_wf(tmp_path, "resume", rid, "--json"))
    res = _wf(tmp_path, "resume", rid, "--json", "--force")
    assert res.returncode == 0, res.stdout + res.stderr
    record = json.loads((tmp_path / "handoffs" / "workflows" / rid / "c.json").read_text())
    assert record["handoff"]["result"] == "echo: third, rewritten"


def test_approve_all_parks_at_a_gate_that_asks_for_an_input(tmp_path: Path) -> None:
    _setup(tmp_path, asks=ASKS)
    res = _wf(tmp_path, "run", "asks", "-i", "q=1", "--approve-all", "--non-interactive")
    assert res.returncode == 3, res.stdout + res.stderr
    found = re.search(r"^run (wf-\S+) \(asks\)", res.stdout + res.stderr, re.M)
    assert found is not None, res.stdout + res.stderr
    rid = found.group(1)
    assert (
        "warning: `g`: `--approve-all` does not approve this gate: it asks for an input, "
        "which its approver gives (at the prompt, or when the run parks there: "
        f"`workflow approve {rid} g --input VALUE`)."
    ) in res.stdout + res.stderr
    events = (tmp_path / "handoffs" / "workflows" / rid / "events.jsonl").read_text()
    assert "gate_decided" not in events and "step_started" not in events
    res = _wf(tmp_path, "resume", rid, "--approve-all", "--json")  # parks again
    assert res.returncode == 3 and json.loads(res.stdout)["steps"]["g"]["status"] == (
        "waiting_approval"
    )
    ok = _wf(tmp_path, "approve", rid, "g", "--input", '{"depth": "full"}')
    assert ok.returncode == 0, ok.stdout + ok.stderr
    res = _wf(tmp_path, "resume", rid, "--json")
    assert res.returncode == 0, res.stdout + res.stderr
    record = json.loads((tmp_path / "handoffs" / "workflows" / rid / "after.json").read_text())
    assert record["handoff"]["result"] == "echo: depth full"


def _family(tmp_path: Path) -> tuple[str, str]:
    """A parent `pd` parked at its child `gated`'s gate: (parent, child) run ids."""
    _setup(tmp_path, gated=GATED, pd=PARENT)
    parent = _park(tmp_path, "pd")["runId"]
    runs = tmp_path / "handoffs" / "workflows"
    (child,) = [p.name for p in runs.iterdir() if p.name != parent]
    assert json.loads((runs / child / "run.json").read_text())["parent"]["run_id"] == parent
    assert _wf(tmp_path, "approve", child, "g").returncode == 0
    return parent, child


def test_a_parent_whose_child_template_changed_is_refused_and_left_as_it_is(
    tmp_path: Path,
) -> None:
    parent, child = _family(tmp_path)
    path = tmp_path / "workflows" / "gated.yaml"
    path.write_text(GATED.replace('task: "go', 'task: "went'), encoding="utf-8")
    before = _files(tmp_path)
    error = _refused(_wf(tmp_path, "resume", parent, "--json"))
    assert error == (
        f"run `{parent}` cannot resume: the template `{path.resolve()}` of its child run "
        f"`{child}` (step `kid`) changed since that child run started. Nothing was changed. "
        "Start a new run (workflow run pd), or pass `--force` to resume both with the "
        "current definitions (`--force` on a run reaches its child runs too)."
    )
    assert _files(tmp_path) == before  # the step not errored, `bye` not run
    res = _wf(tmp_path, "resume", parent, "--force", "--json")
    assert res.returncode == 0, res.stdout + res.stderr
    summary = json.loads(res.stdout)
    assert {s: v["status"] for s, v in summary["steps"].items()} == dict.fromkeys(
        ("kid", "after", "bye"), "complete"
    )
    record = json.loads((tmp_path / "handoffs" / "workflows" / child / "g.json").read_text())
    assert record["handoff"]["result"] == "echo: went 1"


def test_a_parent_whose_child_template_lost_a_step_is_refused_even_with_force(
    tmp_path: Path,
) -> None:
    parent, child = _family(tmp_path)
    path = tmp_path / "workflows" / "gated.yaml"
    path.write_text(GATED.replace("id: g,", "id: h,"), encoding="utf-8")
    before = _files(tmp_path)
    error = _refused(_wf(tmp_path, "resume", parent, "--force", "--json"))
    assert error.startswith(
        f"run `{parent}` cannot resume, not even with `--force`: the steps of the template "
        f"`{path.resolve()}` of its child run `{child}` (step `kid`) are not the run's any "
        "more (added `h`; removed `g`;"
    )
    assert _files(tmp_path) == before


def test_status_after_approve_names_the_resume(tmp_path: Path) -> None:
    _setup(tmp_path, g3=G3)
    rid = _park(tmp_path, "g3")["runId"]
    assert _wf(tmp_path, "approve", rid, "g").returncode == 0
    res = _wf(tmp_path, "status", rid, "--json")
    assert res.returncode == 0, res.stderr
    g = json.loads(res.stdout)["steps"]["g"]
    assert g["status"] == "pending" and g["gate"]["decision"] == "approved"
    assert g["waiting"] == (
        f"approved by cli; no process is running this run: continue it with "
        f"`workflow resume {rid}`"
    )
    res = _wf(tmp_path, "status", rid)
    assert "approved by cli; no process is running this run: continue it with" in res.stdout
    assert f"`workflow resume {rid}`" in res.stdout


def test_resume_with_a_plain_input_says_it_was_recorded_at_the_start(tmp_path: Path) -> None:
    _setup(tmp_path, gated=GATED)
    rid = _park(tmp_path, "gated", "-i", "q=1")["runId"]
    before = _files(tmp_path)
    error = _refused(_wf(tmp_path, "resume", rid, "-i", "q=other", "--json"))
    assert "changed since it started" not in error
    assert error == (
        f"run `{rid}` cannot resume with `-i q=...`: `-i` on `workflow resume` only gives "
        "again an input that held a secret (run.json keeps those masked; this run's: "
        "none); `q` held no secret: it was recorded in run.json as given at the start, and "
        f"a run keeps the inputs it started with. Nothing was changed. Resume without it "
        f"(`workflow resume {rid}`), or start a new run with the new value: workflow run "
        "gated -i ..."
    )
    assert "is not an input of this run" in _refused(
        _wf(tmp_path, "resume", rid, "-i", "nope=1", "--force", "--json")
    )
    assert _files(tmp_path) == before
    res = _wf(tmp_path, "resume", rid, "-i", "q=1", "--json")  # the recorded value: fine
    assert res.returncode == 3, res.stdout + res.stderr


def test_a_sub_workflow_step_names_its_workflow_in_the_first_announce(tmp_path: Path) -> None:
    _setup(tmp_path, gated=GATED, pd=PARENT)
    res = _wf(tmp_path, "run", "pd", "--non-interactive")
    assert res.returncode == 3, res.stdout + res.stderr
    first = re.search(r"^run (wf-\S+) \(pd\): (.*)$", res.stdout + res.stderr, re.M)
    assert first is not None, res.stdout + res.stderr
    assert first.group(2) == "kid (workflow gated) | after (echo) | bye (echo)"
