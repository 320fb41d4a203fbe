"""Figures and claims in docs/ that newcomers checked, held to what the code does."""

from __future__ import annotations

import re
from pathlib import Path

from engine.message import render_message

ROOT = Path(__file__).resolve().parent.parent


def test_protocol_message_figures_are_the_real_message() -> None:
    doc = (ROOT / "docs" / "protocol.md").read_text(encoding="utf-8")
    key = re.search(r"^    key: ([0-9a-f]+)$", doc, flags=re.M)
    run_id = re.search(r"^    run_id: (orch-\S+)$", doc, flags=re.M)
    path = re.search(r"^    handoff_path: (\S+)$", doc, flags=re.M)
    assert key and run_id and path
    assert len(key.group(1)) == 32
    message = render_message(
        task="Find CTE of Zerodur", run_id=run_id.group(1), agent="webster",
        caller="manager", handoff_path=Path(path.group(1)), timeout=120, key=key.group(1),
    )
    last_two = "\n" + "\n".join(message.splitlines()[-2:])
    assert message.splitlines()[-1].startswith("Progress (optional): ")
    assert "--key " + key.group(1) in message.splitlines()[-1]
    said = (
        f"add {len(last_two)} characters: this example message in full\n(its `...` written "
        f"out, with the 32-hex-digit key above) is {len(message):,} characters, "
        f"{len(message) - len(last_two):,}\nwithout them"
    )
    assert said in doc
    progress = next(line for line in doc.splitlines() if "    Progress (optional):" in line)
    assert "--key " in progress
