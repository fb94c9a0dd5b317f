"""Under systemd (JOURNAL_STREAM set), each log line carries its sd-daemon priority prefix."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SCRIPT = """
import logging
from supervisor.logsetup import setup_logging
setup_logging("test")
logging.getLogger("x").error("broken")
logging.getLogger("x").info("fine")
"""


def run(env_extra: dict[str, str]) -> list[str]:
    env = {"PYTHONPATH": str(REPO), **env_extra}
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, check=True)
    return out.stderr.splitlines()


def test_priority_prefixes_only_for_the_journal():
    journal = run({"JOURNAL_STREAM": "8:12345"})
    assert journal[0].startswith("<3>pyoomd[test:") and journal[0].endswith("ERROR broken")
    assert journal[1].startswith("<6>pyoomd[test:")
    plain = run({})
    assert plain[0].startswith("pyoomd[test:")
