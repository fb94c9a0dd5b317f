from __future__ import annotations

import itertools
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.realhost import CgroupSandbox, require_real_host

_counter = itertools.count()


@pytest.fixture
def cgroups() -> Iterator[CgroupSandbox]:
    """A fresh test parent cgroup (memory + unified) under this run's prefix, removed afterwards."""
    require_real_host()
    cg = CgroupSandbox(name=f"pyoomd-test-{os.getpid()}-{next(_counter)}")
    cg.mkdir()
    try:
        yield cg
    finally:
        cg.cleanup()


# Appended with the fixture below rather than merged into the imports above, which other work edits too.
from tests.desktop_session import desktop  # noqa: E402, F401  (a fixture: a user's desktop session)
from tests.systemd_manager import UserManager, user_manager  # noqa: E402


@pytest.fixture(scope="session")
def systemd_user_manager() -> Iterator[UserManager]:
    """A real systemd user manager in its own cgroup (tests/systemd_manager.py), torn down at the session's end."""
    with user_manager() as manager:
        yield manager



@pytest.fixture(scope="session", autouse=True)
def worker_user() -> None:
    """The unprivileged user the collector and detector drop to, as `make test` and `make install` add it, so every
    real test runs them as they run in production (as root they would only warn)."""
    if os.geteuid() == 0:
        subprocess.run(["make", "-s", "user"], cwd=Path(__file__).resolve().parent.parent, check=True, timeout=60)
