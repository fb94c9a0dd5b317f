"""pyoomd squeezed: the daemon in a memory cgroup of its own whose limit leaves little room, with a page-cache
thrasher of its own in there, while another thrasher elsewhere must be killed. Shared by the test (it is still
killed) and benchmarks/squeeze.py (how much later than with room to spare)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from tests.daemon import Daemon
from tests.realhost import CGROUP_ROOT, CgroupSandbox, wait_for

SLACK = 48 << 20  # room left above what the daemon uses once it runs: the squeezer thrashes its page cache in it


def policy(parent: str) -> str:
    return f"""
interval: 0.5
rulesets:
  - name: squeezed
    post_action_delay: 30
    detectors:
      - name: target under pressure
        all:
          - pressure_above: {{cgroup: "{parent}/target", resource: memory, threshold: 5, duration: 1}}
    actions:
      - kill_by_memory_size_or_growth: {{cgroup: "{parent}/*"}}
"""


@dataclass
class Outcome:
    seconds_to_kill: float  # from the target thrasher's start to its death
    daemon_limit: int  # bytes; 0: no limit (the daemon had room)
    daemon_pressure: float | None  # the daemon cgroup's own 'some' avg10 when the target died
    killed_by_pyoomd: bool


def run(cg: CgroupSandbox, tmp: Path, squeeze: bool, deadline: float = 120.0) -> Outcome:
    """One run: the daemon in `cg`/daemon (squeezed or not), the target thrasher in `cg`/target."""
    cg.mkdir("daemon")
    cg.mkdir("target", memory_limit=64 << 20)
    dirs = [CGROUP_ROOT / h / cg.name / "daemon" for h in ("memory", "unified")]
    daemon = Daemon(tmp, policy(cg.path), "--bus", "none", "--systemd-bus", "none").start(cgroup_dirs=dirs)
    try:
        daemon.wait_log("first snapshot evaluated", timeout=60)
        limit = 0
        if squeeze:
            memory = dirs[0]
            limit = int((memory / "memory.usage_in_bytes").read_text()) + SLACK
            (memory / "memory.limit_in_bytes").write_text(str(limit))
            cg.thrasher("daemon")  # in the daemon's own cgroup: protected, never a victim, squeezes it
            time.sleep(5)  # the squeeze takes hold
        started = time.monotonic()
        target = cg.thrasher("target")
        wait_for(lambda: target.poll() is not None, deadline, "the target thrasher to die")
        took = time.monotonic() - started
        pressure = (dirs[1] / "memory.pressure").read_text().split()[1]
        ours = any(r["target"] == f"{cg.path}/target" and r["result"] == "killed" for r in daemon.actions())
        return Outcome(took, limit, float(pressure.split("=")[1]), ours)
    finally:
        daemon.stop()
