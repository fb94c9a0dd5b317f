"""Every example policy is valid (`pyoomd check`), and `pyoomd check --host` reads it against this host without
an error (only warnings: these examples name cgroups of other kinds of hosts)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((REPO / "examples" / "policies").glob("*.yaml"))


def test_there_is_an_example_for_each_kind_of_host():
    assert {p.stem for p in EXAMPLES} >= {"desktop", "server", "kubernetes-node-v1", "hybrid-host"}


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
def test_the_example_passes_pyoomd_check(example: Path):
    for args in (["check", str(example)], ["check", "--host", str(example)]):
        out = subprocess.run([sys.executable, "-m", "supervisor", *args], cwd=REPO, capture_output=True, text=True,
                             timeout=60)
        assert out.returncode == 0, out.stdout + out.stderr
        assert out.stdout.strip().splitlines()[-1].startswith(f"{example}: ok (")
