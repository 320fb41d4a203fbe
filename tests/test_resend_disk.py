"""A file the engine cannot write in the middle of a run names `workflow resume RUN`
(running it again would send its steps twice); a run that failed before anything of it
was written leaves no empty directory behind (`workflow runs` would list it damaged)."""

from __future__ import annotations

import resource
import subprocess
import sys
from pathlib import Path

from tests.helpers import wait_for
from tests.test_resend_crash import _workflow, scratch  # noqa: F401 (a fixture)


def test_a_write_failing_mid_run_names_resume(scratch: dict[str, Path]) -> None:  # noqa: F811
    proc = _workflow(scratch, "run", str(scratch["dir"] / "one.yaml"))
    wait_for(
        lambda: scratch["starts"].exists() and any(scratch["starts"].iterdir()),
        "the agent never started",
    )
    run_dir = next((scratch["dir"] / "handoffs" / "workflows").iterdir())
    (run_dir / "a.json").mkdir()  # the step's file cannot be written: an OSError
    scratch["go"].touch()
    _, err = proc.communicate(timeout=60)
    text = err.decode()
    assert proc.returncode == 2, text
    assert "Traceback" not in text and "run again" not in text
    assert f"Run {run_dir.name} had started" in text
    assert f"workflow resume {run_dir.name}" in text


def test_a_run_failing_at_its_start_leaves_no_directory(
    scratch: dict[str, Path],  # noqa: F811
) -> None:
    def small_files() -> None:  # run.json cannot be written: EFBIG, as a full disk would
        resource.setrlimit(resource.RLIMIT_FSIZE, (300, 300))

    exe = Path(sys.executable).parent / "workflow"
    done = subprocess.run(
        [str(exe), "run", "one.yaml", "--config", "orchestrator.yaml", "--non-interactive"],
        cwd=scratch["dir"],
        capture_output=True,
        preexec_fn=small_files,
        timeout=120,
    )
    text = done.stderr.decode()
    assert done.returncode == 2, text
    assert "File too large" in text and "run again" in text
    assert list((scratch["dir"] / "handoffs" / "workflows").iterdir()) == []
