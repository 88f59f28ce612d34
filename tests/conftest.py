from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support import Daemon


@pytest.fixture
def daemon_factory(tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    """Start real daemons in tmp_path; every one is stopped at the end of the test."""
    started: list[Daemon] = []

    def make(*args: str, name: str = "data", env: dict[str, str] | None = None,
             wait: bool = True) -> Daemon:
        d = Daemon(tmp_path / name, list(args), env or {})
        started.append(d)
        return d.start(wait=wait)

    yield make
    for d in started:
        if d.proc is not None:
            d.stop()


@pytest.fixture
def daemon(daemon_factory: Callable[..., Daemon]) -> Daemon:
    return daemon_factory()


def postgres_dsn() -> str | None:
    return os.environ.get("LNT_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
