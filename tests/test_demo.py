"""`make demo`, the README's first kill, runs as a newcomer would run it: the thrasher dies, its idle neighbour
lives, the record says why, and nothing of the demo is left behind."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.realhost import require_real_host

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.real


def test_the_demo_kills_the_thrasher_spares_its_neighbour_and_cleans_up():
    require_real_host()
    out = subprocess.run([sys.executable, "examples/demo.py"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    name = re.search(r"cgroup /(pyoomd-demo-\d+)/thrasher", out.stdout).group(1)
    assert re.search(r"killed after [\d.]+ s \(exit status -9\); the idle neighbour is still running", out.stdout)
    assert re.search(rf"action record: killed /{name}/thrasher \(pids \[\d+\]\) by kill_by_memory_size_or_growth",
                     out.stdout), out.stdout
    assert not any((Path("/sys/fs/cgroup") / h / name).exists() for h in ("memory", "unified"))
