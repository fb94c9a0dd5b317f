"""Soak: run pyoomd for a while on this host's real cgroups while everything around it keeps changing.

Run as root on a hybrid host (real `/sys/fs/cgroup/{memory,unified}` and PSI), from the repository root or a copy:

    .venv/bin/python benchmarks/soak.py --duration 600

While the daemon runs (`python -m supervisor run`, with PYTHONPATH at this repository as tests/daemon.py does):

- cgroups are created and removed all the time under the soak's parent `pyoomd-soak-<pid>` (idle sleepers in
  some, nothing in others, some nested),
- page-cache thrashers start now and then, each in its own child cgroup `thrash-N` under a 64 MiB v1 memory limit,
- the policy is reloaded every few seconds (SIGHUP; equivalent texts in turn, see SAME_VALUES, now and then a
  broken one that must be refused),
- the workers are killed at random with SIGKILL (fewer per minute than would make the supervisor give up).

At the end it prints plain tables: thrashers started, killed by pyoomd, missed (alive after --deadline), wrong kills
(a sleeper that died, an action record on anything but a thrasher's cgroup), worker restarts, reloads, and each
pyoomd process's RSS, PSS and open descriptors at the start and the end. Exit status 0 only when nothing was
killed wrongly, nothing was missed and the daemon stayed up; 1 otherwise; 2 when this host cannot run it.

Everything it starts is its own (its children, the daemon and the daemon's workers) and is ended by PID; it makes
cgroups only under its own prefix and removes them deepest first, also on Ctrl-C, SIGTERM or an error.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent
CGROUP_ROOT = Path("/sys/fs/cgroup")
HIERARCHIES = ("memory", "unified")  # usage and the limit in v1 memory, PSI in the cgroup2 twin
WORKERS = ("collector", "detector", "actuator")
THRASHER_LIMIT = 64 << 20

# The page-cache thrasher of tests/realhost.py: a 256 MiB file written and then read over and over inside a 64 MiB
# limit. Nothing is ever "out of memory", so the kernel's OOM killer leaves it alone: only pyoomd ends it.
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
SLEEPER = ["sleep", "infinity"]

# The supervisor gives a worker up (FATAL, the daemon exits 1) after 5 crashes within a minute; the soak stays
# well below, so that a daemon that stops is a finding and not the soak's doing.
WORKER_KILLS_PER_MINUTE = 2
RELOAD_TIMEOUT = 30.0  # supervisor/reloadstatus.py's DEFAULT_TIMEOUT: a reload unanswered this long is lost
STOP_TIMEOUT = 15.0
SAMPLE_EVERY = 30.0  # seconds between resource samples (start and end are always taken)


class Interrupted(Exception):
    """SIGTERM (or SIGHUP) to the soak: stop, clean up, report what there is."""


# ---- options -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    duration: float
    seed: int
    interval: float
    threshold: float
    pressure_duration: float
    post_action_delay: float
    thrasher_every: float
    worker_kill_every: float
    reload_every: float
    broken_share: float
    churn_every: float
    max_churn: int
    residents: int
    deadline: float
    keep_logs: Path | None


def parse_args(argv: list[str] | None = None) -> Options:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=600, help="seconds of churn (default 600)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: random, printed)")
    p.add_argument("--interval", type=float, default=0.5, help="the policy's snapshot interval, s")
    p.add_argument("--threshold", type=float, default=8, help="pressure_above threshold, %% full avg10")
    p.add_argument("--pressure-duration", type=float, default=1, help="pressure_above duration, s")
    p.add_argument("--post-action-delay", type=float, default=3, help="the ruleset's rest after a kill, s")
    p.add_argument("--thrasher-every", type=float, default=20, help="mean seconds between thrasher starts")
    p.add_argument("--worker-kill-every", type=float, default=15, help="mean seconds between worker SIGKILLs")
    p.add_argument("--reload-every", type=float, default=4, help="mean seconds between reloads")
    p.add_argument("--broken-share", type=float, default=0.25, help="share of reloads with a broken policy")
    p.add_argument("--churn-every", type=float, default=0.5, help="seconds between cgroup creations/removals")
    p.add_argument("--max-churn", type=int, default=12, help="at most this many churned cgroups at once")
    p.add_argument("--residents", type=int, default=2, help="sleepers that live through the whole soak")
    p.add_argument("--deadline", type=float, default=60, help="a thrasher alive this long after its start is missed")
    p.add_argument("--keep-logs", type=Path, default=None,
                   help="copy the daemon's log, actions.jsonl and the soak's event log into this directory")
    a = p.parse_args(argv)
    return Options(
        duration=a.duration, seed=a.seed if a.seed is not None else random.randrange(1 << 32),
        interval=a.interval, threshold=a.threshold, pressure_duration=a.pressure_duration,
        post_action_delay=a.post_action_delay, thrasher_every=a.thrasher_every,
        worker_kill_every=a.worker_kill_every, reload_every=a.reload_every, broken_share=a.broken_share,
        churn_every=a.churn_every, max_churn=a.max_churn, residents=a.residents, deadline=a.deadline,
        keep_logs=a.keep_logs,
    )


def host_problems() -> list[str]:
    problems = []
    if os.geteuid() != 0:
        problems.append("not root")
    problems += [f"no {CGROUP_ROOT / h}" for h in HIERARCHIES if not (CGROUP_ROOT / h / "cgroup.procs").exists()]
    if not Path("/proc/pressure/memory").exists():
        problems.append("no PSI")
    return problems


# ---- the policy --------------------------------------------------------------------------------------------------


# Three spellings of one policy. 0 and 1 differ only in YAML style and comments: the daemon must see "no change"
# and keep the ruleset's state (sliding windows, the post-kill rest). 2 writes its durations with units ("1s" for
# 1): the same policy to a reader, which the daemon may or may not recognise as such (the report counts which).
SAME_VALUES = {0: 0, 1: 0, 2: 2}  # variant -> the variant whose values it writes


def good_policy(parent: str, opts: Options, variant: int) -> str:
    """The soak's policy. The detector watches only the thrashers' cgroups: the parent's own pressure (which sums
    its children) stays high for many seconds after a kill, as avg10 decays, and would then make the action pick
    the largest of what is left, a sleeper. The action ranks every child of the parent, sleepers included, so a
    wrong pick shows."""
    if variant == 0:
        return f"""\
