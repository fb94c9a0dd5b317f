"""Detection latency on the real page-cache thrasher (TESTBED.md): how long from the workload's start to its kill,
and from the moment the policy's condition became true to the kill.

Variants, each run --runs times (median printed, and the victim of every run):
  a  an oomd-compatible policy: pressure_above (full avg10 > 10 % for 2 s) on the parent, then kill_by_pressure
  b  the same with pressure_trigger (the kernel's PSI trigger, full 200 ms in 2 s) instead of pressure_above
  a+ (a) with kill_by_memory_size_or_growth beside an idle sibling: the ranking must pick the thrasher
  oomd (a) and (a+) run by oomd itself, when OOMD names its binary (it reads the cgroup2 mount, where this
     hybrid host has no memory figures: with kill_by_memory_size_or_growth it can pick the idle sibling)

When the condition became true is watched by this script, independently of the daemon: for (a), the parent's
`memory.pressure` read every 20 ms (full avg10 above 10 for 2 s without a break, as the detector must see it); for
(b), a PSI trigger of the script's own with the same stall and window (its first event). pyoomd's tick is 1 s.

Run as root: `.venv/bin/python benchmarks/latency.py [--runs 5] [--only a,b,a+]` (OOMD=/path/to/oomd to add oomd).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import select
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.daemon import Daemon
from tests.realhost import CGROUP_ROOT, CgroupSandbox

THRESHOLD, DURATION = 10.0, 2.0  # pressure_above: full avg10 above 10 % for 2 s (oomd's desktop-like numbers)
STALL_US, WINDOW_US = 200_000, 2_000_000  # pressure_trigger: full, 200 ms stalled within 2 s
DEADLINE = 120.0
_counter = itertools.count()


def pyoomd_policy(variant: str, parent: str) -> str:
    if variant == "b":
        detector = (f'pressure_trigger: {{cgroup: "{parent}", resource: memory, type: full, stall: 200ms, '
                    'window: 2s}')
    else:
        detector = (f'pressure_above: {{cgroup: "{parent}", resource: memory, threshold: {THRESHOLD:g}, '
                    f'duration: {DURATION:g}}}')
    action = ("kill_by_memory_size_or_growth: {" if variant == "a+" else "kill_by_pressure: {resource: memory, ")
    return f"""
interval: 1s
rulesets:
  - name: latency
    post_action_delay: 60
    detectors:
      - name: parent stalls
        all: [{detector}]
    actions:
      - {action}cgroup: "{parent}/*"}}
"""


def oomd_config(variant: str, parent: str) -> str:
    action = "kill_by_memory_size_or_growth" if variant == "a+" else "kill_by_pressure"
    extra = {} if variant == "a+" else {"resource": "memory"}
    rel = parent.lstrip("/")
    return json.dumps({"rulesets": [{
        "name": "latency",
        "detectors": [["parent stalls", {"name": "pressure_above", "args": {
            "cgroup": rel, "resource": "memory", "threshold": str(int(THRESHOLD)), "duration": str(int(DURATION))}}]],
        "actions": [{"name": action, "args": {"cgroup": f"{rel}/*", "post_action_delay": "60", **extra}}],
    }]})


@dataclass
class Run:
    variant: str
    daemon: str
    start_to_kill: float | None = None  # seconds
    condition_to_kill: float | None = None
    victim: str = ""  # which of the two was killed: "thrasher", "idle", "none"
    notes: list[str] = field(default_factory=list)


class ConditionWatch:
    """When the policy's condition became true, seen from outside the daemon."""

    def __init__(self, parent_dir: Path, variant: str) -> None:
        self.variant = variant
        self.file = parent_dir / "memory.pressure"
        self.first: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)

    @property
    def became_true(self) -> float | None:
        if self.first is None:
            return None
        return self.first + (DURATION if self.variant != "b" else 0.0)

    def _watch(self) -> None:
        if self.variant == "b":
            fd = os.open(self.file, os.O_RDWR | os.O_NONBLOCK)
            try:
                os.write(fd, f"full {STALL_US} {WINDOW_US}\0".encode())
                poller = select.poll()
                poller.register(fd, select.POLLPRI)
                while not self._stop.is_set():
                    if poller.poll(100):
                        self.first = time.monotonic()
                        return
            finally:
                os.close(fd)
        # As pressure_above sees it: above the threshold without a break for DURATION; a dip starts it over.
        above_since: float | None = None
        while not self._stop.is_set():
            try:
                full = self.file.read_text().splitlines()[1]
            except (OSError, IndexError):
                return
            now = time.monotonic()
            if float(full.split()[1].split("=")[1]) > THRESHOLD:
                above_since = now if above_since is None else above_since
                if now - above_since >= DURATION:
                    self.first = above_since
                    return
            else:
                above_since = None
            time.sleep(0.02)


