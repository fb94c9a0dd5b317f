"""How soon a worker killed with SIGKILL is replaced: from the kill to the new worker's hello accepted (its
STARTING -> RUNNING line), for each worker, on an idle host. Run as root: `.venv/bin/python benchmarks/restart.py
[--rounds 3]`. The first crash within the crash window (60 s) is restarted at once, later ones wait a doubling
backoff; so each worker is killed only once a window, and what is measured is the replacement itself: fork, exec,
imports, dropping privileges, the hello. Rounds therefore take a minute each.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from supervisor.workers import CRASH_WINDOW
from tests.daemon import Daemon
from tests.test_supervisor import POLICY

WORKERS = ("collector", "detector", "actuator")


def wait_running(daemon: Daemon, worker: str, old_pid: int, since: int, timeout: float = 30.0) -> float:
    """Poll the log (every 2 ms) for the replacement's RUNNING line; returns the time it appeared."""
    pattern = re.compile(rf"worker {worker} \(pid (\d+)\): STARTING -> RUNNING")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for m in pattern.finditer(daemon.log, since):
            if int(m.group(1)) != old_pid:
                return time.monotonic()
        time.sleep(0.002)
    raise TimeoutError(f"{worker} not replaced within {timeout:g} s; the log since the kill:\n{daemon.log[since:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    times: dict[str, list[float]] = {w: [] for w in WORKERS}
    with tempfile.TemporaryDirectory() as tmp:
        daemon = Daemon(Path(tmp), POLICY, "--bus", "none", "--systemd-bus", "none").start()
        try:
            daemon.wait_log("first snapshot evaluated")
            for _ in range(args.rounds):
                for worker in WORKERS:
                    pid = daemon.worker_pids()[worker]
                    since = len(daemon.log)
                    killed = time.monotonic()
                    os.kill(pid, signal.SIGKILL)  # our own grandchild, alive (we just listed it)
                    times[worker].append(wait_running(daemon, worker, pid, since) - killed)
                    time.sleep(CRASH_WINDOW / len(WORKERS) + 1)  # each worker's next kill is a first crash again
        finally:
            daemon.stop()
    print(f"{'worker':10} {'runs':>4} {'median s':>9} {'min s':>7} {'max s':>7}")
    for worker, ts in times.items():
        print(f"{worker:10} {len(ts):>4} {statistics.median(ts):>9.3f} {min(ts):>7.3f} {max(ts):>7.3f}")


if __name__ == "__main__":
    main()