interval: {opts.interval}
rulesets:
  - name: soak thrash
    post_action_delay: {opts.post_action_delay}
    detectors:
      - name: a thrasher under memory pressure
        all:
          - pressure_above: {{cgroup: "{parent}/thrash-*", resource: memory, threshold: {opts.threshold}, \
duration: {opts.pressure_duration}}}
    actions:
      - kill_by_memory_size_or_growth: {{cgroup: "{parent}/*"}}
"""
    unit = "s" if variant == 2 else ""
    interval = f"{opts.interval * 1000:.0f}ms" if variant == 2 else opts.interval
    return f"""\
# variant {variant}: the same policy as variant 0, in block style{" with units" if unit else ""}
interval: {interval}
dry_run: false
rulesets:
  - name: soak thrash
    post_action_delay: {opts.post_action_delay}{unit}
    detectors:
      - name: a thrasher under memory pressure
        all:
          - pressure_above:
              cgroup: "{parent}/thrash-*"
              resource: memory
              threshold: {opts.threshold}
              duration: {opts.pressure_duration}{unit}
    actions:
      - kill_by_memory_size_or_growth:
          cgroup: "{parent}/*"
"""


def broken_policy(parent: str, opts: Options, kind: int) -> str:
    """A policy the daemon must refuse (and keep the running one): a misspelt key, an unknown plugin, a bad value."""
    text = good_policy(parent, opts, kind % 3)
    return [
        lambda: text.replace("threshold:", "thresold:"),
        lambda: text.replace("pressure_above:", "pressure_abov:"),
        lambda: text.replace("resource: memory", "resource: memroy"),
    ][kind % 3]()


def write_atomically(path: Path, text: str) -> None:
    # The supervisor may read the file at any moment (a SIGHUP still in flight): never let it see half a file.
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


# ---- cgroups and workloads ---------------------------------------------------------------------------------------


def _move_into(dirs: list[Path]) -> None:
    for d in dirs:
        (d / "cgroup.procs").write_text(str(os.getpid()))


@dataclass
class Workload:
    kind: str  # "thrasher" or "sleeper"
    rel: str  # its cgroup, relative to the soak's parent
    proc: subprocess.Popen
    started: float  # soak clock
    data: Path | None = None  # a thrasher's file
    ended: float | None = None
    status: int | None = None
    stopped_by_soak: bool = False
    over_at: float | None = None  # a thrasher's: when its full avg10 first passed the policy's threshold

    @property
    def pid(self) -> int:
        return self.proc.pid

    def poll(self, now: float) -> bool:
        """True once it has ended (reaped here: it is our child)."""
        if self.ended is None and self.proc.poll() is not None:
            self.ended, self.status = now, self.proc.returncode
        return self.ended is not None

    def stop(self, now: float) -> None:
        """End it ourselves, by PID (our own unreaped child, so the PID cannot be another process's)."""
        if self.poll(now):
            return
        self.stopped_by_soak = True
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self.ended, self.status = now, self.proc.returncode


@dataclass
class Sandbox:
    """The soak's parent cgroup in the memory and unified hierarchies, and everything made under it."""

    name: str
    made: set[str] = field(default_factory=set)  # relative paths made under the parent ("" is the parent)
    doomed: list[str] = field(default_factory=list)  # relative paths to remove as soon as they are empty

    @property
    def path(self) -> str:
        return "/" + self.name

    def dirs(self, rel: str) -> list[Path]:
        return [CGROUP_ROOT / h / self.name / rel if rel else CGROUP_ROOT / h / self.name for h in HIERARCHIES]

    def mkdir(self, rel: str = "", memory_limit: int | None = None) -> None:
        for d in self.dirs(rel):
            d.mkdir(exist_ok=True)
        self.made.add(rel)
        if memory_limit is not None:
            (CGROUP_ROOT / "memory" / self.name / rel / "memory.limit_in_bytes").write_text(str(memory_limit))

    def spawn(self, rel: str, argv: list[str]) -> subprocess.Popen:
        """Start argv inside `rel`, moved there before exec so that everything it does is charged there. Its own
        process group keeps a terminal's ^C away from it: the soak ends it itself, and can tell it did."""
        dirs = self.dirs(rel)
        return subprocess.Popen(argv, preexec_fn=lambda: _move_into(dirs), process_group=0,
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def remove_later(self, rel: str) -> None:
        """Remove `rel` and what is under it, deepest first, as soon as rmdir lets us (see sweep)."""
        inside = [r for r in self.made if not rel or r == rel or r.startswith(rel + "/")]
        self.doomed += sorted(inside, key=lambda r: len(r.split("/")) if r else 0, reverse=True)

    def sweep(self) -> None:
        """One non-blocking try at each pending removal: a killed process leaves its cgroup a moment after it is
        reaped, and the soak's loop must not stall on that (a dead thrasher's cgroup must go at once)."""
        left = []
        for rel in self.doomed:
            if rel in self.made and not self._rmdir(rel):
                left.append(rel)
        self.doomed = left

    def _rmdir(self, rel: str) -> bool:
        done = True
        for d in self.dirs(rel):
            try:
                d.rmdir()
            except FileNotFoundError:
                pass
            except OSError:
                done = False
        if done:
            self.made.discard(rel)
        return done

    def member_pids(self) -> set[int]:
        """Every process in the soak's cgroups: all of them the soak's own (only its children are put there)."""
        pids: set[int] = set()
        for root in self.dirs(""):
            for procs in root.rglob("cgroup.procs") if root.is_dir() else []:
                with contextlib.suppress(OSError):
                    pids.update(int(x) for x in procs.read_text().split())
        return pids

    def remove_all(self) -> list[str]:
        """Remove every cgroup made, deepest first, retrying for a while; returns what could not be removed."""
        for _ in range(50):
            self.doomed = []
            self.remove_later("")
            self.sweep()
            if not self.made:
                return []
            time.sleep(0.1)
        return sorted(self.made)


# ---- the daemon --------------------------------------------------------------------------------------------------


@dataclass
class WorkerEvent:
    t: float
    name: str
    pid: int
    old: str
    new: str
    why: str


WORKER_LINE = re.compile(r"worker (\w+) \(pid (\d+)\): (\w+) -> (\w+)(?:: (.*))?$")


class Daemon:
    """`pyoomd run` in the foreground with its own runtime and state directories, its log read as it grows."""

    def __init__(self, tmp: Path, config: Path) -> None:
        self.config = config
        self.runtime_dir = tmp / "run"
        self.state_dir = tmp / "state"
        self.log_path = tmp / "pyoomd.log"
        self.proc: subprocess.Popen | None = None
        self._log_offset = 0
        self._partial = ""
        self.lines: list[tuple[float, str]] = []  # (soak clock when read, line)
        self.workers: dict[str, tuple[int, str]] = {}  # name -> (pid, state), from the log
        self.worker_events: list[WorkerEvent] = []

    def start(self) -> None:
        argv = [sys.executable, "-m", "supervisor", "run", "--config", str(self.config),
                "--runtime-dir", str(self.runtime_dir), "--state-dir", str(self.state_dir),
                "--bus", "none", "--systemd-bus", "none"]
        env = dict(os.environ, PYTHONPATH=str(REPO))
        with open(self.log_path, "wb") as log:
            # Its own process group: a terminal's ^C reaches only the soak, which then stops the daemon in order.
            self.proc = subprocess.Popen(argv, cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                         process_group=0)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def read_log(self, now: float) -> list[str]:
        """The lines written since the last call; worker state changes are parsed on the way."""
        with open(self.log_path, "rb") as f:
            f.seek(self._log_offset)
            chunk = f.read()
        self._log_offset += len(chunk)
        text = self._partial + chunk.decode(errors="replace")
        *lines, self._partial = text.split("\n")
        for line in lines:
            self.lines.append((now, line))
            m = WORKER_LINE.search(line)
            if m:
                ev = WorkerEvent(now, m[1], int(m[2]), m[3], m[4], m[5] or "")
                self.worker_events.append(ev)
                self.workers[ev.name] = (ev.pid, ev.new)
        return lines

    def worker_processes(self) -> dict[str, psutil.Process]:
        """The supervisor's children by worker name (cmdline `-m workers.NAME`)."""
        out = {}
        with contextlib.suppress(psutil.Error):
            for child in psutil.Process(self.pid).children():
                with contextlib.suppress(psutil.Error):
                    # A forked worker's title is one string (setproctitle); an exec'd one's, separate arguments.
                    cmd = " ".join(child.cmdline()).split()
                    if "-m" in cmd and cmd.index("-m") + 1 < len(cmd):
                        module = cmd[cmd.index("-m") + 1]
                        if module in ("workers.collector", "workers.detector", "workers.actuator"):
                            out[module.removeprefix("workers.")] = child
        return out

    def all_running(self) -> bool:
        return all(self.workers.get(w, (0, ""))[1] == "RUNNING" for w in WORKERS)

    def reload_status(self) -> dict | None:
        try:
            return json.loads((self.state_dir / "reload.json").read_text())
        except (OSError, ValueError):
            return None

    def actions(self) -> list[dict]:
        """Every record in actions.jsonl and its rotated files, oldest first."""
        paths = sorted(self.state_dir.glob("actions.jsonl.*"), key=lambda p: -int(p.suffix[1:]))
        records = []
        for path in [*paths, self.state_dir / "actions.jsonl"]:
            with contextlib.suppress(FileNotFoundError):
                for line in path.read_text().splitlines():
                    with contextlib.suppress(ValueError):
                        records.append(json.loads(line))
        return records

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL after STOP_TIMEOUT; any worker left behind is killed by PID (they are ours)."""
        if self.proc is None:
            return None
        workers = list(self.worker_processes().values())
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for w in workers:
            with contextlib.suppress(psutil.Error):
                w.wait(timeout=5)  # PR_SET_PDEATHSIG ends them with the supervisor
            with contextlib.suppress(psutil.Error):
                if w.is_running():  # checks the start time too: never a recycled PID
                    w.kill()
        return self.proc.returncode


# ---- resource samples --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProcSample:
    role: str
    pid: int
    rss: int
    pss: int | None
    fds: int
    cgroup_fds: int  # open files under /sys/fs/cgroup
    stale_fds: int  # of those, files of cgroups that no longer exist: a leak if they pile up


def pss_of(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def cgroup_fds(pid: int) -> tuple[int, int]:
    """How many of the process's descriptors are cgroup files, and how many of those name a removed cgroup (kernfs
    gives no "(deleted)" mark, so the path is looked up; the soak never reuses a cgroup name)."""
    total = stale = 0
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith(f"{CGROUP_ROOT}/"):
                    total += 1
                    stale += not os.path.exists(target)
    return total, stale


def sample(daemon: Daemon) -> dict[str, ProcSample]:
    out: dict[str, ProcSample] = {}
    try:
        procs = {"supervisor": psutil.Process(daemon.pid), **daemon.worker_processes()}
    except psutil.Error:
        return out
    for role, p in procs.items():
        with contextlib.suppress(psutil.Error), p.oneshot():
            out[role] = ProcSample(role, p.pid, p.memory_info().rss, pss_of(p.pid), p.num_fds(), *cgroup_fds(p.pid))
    return out


# ---- the soak ----------------------------------------------------------------------------------------------------


@dataclass
class ReloadPending:
    broken: bool
    sequence_before: int
    sent: float
    same_values: bool  # a good policy with the values of the one in force: the daemon should say "no change"


@dataclass
class Counters:
    reloads_sent: int = 0
    reloads_accepted: int = 0  # good policy, loaded
    reloads_refused: int = 0  # broken policy, refused
    reload_surprises: list[str] = field(default_factory=list)  # good refused, broken loaded, no answer
    loaded: list[tuple[int, bool]] = field(default_factory=list)  # (generation, same values as before)
    worker_kills: dict[str, list[tuple[float, int]]] = field(default_factory=lambda: {w: [] for w in WORKERS})
    churn_made: int = 0
    churn_removed: int = 0
    wrong_sleepers: list[tuple[int, str]] = field(default_factory=list)  # (pid, what happened)


class Soak:
    def __init__(self, opts: Options) -> None:
        self.opts = opts
        self.rng = random.Random(opts.seed)
        self.t0 = time.monotonic()
        self.wall0 = time.time()
        self.tmp = Path(tempfile.mkdtemp(prefix=f"pyoomd-soak-{os.getpid()}-"))
        self.tmp.chmod(0o755)  # the unprivileged workers reach their sockets in run/ through it
        self.sandbox = Sandbox(f"pyoomd-soak-{os.getpid()}")
        self.config = self.tmp / "policy.yaml"
        self.daemon = Daemon(self.tmp, self.config)
        self.thrashers: list[Workload] = []
        self.residents: list[Workload] = []
        self.churn: dict[str, Workload | None] = {}  # churned top-level cgroup -> its sleeper, if any
        self.retired_sleepers: list[Workload] = []  # churned sleepers the soak has ended itself
        self.counts = Counters()
        self.samples: list[tuple[float, dict[str, ProcSample]]] = []
        self.events: list[tuple[float, str]] = []
        self.reload_pending: ReloadPending | None = None
        self.good_variant = 0
        self.broken_kind = 0
        self.serial = 0
        self.daemon_exit: int | None = None
        self.daemon_died_at: float | None = None

    def now(self) -> float:
        return time.monotonic() - self.t0

    def event(self, text: str) -> None:
        self.events.append((self.now(), text))

    def next_name(self, prefix: str) -> str:
        self.serial += 1
        return f"{prefix}-{self.serial}"

    def jitter(self, mean: float) -> float:
        return self.rng.uniform(0.5, 1.5) * mean

    # ---- set-up -------------------------------------------------------------------------------------------------

    def start(self) -> None:
        self.sandbox.mkdir()
        for i in range(self.opts.residents):
            rel = f"resident-{i}"
            self.sandbox.mkdir(rel)
            self.residents.append(Workload("sleeper", rel, self.sandbox.spawn(rel, SLEEPER), self.now()))
        write_atomically(self.config, good_policy(self.sandbox.path, self.opts, 0))
        self.daemon.start()
        self.event(f"daemon started, pid {self.daemon.pid}")
        deadline = time.monotonic() + 60
        ready = False
        while not (ready and self.daemon.all_running()):
            ready = ready or any("first snapshot evaluated" in line for line in self.daemon.read_log(self.now()))
            if not self.daemon.alive() or time.monotonic() > deadline:
                raise RuntimeError("pyoomd did not come up:\n" + "\n".join(line for _, line in self.daemon.lines))
            time.sleep(0.2)
        time.sleep(2)  # let the workers finish starting up before the baseline sample
        self.samples.append((self.now(), sample(self.daemon)))
        self.event("daemon ready; start sample taken")

    # ---- the loop -----------------------------------------------------------------------------------------------

    def run(self) -> None:
        """Churn for --duration seconds, then wait for the last thrashers to be killed or to pass their deadline."""
        end = self.now() + self.opts.duration
        due = {
            "thrasher": self.now() + self.jitter(self.opts.thrasher_every) / 2,
            "worker": self.now() + self.jitter(self.opts.worker_kill_every),
            "reload": self.now() + self.jitter(self.opts.reload_every),
            "churn": self.now(),
            "sample": self.now() + SAMPLE_EVERY,
        }
        while self.now() < end:
            self.tick()
            t = self.now()
            if t >= due["thrasher"]:
                self.start_thrashers()
                due["thrasher"] = t + self.jitter(self.opts.thrasher_every)
            if t >= due["worker"]:
                self.kill_a_worker()
                due["worker"] = t + self.jitter(self.opts.worker_kill_every)
            if t >= due["reload"] and self.reload_pending is None:
                self.send_reload()
                due["reload"] = t + self.jitter(self.opts.reload_every)
            if t >= due["churn"]:
                self.churn_once()
                due["churn"] = t + self.opts.churn_every
            if t >= due["sample"] and self.daemon.alive():
                self.samples.append((t, sample(self.daemon)))
                due["sample"] = t + SAMPLE_EVERY
            time.sleep(0.1)
        self.event("churn over; waiting for the last thrashers and reload")
        while any(th.ended is None for th in self.thrashers) or self.reload_pending is not None:
            self.tick()
            time.sleep(0.1)
        # Give the last worker restarts time to finish and the last records time to reach actions.jsonl.
        settle = time.monotonic() + 30
        while self.daemon.alive() and not self.daemon.all_running() and time.monotonic() < settle:
            self.tick()
            time.sleep(0.2)
        for _ in range(20):
            self.tick()
            time.sleep(0.1)
        self.end_sample()

    def end_sample(self) -> None:
        if self.daemon.alive() and self.samples and self.now() - self.samples[-1][0] > 1:
            self.samples.append((self.now(), sample(self.daemon)))
            self.event("end sample taken")

    def tick(self) -> None:
        """What must happen promptly: reap ended workloads (a dead thrasher's cgroup goes at once, see
        good_policy), notice a sleeper that died, give up on a missed thrasher, follow the log and reloads."""
        t = self.now()
        self.daemon.read_log(t)
        if self.daemon_died_at is None and not self.daemon.alive():
            self.daemon_died_at, self.daemon_exit = t, self.daemon.proc.returncode if self.daemon.proc else None
            self.event(f"DAEMON EXITED with status {self.daemon_exit}")
        for th in self.thrashers:
            if th.ended is not None:
                continue
            if th.poll(t):
                self.event(f"{th.rel} (pid {th.pid}) ended with status {th.status} after {th.ended - th.started:.1f}s")
                self.retire(th)
            elif th.over_at is None and self.full_avg10(th.rel) > self.opts.threshold:
                th.over_at = t
                self.event(f"{th.rel}: full avg10 above {self.opts.threshold} after {t - th.started:.1f}s")
            elif t - th.started > self.opts.deadline:
                th.stop(t)
                self.event(f"{th.rel} (pid {th.pid}) MISSED: still alive after {self.opts.deadline:.0f}s; "
                           "killed by the soak")
                self.retire(th)
        for sl in [*self.residents, *(s for s in self.churn.values() if s is not None)]:
            self.check_sleeper(sl, t)
        self.follow_reload(t)
        self.sandbox.sweep()

    def full_avg10(self, rel: str) -> float:
        """What pressure_above sees: the cgroup's 10 s 'full' memory pressure, read here too so that the report can
        tell pyoomd's reaction time from the kernel's averaging."""
        try:
            text = (CGROUP_ROOT / "unified" / self.sandbox.name / rel / "memory.pressure").read_text()
            full = next(line for line in text.splitlines() if line.startswith("full"))
            return float(full.split()[1].removeprefix("avg10="))
        except (OSError, StopIteration, ValueError, IndexError):
            return 0.0

    def retire(self, th: Workload) -> None:
        self.sandbox.remove_later(th.rel)
        if th.data is not None:
            with contextlib.suppress(FileNotFoundError):
                th.data.unlink()

    def check_sleeper(self, sl: Workload, t: float) -> None:
        if sl.ended is None and sl.poll(t):
            text = f"sleeper {self.sandbox.path}/{sl.rel} (pid {sl.pid}) died with status {sl.status} at {t:.1f}s"
            self.counts.wrong_sleepers.append((sl.pid, text))
            self.event("WRONG KILL: " + text)

    # ---- the disturbances ---------------------------------------------------------------------------------------

    def start_thrashers(self) -> None:
        # Now and then two at once: the action must then pick among two thrashers, and a sleeper never.
        for _ in range(2 if self.rng.random() < 0.25 else 1):
            rel = self.next_name("thrash")
            self.sandbox.mkdir(rel, memory_limit=THRASHER_LIMIT)
            data = self.tmp / f"{rel}.dat"
            proc = self.sandbox.spawn(rel, [sys.executable, "-c", THRASHER, str(data)])
            self.thrashers.append(Workload("thrasher", rel, proc, self.now(), data=data))
            self.event(f"{rel} started, pid {proc.pid}")

    def kill_a_worker(self) -> None:
        t = self.now()
        procs = self.daemon.worker_processes()
        eligible = []
        for name in WORKERS:
            recent = [k for k, _ in self.counts.worker_kills[name] if t - k < 60]
            pid, state = self.daemon.workers.get(name, (0, ""))
            # Only a worker the supervisor says is RUNNING, under the per-minute budget, and the very process
            # the log names (a worker killed while STARTING would test nothing more).
            if len(recent) < WORKER_KILLS_PER_MINUTE and state == "RUNNING" and name in procs \
                    and procs[name].pid == pid:
                eligible.append(name)
        if not eligible:
            return
        name = self.rng.choice(eligible)
        with contextlib.suppress(psutil.Error):
            procs[name].send_signal(signal.SIGKILL)  # psutil checks the start time: never a recycled PID
            self.counts.worker_kills[name].append((t, procs[name].pid))
            self.event(f"SIGKILL to worker {name} (pid {procs[name].pid})")

    def send_reload(self) -> None:
        if not self.daemon.alive():
            return
        broken = self.rng.random() < self.opts.broken_share
        in_force = self.good_variant
        if broken:
            text = broken_policy(self.sandbox.path, self.opts, self.broken_kind)
            self.broken_kind += 1
        else:
            # Mostly 0 and 1 in turn (the same values), now and then 2 (the same policy, other spellings).
            self.good_variant = 2 if self.rng.random() < 0.2 else (1 if self.good_variant == 0 else 0)
            text = good_policy(self.sandbox.path, self.opts, self.good_variant)
        status = self.daemon.reload_status()
        before = status["sequence"] if status else 0
        write_atomically(self.config, text)
        self.daemon.proc.send_signal(signal.SIGHUP)  # our own child
        same = SAME_VALUES[in_force] == SAME_VALUES[self.good_variant]
        self.reload_pending = ReloadPending(broken, before, self.now(), same)
        self.counts.reloads_sent += 1
        self.event(f"SIGHUP with a {'broken' if broken else 'good'} policy (reload sequence was {before})")

    def follow_reload(self, t: float) -> None:
        pending = self.reload_pending
        if pending is None:
            return
        status = self.daemon.reload_status()
        if status is not None and status["sequence"] > pending.sequence_before:
            ok = bool(status["ok"])
            if pending.broken and not ok:
                self.counts.reloads_refused += 1
            elif not pending.broken and ok:
                self.counts.reloads_accepted += 1
                self.counts.loaded.append((status["generation"], pending.same_values))
            else:
                what = "broken policy LOADED" if ok else f"good policy REFUSED: {status['errors']}"
                self.counts.reload_surprises.append(f"{t:.1f}s: {what}")
                self.event("RELOAD SURPRISE: " + what)
            self.event(f"reload sequence {status['sequence']}: {'loaded' if ok else 'refused'}, "
                       f"generation {status['generation']}")
        elif t - pending.sent > RELOAD_TIMEOUT or not self.daemon.alive():
            self.counts.reload_surprises.append(f"{pending.sent:.1f}s: no answer to SIGHUP in {RELOAD_TIMEOUT:.0f}s")
            self.event("RELOAD SURPRISE: no answer")
        else:
            return
        self.reload_pending = None
        if pending.broken:
            # Leave a good file behind at once: whatever reads it next must find the policy in force.
            write_atomically(self.config, good_policy(self.sandbox.path, self.opts, self.good_variant))

    def churn_once(self) -> None:
        t = self.now()
        if self.churn and (len(self.churn) >= self.opts.max_churn or self.rng.random() < 0.45):
            rel = self.rng.choice(sorted(self.churn))
            sleeper = self.churn.pop(rel)
            if sleeper is not None:
                self.check_sleeper(sleeper, t)  # died before we ended it: pyoomd's doing
                sleeper.stop(t)
                self.retired_sleepers.append(sleeper)
            self.sandbox.remove_later(rel)
            self.counts.churn_removed += 1
            return
        kind = self.rng.choice(("idle", "empty", "nested", "nested-empty"))
        rel = self.next_name(kind)
        self.sandbox.mkdir(rel)
        leaf = rel
        if kind.startswith("nested"):
            leaf = f"{rel}/leaf"
            self.sandbox.mkdir(leaf)
        sleeper = None
        if kind in ("idle", "nested"):
            sleeper = Workload("sleeper", leaf, self.sandbox.spawn(leaf, SLEEPER), t)
        self.churn[rel] = sleeper
        self.counts.churn_made += 1

    # ---- the end ------------------------------------------------------------------------------------------------

    def stop_daemon(self) -> None:
        if self.daemon.proc is None:
            return
        was_alive = self.daemon.alive()
        status = self.daemon.stop()
        self.daemon.read_log(self.now())
        if was_alive:
            self.daemon_exit = status
            self.event(f"daemon stopped by the soak, exit status {status}")

    def final_sleeper_check(self) -> None:
        t = self.now()
        for sl in [*self.residents, *(s for s in self.churn.values() if s is not None)]:
            self.check_sleeper(sl, t)

    def cleanup(self) -> list[str]:
        """Every process the soak started, by PID; then its cgroups, deepest first; then its files. Returns what
        could not be cleaned up."""
        problems = []
        with contextlib.suppress(Exception):
            self.stop_daemon()
        t = self.now()
        for w in [*self.thrashers, *self.residents, *(s for s in self.churn.values() if s is not None)]:
            with contextlib.suppress(Exception):
                w.stop(t)
        # Anything else in our cgroups is a descendant of our own children: ours to end.
        for _ in range(3):
            left = self.sandbox.member_pids()
            if not left:
                break
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.2)
        problems += [f"cgroup not removed: {self.sandbox.name}/{rel}" for rel in self.sandbox.remove_all()]
        if self.opts.keep_logs is not None:
            with contextlib.suppress(OSError):
                self.keep_logs(self.opts.keep_logs)
        shutil.rmtree(self.tmp, ignore_errors=True)
        return problems

    def keep_logs(self, where: Path) -> None:
        where.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            shutil.copy(self.daemon.log_path, where / "pyoomd.log")
        for p in self.daemon.state_dir.glob("actions.jsonl*"):
            shutil.copy(p, where / p.name)
        (where / "soak-events.log").write_text("".join(f"{t:8.1f}s  {text}\n" for t, text in self.events))
        # The daemon's log has no clock; this copy has the soak's (when each line was read, within 0.1 s).
        (where / "pyoomd.timed.log").write_text("".join(f"{t:8.1f}s  {line}\n" for t, line in self.daemon.lines))
        (where / "policy.yaml").write_text(good_policy(self.sandbox.path, self.opts, 0))


# ---- the report --------------------------------------------------------------------------------------------------


def fmt(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.1f}"
    return str(value)


def table(title: str, headers: list[str], rows: list[list[object]]) -> None:
    cells = [headers, *[[fmt(c) for c in row] for row in rows]]
    numeric = [all(isinstance(row[i], int | float) or row[i] is None for row in rows) for i in range(len(headers))]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(r: list[str]) -> str:
        return "  ".join(c.rjust(w) if num else c.ljust(w) for c, w, num in zip(r, widths, numeric, strict=True))

    print(f"\n{title}")
    print(line(headers).rstrip())
    print("  ".join("-" * w for w in widths))
    for r in cells[1:]:
        print(line(r).rstrip())


def mib(n: int | None) -> float | None:
    return None if n is None else n / (1 << 20)


@dataclass
class Verdict:
    wrong: int
    missed: int
    daemon_ok: bool

    @property
    def ok(self) -> bool:
        return self.wrong == 0 and self.missed == 0 and self.daemon_ok


def report(soak: Soak, interrupted: bool) -> Verdict:
    opts, sb = soak.opts, soak.sandbox
    records = soak.daemon.actions()
    thrasher_paths = {f"{sb.path}/{th.rel}": th for th in soak.thrashers}
    sleeper_pids = {s.pid for s in [*soak.residents, *soak.retired_sleepers,
                                    *(s for s in soak.churn.values() if s is not None)]}
    killed_records = {r["target"]: r for r in records if r.get("result") == "killed" and r.get("target")}

    # Thrashers: each must end by pyoomd's SIGKILL with a "killed" record on its cgroup, before the deadline.
    by_pyoomd, otherwise, missed, alive, latencies, reactions = [], [], [], [], [], []
    for path, th in thrasher_paths.items():
        if th.ended is None:
            alive.append(th)
        elif th.stopped_by_soak:
            missed.append(th)
        elif th.status == -signal.SIGKILL and path in killed_records and th.pid in killed_records[path]["pids"]:
            by_pyoomd.append(th)
            latencies.append(th.ended - th.started)
            if th.over_at is not None:
                reactions.append(th.ended - th.over_at)
        else:
            otherwise.append(th)
    outcome_counts: dict[str, int] = {}
    for r in records:
        if r.get("target") in thrasher_paths:
            outcome_counts[r["result"]] = outcome_counts.get(r["result"], 0) + 1

    # Wrong kills: a sleeper that died, or any record on anything but a thrasher's cgroup.
    wrong_records = [r for r in records if r.get("target") is not None and r["target"] not in thrasher_paths]
    sleeper_hits = [r for r in records if sleeper_pids.intersection(r.get("pids") or [])]
    untargeted = [r for r in records if r.get("target") is None]
    # One wrong kill is counted once: a dead sleeper, plus each bad record that names none of the dead sleepers.
    dead = {pid for pid, _ in soak.counts.wrong_sleepers}
    bad = {r["command_id"]: r for r in [*wrong_records, *sleeper_hits]}
    wrong = len(dead) + sum(not dead.intersection(r.get("pids") or []) for r in bad.values())

    print(f"\npyoomd soak: {soak.now():.0f}s (churn {opts.duration:.0f}s{', INTERRUPTED' if interrupted else ''}), "
          f"seed {opts.seed}, parent {sb.path}, policy: pressure_above {sb.path}/thrash-* full avg10 > "
          f"{opts.threshold} for {opts.pressure_duration}s -> kill_by_memory_size_or_growth {sb.path}/*, "
          f"post_action_delay {opts.post_action_delay}s, interval {opts.interval}s")

    lat, react = sorted(latencies), sorted(reactions)
    table("Thrashers", ["what", "count"], [
        ["started", len(soak.thrashers)],
        ["killed by pyoomd (expected)", len(soak.thrashers)],
        ["killed by pyoomd (done)", len(by_pyoomd)],
        [f"missed (alive after {opts.deadline:.0f}s)", len(missed)],
        ["ended some other way", len(otherwise)],
        ["still running (interrupted)", len(alive)],
        ["start-to-kill s, min", lat[0] if lat else None],
        ["start-to-kill s, median", statistics.median(lat) if lat else None],
        ["start-to-kill s, max", lat[-1] if lat else None],
        [f"avg10>{opts.threshold}-to-kill s, min", react[0] if react else None],
        [f"avg10>{opts.threshold}-to-kill s, median", statistics.median(react) if react else None],
        [f"avg10>{opts.threshold}-to-kill s, max", react[-1] if react else None],
    ])
    if outcome_counts:
        table("Action records on thrasher cgroups, by result", ["result", "records"],
              [[k, v] for k, v in sorted(outcome_counts.items())])

    churned_sleepers = len(soak.retired_sleepers) + sum(s is not None for s in soak.churn.values())
    table("Wrong kills", ["what", "count"], [
        ["sleepers that died (pyoomd's doing)", len(soak.counts.wrong_sleepers)],
        ["records on a non-thrasher cgroup", len(wrong_records)],
        ["records naming a sleeper's pid", len(sleeper_hits)],
        ["total wrong kills", wrong],
        ["(sleepers watched: resident / churned)", f"{len(soak.residents)} / {churned_sleepers}"],
        ["(records without a target, not kills)", len(untargeted)],
    ])

    table("Cgroup churn", ["what", "count"], [
        ["churned cgroups created", soak.counts.churn_made],
        ["churned cgroups removed", soak.counts.churn_removed],
        ["thrasher cgroups created and removed", len(soak.thrashers)],
    ])

    rows = []
    for name in WORKERS:
        evs = [e for e in soak.daemon.worker_events if e.name == name]
        ours = {pid for _, pid in soak.counts.worker_kills[name]}
        exits = [e for e in evs if e.new in ("BACKOFF", "FATAL")]
        by_us = [e for e in exits if e.pid in ours and "killed by SIGKILL" in e.why]
        rows.append([
            name, len(ours), len(by_us), len(exits) - len(by_us),
            sum(e.old == "BACKOFF" and e.new == "STARTING" for e in evs),
            sum(e.old == "STARTING" and e.new == "RUNNING" for e in evs) - 1,
            sum(e.new == "FATAL" for e in evs),
        ])
    table("Worker restarts (from the supervisor's log)",
          ["worker", "SIGKILLed by soak", "exits seen", "other exits", "restarted", "back RUNNING", "FATAL"], rows)
    hangs = [line for _, line in soak.daemon.lines if "silent for" in line]

    c = soak.counts
    # What the daemon said each good reload changed ("loaded as generation N: <changes>"), by generation.
    changes = {}
    for _, line in soak.daemon.lines:
        m = re.search(r"loaded as generation (\d+): (.*)$", line)
        if m:
            changes[int(m[1])] = m[2]
    same = [changes.get(g, "?") for g, s in c.loaded if s]
    respelt = [changes.get(g, "?") for g, s in c.loaded if not s]
    table("Reloads (SIGHUP; outcome from reload.json)", ["what", "count"], [
        ["sent", c.reloads_sent],
        ["good policy loaded", c.reloads_accepted],
        ["  same values, other style: daemon said 'no change'", f"{same.count('no change')} of {len(same)}"],
        ["  same policy, units spelt ('1s' for 1): 'no change'", f"{respelt.count('no change')} of {len(respelt)}"],
        ["broken policy refused", c.reloads_refused],
        ["surprises (good refused, broken loaded, no answer)", len(c.reload_surprises)],
        ["'loaded as generation' lines in the log", sum("loaded as generation" in ln for _, ln in soak.daemon.lines)],
        ["'reload failed' lines in the log", sum("reload failed" in ln for _, ln in soak.daemon.lines)],
    ])

    if soak.samples:
        first_t, first = soak.samples[0]
        last_t, last = soak.samples[-1]
        rows = []
        for when, s in (("start", first), ("end", last)):
            for role in ("supervisor", *WORKERS):
                p = s.get(role)
                rows.append([role, when, *([p.pid, mib(p.rss), mib(p.pss), p.fds, p.cgroup_fds, p.stale_fds]
                                           if p else [None] * 6)])
        table(f"pyoomd processes at start ({first_t:.0f}s) and end ({last_t:.0f}s); RSS and PSS in MiB; "
              "a restarted worker is a new pid",
              ["process", "when", "pid", "RSS", "PSS", "fds", "cgroup fds", "stale cgroup fds"], rows)
        rows = []
        for t, s in soak.samples:
            row: list[object] = [t]
            for role in ("supervisor", *WORKERS):
                p = s.get(role)
                row += [mib(p.rss), p.fds, p.stale_fds] if p else [None] * 3
            rows.append(row)
        table("pyoomd processes over time (RSS MiB, fds, stale cgroup fds)",
              ["t s", *[f"{r[:3]} {k}" for r in ("supervisor", *WORKERS) for k in ("RSS", "fds", "stale")]], rows)

    # The details of anything that went wrong, so a report can name it.
    problems = [*(text for _, text in c.wrong_sleepers), *c.reload_surprises]
    problems += [f"record on non-thrasher {r['target']}: {r['result']} pids={r['pids']} at "
                 f"{r['time'] - soak.wall0:.1f}s: {r.get('reason', '')}" for r in wrong_records]
    problems += [f"record naming a sleeper: {r['target']} {r['result']} pids={r['pids']}" for r in sleeper_hits]
    problems += [f"missed {th.rel} (pid {th.pid}), started at {th.started:.1f}s" for th in missed]
    problems += [f"{th.rel} (pid {th.pid}) ended with status {th.status} at {th.ended:.1f}s without a pyoomd kill"
                 for th in otherwise]
    problems += [f"worker hang: {line}" for line in hangs]
    if soak.daemon_died_at is not None:
        problems.append(f"the daemon exited on its own at {soak.daemon_died_at:.1f}s, status {soak.daemon_exit}")
    unusual = [line for _, line in soak.daemon.lines if re.search(r" (ERROR|CRITICAL) |Traceback", line)
               and "reload failed" not in line]
    problems += [f"log: {line}" for line in unusual[:20]]
    if problems:
        print("\nProblems")
        for p in problems:
            print(f"  {p}")
    daemon_ok = soak.daemon_died_at is None and soak.daemon_exit in (0, None)
    return Verdict(wrong, len(missed), daemon_ok)


# ---- main --------------------------------------------------------------------------------------------------------


def _interrupt(signum: int, _frame: object) -> None:
    raise Interrupted(signal.Signals(signum).name)


def _ignore_interruptions() -> None:
    # One interruption is enough: what follows (a last sample, the report, the clean-up) is bounded and must
    # finish, or processes and cgroups would be left behind. (`timeout -s INT` even sends its signal twice.)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    problems = host_problems()
    if problems:
        print("soak cannot run here: " + ", ".join(problems), file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGHUP, _interrupt)
    soak = Soak(opts)
    interrupted = False
    verdict: Verdict | None = None
    print(f"soak: parent {soak.sandbox.path}, {opts.duration:.0f}s of churn, seed {opts.seed}, files in {soak.tmp}",
          flush=True)
    try:
        try:
            soak.start()
            soak.run()
        except (KeyboardInterrupt, Interrupted) as e:
            _ignore_interruptions()
            interrupted = True
            print(f"\nsoak interrupted ({type(e).__name__} {e}); cleaning up", file=sys.stderr)
            soak.end_sample()
        _ignore_interruptions()
        # A kill decided in the last moment still counts: stop the daemon before the final look at the sleepers.
        soak.stop_daemon()
        soak.final_sleeper_check()
        verdict = report(soak, interrupted)
    finally:
        _ignore_interruptions()
        left = soak.cleanup()
        for p in left:
            print(f"CLEAN-UP: {p}", file=sys.stderr)
        if opts.keep_logs is not None:
            print(f"\nlogs kept in {opts.keep_logs}")
    if verdict is None or interrupted:
        print("\nverdict: INTERRUPTED" if interrupted else "\nverdict: FAILED TO RUN")
        return 1
    print(f"\nverdict: {'PASS' if verdict.ok else 'FAIL'} (wrong kills {verdict.wrong}, missed {verdict.missed}, "
          f"daemon {'up throughout' if verdict.daemon_ok else 'DIED'})")
    return 0 if verdict.ok else 1


if __name__ == "__main__":
    sys.exit(main())