def one(variant: str, daemon_kind: str, oomd: str | None, limit_mib: int = 64) -> Run:
    run = Run(variant, daemon_kind)
    cg = CgroupSandbox(name=f"pyoomd-latency-{os.getpid()}-{next(_counter)}")
    cg.mkdir()
    tmp = Path(tempfile.mkdtemp(prefix="pyoomd-latency-"))
    proc: subprocess.Popen | None = None
    daemon: Daemon | None = None
    try:
        if daemon_kind == "pyoomd":
            daemon = Daemon(tmp, pyoomd_policy(variant, cg.path), "--bus", "none", "--systemd-bus", "none").start()
            daemon.wait_log("first snapshot evaluated", timeout=60)
        else:
            assert oomd is not None
            config = tmp / "oomd.json"
            config.write_text(oomd_config(variant, cg.path))
            with open(tmp / "oomd.log", "wb") as log:
                proc = subprocess.Popen([oomd, "--config", str(config), "--cgroup-fs", str(CGROUP_ROOT / "unified"),
                                         "--interval", "1"], stdout=subprocess.DEVNULL, stderr=log)
            time.sleep(3)  # oomd has no readiness signal; it reads its config at once
        cg.mkdir("thrasher", memory_limit=limit_mib << 20)
        cg.mkdir("idle")
        idle = cg.sleeper("idle")
        watch = ConditionWatch(CGROUP_ROOT / "unified" / cg.name, variant)
        watch.start()
        started = time.monotonic()
        thrasher = cg.thrasher("thrasher")
        while thrasher.poll() is None and idle.poll() is None and time.monotonic() - started < DEADLINE:
            time.sleep(0.005)
        ended = time.monotonic()
        watch.stop()
        if thrasher.poll() is not None:
            run.victim = "thrasher"
        elif idle.poll() is not None:
            run.victim = "idle"
        else:
            run.victim = "none"
            return run
        run.start_to_kill = ended - started
        if watch.became_true is not None:
            run.condition_to_kill = ended - watch.became_true
        return run
    finally:
        if daemon is not None:
            daemon.stop()
        if proc is not None:
            proc.terminate()  # our own child, by PID
            proc.wait(10)
        cg.cleanup()
        shutil.rmtree(tmp, ignore_errors=True)


def fmt(values: list[float]) -> str:
    return f"{statistics.median(values):.3f}" if values else "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--only", default="a,b,a+", help="variants, comma-separated")
    parser.add_argument("--limit-mib", type=int, default=64, help="the thrasher's memory limit: lower thrashes "
                        "harder (how hard a 64 MiB one stalls varies from host to host and with its load)")
    args = parser.parse_args()
    oomd = os.environ.get("OOMD")
    plan = [(v, "pyoomd") for v in args.only.split(",")]
    if oomd:
        plan += [(v, "oomd") for v in args.only.split(",") if v in ("a", "a+")]
    results: list[Run] = []
    for variant, kind in plan:
        for _ in range(args.runs):
            r = one(variant, kind, oomd, args.limit_mib)
            results.append(r)
            ck = f"{r.condition_to_kill:.3f}" if r.condition_to_kill is not None else "-"
            sk = f"{r.start_to_kill:.2f}" if r.start_to_kill is not None else "-"
            print(f"  {kind:6} {variant:3} start->kill {sk:>6} s  condition->kill {ck:>7} s  victim {r.victim}",
                  flush=True)
    print(f"\n{time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores, pyoomd tick 1 s")
    print(f"{'daemon':7} {'variant':8} {'runs':>4} {'start->kill s':>14} {'condition->kill s':>18}  victims")
    for (variant, kind) in plan:
        rs = [r for r in results if (r.variant, r.daemon) == (variant, kind)]
        victims = ", ".join(f"{v} {sum(r.victim == v for r in rs)}" for v in ("thrasher", "idle", "none")
                            if any(r.victim == v for r in rs))
        print(f"{kind:7} {variant:8} {len(rs):>4} {fmt([r.start_to_kill for r in rs if r.start_to_kill]):>14} "
              f"{fmt([r.condition_to_kill for r in rs if r.condition_to_kill is not None]):>18}  {victims}")


if __name__ == "__main__":
    main()
