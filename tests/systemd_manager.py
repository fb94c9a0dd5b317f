"""A real systemd user manager for tests, started as ../shared/TESTBED.md describes, never from the root cgroup.

The manager is an ordinary process of ours: a shell moves itself into a fresh top-level cgroup `pyoomd-sd-<pid>`
in every hierarchy the manager uses, checks that it got there, and only then execs (through `unshare -m`) into
`systemd --user`. A systemd started in the root cgroup would take the root as its own and move PID 1 and every
other process into init.scope; started in its own sub-cgroup it manages that sub-tree only. The private mount
namespace gives it a /run/systemd/system (without which it refuses to run) without touching the machine's /run.

Tear-down: `systemctl --user exit`, then any process left in our cgroups (all started by our manager) is killed by
PID, and our cgroups are removed deepest first, in every hierarchy the manager may have written to.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.realhost import CgroupSandbox

CGROUP_ROOT = Path("/sys/fs/cgroup")
# Where the manager's shell moves itself before exec: the hierarchies its units land in (TESTBED.md's recipe).
MANAGER_HIERARCHIES = ("systemd", "memory", "pids", "cpu", "unified")
SYSTEMD = Path("/lib/systemd/systemd")
START_TIMEOUT = 15.0

# $1: our cgroup name, $2: the runtime dir. `set -e`: if any move fails the shell exits and systemd never starts.
# The grep lines are the last guard: systemd starts only in our own cgroup of the name=systemd and unified trees.
_START = r"""
set -e
for h in MANAGER_HIERARCHIES; do echo $$ > /sys/fs/cgroup/$h/$1/cgroup.procs; done
grep -qx "[0-9]*:name=systemd:/$1" /proc/self/cgroup
grep -qx "0::/$1" /proc/self/cgroup
exec unshare -m --propagation private sh -c 'mount --bind "$1/runsd" /run/systemd && exec SYSTEMD --user' sh "$2"
""".replace("MANAGER_HIERARCHIES", " ".join(MANAGER_HIERARCHIES)).replace("SYSTEMD", str(SYSTEMD))

_unit_counter = itertools.count()


def _missing() -> list[str]:
    problems = []
    if os.geteuid() != 0:
        problems.append("not root")
    for h in MANAGER_HIERARCHIES:
        if not (CGROUP_ROOT / h / "cgroup.procs").exists():
            problems.append(f"no {CGROUP_ROOT / h}")
    if not SYSTEMD.exists():
        problems.append(f"no {SYSTEMD}")
    for tool in ("unshare", "systemctl", "systemd-run"):
        if shutil.which(tool) is None:
            problems.append(f"no {tool}")
    return problems


def _cannot_start(message: str) -> None:
    """Skip outside CI; fail in CI, where the systemd tests must run."""
    message = "systemd user manager cannot start: " + message
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def _pid1_cgroups() -> str:
    return Path("/proc/1/cgroup").read_text()


@dataclass
class UserManager:
    name: str  # the manager's own top-level cgroup, in every hierarchy
    runtime_dir: Path
    proc: subprocess.Popen | None = None
    units: list[str] = field(default_factory=list)

    @property
    def cgroup(self) -> str:
        return "/" + self.name

    @property
    def bus_address(self) -> str:
        return f"unix:path={self.runtime_dir}/bus"

    @property
    def private_address(self) -> str:
        return f"unix:path={self.runtime_dir}/systemd/private"

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "XDG_RUNTIME_DIR": str(self.runtime_dir), "DBUS_SESSION_BUS_ADDRESS": self.bus_address}

    @property
    def log(self) -> Path:
        return self.runtime_dir / "manager.log"

    def systemctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["systemctl", "--user", *args], env=self.env, capture_output=True, text=True,
                              timeout=30, check=check)

    def show(self, unit: str, prop: str) -> str:
        return self.systemctl("show", "-p", prop, "--value", unit).stdout.strip()

    def run_unit(self, argv: list[str], tag: str = "victim", properties: dict[str, str] | None = None,
                 slice_: str | None = None) -> str:
        """A transient service running argv (MemoryMax=64M unless told otherwise), in app.slice or `slice_`; its
        name is unique to this run."""
        unit = f"pyoomd-{tag}-{os.getpid()}-{next(_unit_counter)}.service"
        props = {"MemoryMax": "64M"} if properties is None else properties
        cmd = ["systemd-run", "--user", "--quiet", f"--unit={unit}"]
        if slice_ is not None:
            cmd.append(f"--slice={slice_}")
        for key, value in props.items():
            cmd += ["-p", f"{key}={value}"]
        self.units.append(unit)
        subprocess.run([*cmd, "--", *argv], env=self.env, capture_output=True, text=True, timeout=30, check=True)
        return unit

    def stop_unit(self, unit: str) -> None:
        """Stop it and forget it (a failed transient unit stays loaded until reset-failed)."""
        self.systemctl("stop", unit, check=False)
        self.systemctl("reset-failed", unit, check=False)

    def unit_cgroup(self, unit: str, slice_: str = "app.slice") -> str:
        """The unit's cgroup path relative to a hierarchy's root, as systemd's ControlGroup has it."""
        return f"{self.cgroup}/{slice_}/{unit}"

    def cgroup_dir(self, hierarchy: str, path: str) -> Path:
        return CGROUP_ROOT / hierarchy / path.lstrip("/")

    def pids_in(self, path: str, hierarchy: str = "systemd") -> set[int]:
        try:
            return {int(x) for x in (self.cgroup_dir(hierarchy, path) / "cgroup.procs").read_text().split()}
        except OSError as e:
            # Gone, or being removed by the manager as we read (ENODEV): empty either way.
            if e.errno not in (errno.ENOENT, errno.ENODEV):
                raise
            return set()

    # ---- life cycle ----

    def start(self) -> None:
        pid1_before = _pid1_cgroups()
        (self.runtime_dir / "runsd" / "system").mkdir(parents=True)
        self.runtime_dir.chmod(0o700)
        for h in MANAGER_HIERARCHIES:
            (CGROUP_ROOT / h / self.name).mkdir()
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(["sh", "-c", _START, "sh", self.name, str(self.runtime_dir)],
                                         env=self.env, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                         start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT
        private = self.runtime_dir / "systemd" / "private"
        bus = self.runtime_dir / "bus"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"exited with {self.proc.returncode}: {self.log.read_text()[-2000:]}")
            if private.exists() and bus.exists() and self.systemctl("show", "-p", "Version", check=False).returncode == 0:
                break
            time.sleep(0.1)
        else:
            raise RuntimeError(f"no answer within {START_TIMEOUT:g} s: {self.log.read_text()[-2000:]}")
        if _pid1_cgroups() != pid1_before:
            raise RuntimeError("PID 1 changed cgroups while the manager started: see ../shared/TESTBED.md")

    def stop(self) -> None:
        for unit in self.units:
            self.stop_unit(unit)
        if self.proc is not None and self.proc.poll() is None:
            self.systemctl("exit", check=False)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.terminate()  # our own child, by PID (sh exec'd into systemd)
                try:
                    self.proc.wait(5)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
        # Whatever is still in our cgroups was started by our manager (its units, its dbus-daemon): the sandbox's
        # cleanup kills it by PID and removes the directories deepest first, in every hierarchy the manager wrote to.
        dirs = [Path(d) for top in CGROUP_ROOT.glob(f"*/{self.name}") for d, _, _ in os.walk(top)]
        CgroupSandbox(name=self.name, dirs=dirs).cleanup()
        shutil.rmtree(self.runtime_dir, ignore_errors=True)


@contextlib.contextmanager
def user_manager() -> Iterator[UserManager]:
    """Start a manager for the session; skip (fail in CI) when this host cannot run one."""
    problems = _missing()
    if problems:
        _cannot_start(", ".join(problems))
    name = f"pyoomd-sd-{os.getpid()}"
    if any(CGROUP_ROOT.glob(f"*/{name}")):
        _cannot_start(f"cgroup {name} exists already (a crashed run with this PID?); remove it first")
    manager = UserManager(name=name, runtime_dir=Path(tempfile.mkdtemp(prefix=f"{name}-")))
    try:
        try:
            manager.start()
        except (OSError, RuntimeError, subprocess.SubprocessError) as e:
            _cannot_start(str(e))
        yield manager
    finally:
        manager.stop()
