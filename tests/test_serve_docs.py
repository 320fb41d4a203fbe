"""docs/serve.md: its curl examples run against a real server; its config validates."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.servekit import TOKENS, Served

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "serve.md"


def _doc_workflow() -> str:
    """The workflow the doc tells the reader to save (its YAML block named review-gate)."""
    blocks = re.findall(r"```yaml\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.S)
    (block,) = [b for b in blocks if b.startswith("name: review-gate\n")]
    return block


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    served = Served(tmp_path_factory.mktemp("servedocs"))
    # Only the reader's own copy of the doc's workflow is there (nothing shipped by that name).
    own = served.tmp / "own-workflows"
    own.mkdir()
    (own / "review-gate.yaml").write_text(_doc_workflow(), encoding="utf-8")
    raw = yaml.safe_load(served.path.read_text(encoding="utf-8"))
    raw["workflow_dirs"] = [str(own)]
    served.path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    served.start()
    try:
        yield served
    finally:
        served.stop()
    assert "Traceback" not in "".join(served.log), "".join(served.log)


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
def test_curl_examples_run(srv: Served, tmp_path: Path) -> None:
    text = DOC.read_text(encoding="utf-8")
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    curl = [b for b in blocks if "curl" in b]
    assert curl, "docs/serve.md lost its curl examples"
    env = {
        **os.environ,
        "ORCH": srv.url,
        "TOKEN": TOKENS["alice"][1],
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    }
    for block in curl:
        out = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", block],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert out.returncode == 0, (block, out.stdout, out.stderr)
        assert '"decision":"approved"' in out.stdout and '"by":"alice"' in out.stdout
    assert "event: gate_decided" in (tmp_path / "stream.txt").read_text()


def test_screenshot_is_there() -> None:
    assert "](serve-run.png)" in DOC.read_text(encoding="utf-8")
    assert (ROOT / "docs" / "serve-run.png").stat().st_size > 10_000
