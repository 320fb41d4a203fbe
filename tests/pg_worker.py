"""One orchestrator host of the scale-out simulation (``tests/test_pg_scaleout.py``).

``ORCH_HOST_ID=HOST python -m tests.pg_worker CONFIG JOBS`` runs, in this process, what one
host of a team runs: its own private directory (the config's ``handoffs_dir``), its own
host identity ``HOST`` (the engine's setting, for envelopes, run leases and pool tokens),
a receiver (``POST /handoffs/{runId}``) on ``JOBS["port"]`` writing to
the shared PostgreSQL store, the shared pool, and ``JOBS["delegations"]`` delegations and
``JOBS["workflows"]`` workflow runs at once. Then it takes over every workflow run whose
executor's lease has expired (a host that died) until every run has ended or
``JOBS["deadline"]`` s have passed. It reports each step as one JSON line on stdout.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

AGENTS = ("webster", "secretary", "tech-lead")
ENDED = ("complete", "failed", "cancelled")


def main() -> int:
    cfg_path, jobs = sys.argv[1], json.loads(sys.argv[2])
    from engine.config import load_config
    from engine.delegate import DelegationRequest, open_delegator
    from engine.errors import OrchestratorError, RunStateError
    from engine.gateway.server import LocalGateway
    from engine.pool import PoolSettings, TokenPool
    from engine.runner import RunOptions, WorkflowRunner, prepare
    from engine.store import open_store
    from engine.store.liveness import this_host

    host = this_host()
    cfg = load_config(cfg_path)
    store = open_store(cfg)
    pool = TokenPool(PoolSettings.from_config(cfg))
    token = os.environ["SIM_RECEIVER_TOKEN"]
    gateway = LocalGateway(cfg, token=token, port=int(jobs["port"]), store=store).start()
    lock = threading.Lock()

    def say(**kw: Any) -> None:
        with lock:
            print(json.dumps({"host": host, **kw}), flush=True)

    template = str(Path(__file__).parent / "workflows" / "run" / "parallel.yaml")
    with open_delegator(cfg, pool=pool, store=store) as d:

        def delegation(i: int) -> None:
            req = DelegationRequest(
                caller="manager", target=AGENTS[i % len(AGENTS)], task=f"{host} task {i}"
            )
            try:
                r = d.delegate(req)
                say(delegated=r.run_id, outcome=r.outcome.value)
            except OrchestratorError as exc:
                say(error=exc.message)

        def workflow(i: int) -> None:
            prepared = prepare(cfg, template, {"topic": f"{host}-{i}"})
            res = WorkflowRunner(cfg, d).start(prepared, RunOptions())
            say(workflow=res.run_id, state=res.state.value)

        threads = [
            threading.Thread(target=workflow, args=(i,)) for i in range(jobs["workflows"])
        ] + [threading.Thread(target=delegation, args=(i,)) for i in range(jobs["delegations"])]
        say(ready=gateway.url)
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        say(own_done=True)

        deadline = time.monotonic() + float(jobs["deadline"])
        while time.monotonic() < deadline:
            unfinished = []
            for run_id in store.list_runs():
                summary = store.read_summary(run_id)
                if not (summary and summary.get("status") in ENDED):
                    unfinished.append(run_id)
            if not unfinished:
                break
            for run_id in unfinished:
                if store.claimed(run_id):
                    continue
                summary = store.read_summary(run_id)
                if summary and summary.get("status") in ENDED:
                    continue  # it ended between the two looks
                try:
                    res = WorkflowRunner(cfg, d).resume(run_id, RunOptions())
                except RunStateError:
                    continue  # another host took it first
                say(resumed=run_id, state=res.state.value)
            time.sleep(0.2)  # the dead host's lease expires by the clock: look again
        say(finished=True)
    gateway.stop()
    pool.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
