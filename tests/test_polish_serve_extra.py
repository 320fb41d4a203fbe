"""`orchestrate serve` without the `serve` extra says how to install it from a checkout."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from tests.helpers import demo_config


def test_serve_without_the_extra_names_both_checkout_installs(tmp_path: Path) -> None:
    config = tmp_path / "orchestrator.yaml"
    config.write_text(yaml.safe_dump(demo_config(tmp_path)), encoding="utf-8")
    # fastapi cannot be imported in this process (None in sys.modules: ImportError).
    code = ("import sys; sys.modules['fastapi'] = None\n"
            "from engine.cli import orchestrate_main; orchestrate_main()")
    got = subprocess.run(
        [sys.executable, "-c", code, "serve", "--port", "0", "--config", str(config)],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )
    assert got.returncode == 2, got.stderr
    assert "Traceback" not in got.stderr
    assert "needs the `serve` extra (fastapi is missing)" in got.stderr
    assert "`source scripts/bootstrap.sh serve`" in got.stderr
    assert "`.venv/bin/pip install -e '.[serve]'`" in got.stderr
