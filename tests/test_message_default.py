"""The default agent message is built without Jinja2; it must be exactly what the shipped
``engine/templates/message.j2`` renders, over every branch of that template."""

from __future__ import annotations

import itertools
import subprocess
import sys
from pathlib import Path

import pytest

from engine.message import _compiled, progress_command, render_message, write_command

CASES = list(
    itertools.product(
        [None, "", "## Context\nrecent messages"],  # context
        [None, "orch-parent-1"],  # parent_run_id
        [None, 0, 120.0, 0.5, 90],  # timeout
        [None, "k3y-abcdefghijklmnop"],  # key
        [None, "http://orch-a.internal:18900"],  # receiver_url
    )
)


@pytest.mark.parametrize(("context", "parent", "timeout", "key", "receiver"), CASES)
def test_the_default_message_is_the_templates(
    context: str | None, parent: str | None, timeout: float | None, key: str | None,
    receiver: str | None,
) -> None:  # fmt: skip
    path = Path("/tmp/handoffs/inbox/orch-1.json")
    task = 'Find the CTE of Zerodur {{ not a template }} "quoted" \\ back\n\nline 3  '
    values = dict(task=task, run_id="orch-1", agent="webster", caller="manager",
                  handoff_path=str(path), receiver_url=receiver, timeout=timeout,
                  parent_run_id=parent, context=context, key=key,
                  write_command=write_command("orch-1", "webster", path.parent, key),
                  progress_command=progress_command("orch-1", path.parent, key))  # fmt: skip
    expected = _compiled(None).render(**values)
    got = render_message(task=task, run_id="orch-1", agent="webster", caller="manager",
                         handoff_path=path, receiver_url=receiver, timeout=timeout,
                         parent_run_id=parent, context=context, key=key)  # fmt: skip
    assert got == expected


def test_a_delegation_with_the_default_message_imports_no_jinja2(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from engine.message import render_message\n"
        "render_message(task='t', run_id='orch-1', agent='a', caller='c',\n"
        "               handoff_path=Path('/tmp/x.json'), key='k')\n"
        "print('jinja2' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
