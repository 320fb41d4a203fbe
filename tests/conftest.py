"""Shared fixtures: a loaded demo config, hooks stand-in servers, watchers closed after
each test. Plain helpers live in ``tests/helpers.py``."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from engine.config import Config, load_config
from tests.helpers import StandIn, demo_config, write_config
from tests.pg import pg_server, pg_url  # noqa: F401 - fixtures: a real PostgreSQL


@pytest.fixture
def demo_cfg(tmp_path: Path) -> Config:
    """A loaded demo config (embedded gateway, eight demo agents)."""
    return load_config(write_config(tmp_path, demo_config(tmp_path)))


@pytest.fixture
def stand_in() -> Iterator[Callable[..., StandIn]]:
    """Factory of started StandIn servers, all stopped at the end of the test."""
    made: list[StandIn] = []

    def make(**kw: Any) -> StandIn:
        s = StandIn(**kw).start()
        made.append(s)
        return s

    yield make
    for s in made:
        s.stop()


@pytest.fixture(autouse=True)
def _close_watchers() -> Iterator[None]:
    yield
    from engine.watch import close_all

    close_all()


@pytest.fixture(autouse=True)
def _forget_secrets() -> Iterator[None]:
    """Each test starts with an empty secret registry: a token one test registered (say
    ``"x" * 20``) must not mask another test's data (a result of 20,000 ``x``)."""
    yield
    from engine.redact import forget_all

    forget_all()
