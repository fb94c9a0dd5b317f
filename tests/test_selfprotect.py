"""pyoomd protects itself: its memory locked in every process on the detection and kill path, its OOM score
lowered where the kernel lets it (or a warning saying it could not), and the kill path paged in at start."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.daemon import Daemon
from tests.test_supervisor import POLICY

pytestmark = pytest.mark.real


def _status(pid: int, key: str) -> str:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return line.split(":", 1)[1].strip()
    return ""


def test_memory_locked_oom_score_lowered_or_reported_and_kill_path_warmed(tmp_path, cgroups):
    daemon = Daemon(tmp_path, POLICY).start()
    try:
        daemon.wait_log(r"first snapshot evaluated")
        daemon.wait_log(r"kill path warmed up \(dry run on ")
        for name, pid in {**daemon.worker_pids(), "supervisor": daemon.proc.pid}.items():
            locked_kb = int(_status(pid, "VmLck").split()[0])
            assert locked_kb > 0, f"{name} has no locked memory"
        score = Path(f"/proc/{daemon.proc.pid}/oom_score_adj").read_text().strip()
        assert score == "-1000" or "cannot set oom_score_adj to -1000" in daemon.log
        assert "cannot lock pyoomd's memory" not in daemon.log
    finally:
        assert daemon.stop() == 0
