from __future__ import annotations

import itertools
import os
from collections.abc import Iterator

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
