"""Fixtures of the `openclaw` tier: one real gateway (and one scripted model) per test run.

Import the fixture into a test module (``from tests.peers.openclaw.fixtures import
openclaw_peer``). It installs the peer once (reusing ``.cache/openclaw``), starts the
stub model and ONE gateway on free loopback ports, and stops both at the end of the
session. Without npm or the registry it fails with the reason; ``ORCH_SKIP_OPENCLAW=1``
skips the tier instead.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.peers.openclaw.peer import SKIP_ENV, Peer, PeerUnavailable, running_peer
from tests.peers.openclaw.stub_llm import StubLLM

#: The env var our configs read the hooks token from, and one holding a wrong token.
TOKEN_ENV = "ORCH_OPENCLAW_HOOKS_TOKEN"
WRONG_TOKEN_ENV = "ORCH_OPENCLAW_WRONG_TOKEN"
WRONG_TOKEN = "wrong-hooks-token-0000000000000000"
#: The gateway throttles more than 20 failed authentications a minute (then 429 for 60 s).
BAD_AUTH_LIMIT = 20


@dataclass
class OpenClawSession:
    """A running peer and what tests need around it: configs, env, a bad-token budget."""

    peer: Peer
    bad_auth: list[float] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.peer.url

    @property
    def token(self) -> str:
        return self.peer.hook_token

    @property
    def stub(self) -> StubLLM:
        stub: StubLLM = self.peer.stub
        return stub

    @property
    def workspace(self) -> Path:
        return self.peer.workspace

    def env(self) -> dict[str, str]:
        """The environment variables our configs read tokens from."""
        return {TOKEN_ENV: self.token, WRONG_TOKEN_ENV: WRONG_TOKEN}

    def note_bad_auth(self, attempts: int = 1) -> None:
        """Count wrong-token requests; fail before the gateway would start throttling."""
        now = time.monotonic()
        self.bad_auth.extend([now] * attempts)
        recent = [t for t in self.bad_auth if now - t < 60]
        assert len(recent) < BAD_AUTH_LIMIT, (
            f"{len(recent)} wrong-token requests in a minute: the gateway answers 429 "
            f"after {BAD_AUTH_LIMIT}; spread these tests out"
        )

    def engine_config(self, tmp_path: Path, **extra: Any) -> Path:
        """Write an orchestrator.yaml whose agents all live behind the real gateway.

        Several engine agents share agent `main` (each delegation is an isolated hook
        run); `ghost` names an agent the gateway does not have, `outsider` one it has but
        does not allow, `intruder` sends a wrong token.
        """

        def agent(agent_id: str = "main", token_env: str = TOKEN_ENV) -> dict[str, Any]:
            return {"url": self.url, "token_env": token_env, "agent_id": agent_id}

        raw: dict[str, Any] = {
            "handoffs_dir": str(tmp_path / "handoffs"),
            "default_timeout": 30,
            "handoff_grace": 0.5,
            "retry": {"delays": [0.5, 1.0], "jitter": 0.0, "request_timeout": 15},
            "pool": {"adaptive": False, "max_tokens": 4},
            "agents": {
                **{name: agent() for name in ("manager", "webster", "secretary", "tech-lead")},
                "ghost": agent("ghost"),
                "outsider": agent("other"),
                "intruder": agent(token_env=WRONG_TOKEN_ENV),
            },
        }
        raw.update(extra)
        path = tmp_path / "orchestrator.yaml"
        path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
        return path


@pytest.fixture(scope="module")
def openclaw_peer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpenClawSession]:
    """One real OpenClaw gateway (agents `main`, `other`; only `main` allowed) for the tier.

    Module-scoped: only tests/test_openclaw.py uses it, so a session starts it once, and
    it is stopped when that module ends rather than idling (about 1 GB, some CPU) under
    the load-sensitive tests that run after it. The `main` workspace has the agent skill
    (``engine.agentskill.install``) in it.
    """
    if os.environ.get(SKIP_ENV) == "1":
        pytest.skip(f"{SKIP_ENV}=1: the real OpenClaw gateway tier is skipped")
    from engine.agentskill import install

    run_dir = tmp_path_factory.mktemp("openclaw")
    try:
        # Set up like a deployment: the agent skill goes in before the gateway starts
        # (a running gateway does not add new workspace skills to hook runs).
        with running_peer(run_dir, before_start=lambda s: install(s.workspace)) as peer:
            yield OpenClawSession(peer)
    except PeerUnavailable as exc:
        hint = "" if SKIP_ENV in str(exc) else (
            f"\n(set {SKIP_ENV}=1 to skip this tier on a machine that cannot run it)")
        pytest.fail(f"the OpenClaw peer is unavailable: {exc}{hint}", pytrace=False)
