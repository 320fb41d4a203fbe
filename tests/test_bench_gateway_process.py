"""`bench/peers/concurrency.py --gateway-process`: the gateway in a child process serves the
bench's agents, and its CPU is read from /proc (a real child, a real run)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench" / "peers"


def _load(name: str) -> ModuleType:
    if str(BENCH) not in sys.path:  # concurrency.py imports shapes as a sibling
        sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location(f"bench_gwproc_{name}", BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs /proc")
def test_a_run_through_the_gateway_process_completes_and_its_cpu_is_counted(
    tmp_path: Path,
) -> None:
    from engine.config import load_config
    from engine.delegate import open_delegator
    from engine.runner import RunOptions, RunState, WorkflowRunner, prepare

    concurrency = _load("concurrency")
    shapes = _load("shapes")
    with concurrency.gateway_process(tmp_path) as (cfg_path, pid):
        cfg = load_config(cfg_path)
        assert cfg.gateway is not None and not cfg.gateway.embedded
        assert all(a.url.startswith("http://127.0.0.1:") for a in cfg.agents.values())
        before = concurrency.cpu_of(pid)
        workflow = shapes.write_ours(shapes.flat("two", 2), tmp_path)
        with open_delegator(cfg) as delegator:
            result = WorkflowRunner(cfg, delegator).start(
                prepare(cfg, str(workflow), {}), RunOptions(max_parallel=2)
            )
        assert result.state is RunState.COMPLETE
        assert concurrency.cpu_of(pid) > before > 0  # the child served the two steps
    assert concurrency.cpu_of(None) == 0.0
