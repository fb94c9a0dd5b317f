"""Real cgroups for tests: a parent under a per-run prefix in the memory and unified hierarchies, workloads put
into children of it, and a cleanup that ends only our own processes (by PID) and removes only our cgroups.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

CGROUP_ROOT = Path("/sys/fs/cgroup")
HIERARCHIES = ("memory", "unified")
SYSTEM_PYTHON = "/usr/bin/python3"  # the thrasher's interpreter when it runs as another user

THRASHER = r"""
import mmap, os, sys
path = sys.argv[1]
with open(path, "wb") as f:                 # written inside the cgroup: its page cache is charged here
    for _ in range(256):
        f.write(os.urandom(1 << 20))
m = mmap.mmap(os.open(path, os.O_RDONLY), 0, prot=mmap.PROT_READ)
while True:
    for i in range(0, len(m), 4096):
        m[i]
"""


def require_real_host() -> None:
    """Skip outside CI when this host cannot run real cgroup tests; fail in CI, where they must run."""
    problems = []
    if os.geteuid() != 0:
        problems.append("not root")
    for h in HIERARCHIES:
        if not (CGROUP_ROOT / h / "cgroup.procs").exists():
            problems.append(f"no {CGROUP_ROOT / h}")
    if not Path("/proc/pressure/memory").exists():
        problems.append("no PSI")
    if problems:
        message = "real cgroup test cannot run: " + ", ".join(problems)
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


def _move_into(dirs: list[Path]) -> None:
    for d in dirs:
        (d / "cgroup.procs").write_text(str(os.getpid()))


@dataclass
class CgroupSandbox:
    name: str
    procs: list[subprocess.Popen] = field(default_factory=list)
    dirs: list[Path] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)

    @property
    def path(self) -> str:
        return "/" + self.name

    def mkdir(self, rel: str = "", memory_limit: int | None = None, hierarchies: tuple[str, ...] = HIERARCHIES) -> None:
        for h in hierarchies:
            d = CGROUP_ROOT / h / self.name / rel if rel else CGROUP_ROOT / h / self.name
            d.mkdir(exist_ok=True)
            if d not in self.dirs:
                self.dirs.append(d)
        if memory_limit is not None:
            (CGROUP_ROOT / "memory" / self.name / rel / "memory.limit_in_bytes").write_text(str(memory_limit))

    def spawn(self, rel: str, argv: list[str], hierarchies: tuple[str, ...] = HIERARCHIES,
              user: int | None = None) -> subprocess.Popen:
        """Start argv inside child cgroup `rel` (moved before exec, so all it does is charged there); with
        `user`, as that uid (and gid, no other group), after the move, which only root may make."""
        dirs = [CGROUP_ROOT / h / self.name / rel for h in hierarchies]

        def enter() -> None:
            _move_into(dirs)
            if user is not None:
                os.setgroups([])
                os.setresgid(user, user, user)
                os.setresuid(user, user, user)

        proc = subprocess.Popen(
            argv, preexec_fn=enter, stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        self.procs.append(proc)
        return proc

    def thrasher(self, rel: str, hierarchies: tuple[str, ...] = HIERARCHIES, user: int | None = None
                 ) -> subprocess.Popen:
        data = Path(f"/tmp/{self.name}-{rel.replace('/', '-')}.dat")
        self.files.append(data)
        # Another user cannot run the test's own interpreter (it lives under root's home): the system's then.
        python = sys.executable if user is None else SYSTEM_PYTHON
        return self.spawn(rel, [python, "-c", THRASHER, str(data)], hierarchies, user)

    def sleeper(self, rel: str, user: int | None = None) -> subprocess.Popen:
        return self.spawn(rel, ["sleep", "1000"], user=user)

    def leftover_pids(self) -> set[int]:
        """Processes still in the sandbox: descendants of what this test started (a shell's children)."""
        pids: set[int] = set()
        for d in self.dirs:
            for procs in d.rglob("cgroup.procs") if d.is_dir() else []:
                with contextlib.suppress(OSError):
                    pids.update(int(x) for x in procs.read_text().split())
        return pids

    def cleanup(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)  # our own child, by PID, still unreaped so the PID is ours
            proc.wait()
        # Grandchildren (a shell's background jobs) outlive the shell; they sit only in our own cgroups, so
        # every PID found there is one this test started.
        for _ in range(3):
            left = self.leftover_pids()
            if not left:
                break
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.2)
        for d in sorted(self.dirs, key=lambda p: len(p.parts), reverse=True):
            for _ in range(50):  # a killed process leaves its cgroup a moment after it is reaped
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.1)
        for f in self.files:
            with contextlib.suppress(FileNotFoundError):
                f.unlink()


def wait_for(predicate, timeout: float, what: str, interval: float = 0.2):
    """Poll `predicate` until it returns something truthy; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
