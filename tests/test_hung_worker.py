"""A worker that stops answering (here: stopped with SIGSTOP) is killed and replaced."""

from __future__ import annotations

import os
import signal

import pytest

from ipc.endpoints import HEARTBEAT_TIMEOUT
from tests.daemon import Daemon
from tests.test_supervisor import POLICY

pytestmark = pytest.mark.real


def test_silent_worker_is_killed_and_restarted(tmp_path, cgroups):
    daemon = Daemon(tmp_path, POLICY).start()
    try:
        daemon.wait_log(r"first snapshot evaluated")
        hung = daemon.worker_pids()["detector"]
        os.kill(hung, signal.SIGSTOP)  # our own grandchild, by PID
        daemon.wait_log(r"worker detector silent for \d+s; killing it", timeout=HEARTBEAT_TIMEOUT + 15)
        daemon.wait_log(rf"worker detector \(pid {hung}\): RUNNING -> BACKOFF: pid {hung} killed by SIGKILL")
        daemon.wait_log(rf"worker detector \(pid (?!{hung}\))\d+\): STARTING -> RUNNING")
    finally:
        assert daemon.stop() == 0
