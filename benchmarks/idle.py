"""What an OOM daemon costs on an idle host: CPU and PSS of every process of pyoomd, oomd, earlyoom and nohang
while they watch N real, idle cgroups at a 1 s interval. Run as root from the repository:
`.venv/bin/python benchmarks/idle.py [--seconds 60] [--cgroups 100,1000]`, with `OOMD=/path/to/oomd` to include
Facebook's oomd (built outside this repository); earlyoom and nohang are taken from PATH when installed.

Each cgroup count gets a fresh tree `pyoomd-idle-<pid>/cgNNNN` in /sys/fs/cgroup/{memory,unified}, each cgroup
holding one `sleep` (or nothing, with --empty). The daemons run one after another, never side by side, so that
none pays for another's reads. pyoomd and oomd get the same pressure-only policy: pressure_above on every cgroup,
and kill_by_pressure, dry (a ranking by pressure: on this hybrid host oomd has no memory figures to rank by).
earlyoom and nohang watch the host alone, so N does not apply to them; they run at each N anyway, as a check
that the figures are stable. Nothing can be killed: every daemon is configured not to act (checked before it
starts), and each one's thresholds are far from this idle host's state.

CPU % is of one core: utime+stime (all threads) from /proc/PID/stat over the window. PSS, split into anon and
file, is from /proc/PID/smaps_rollup at the window's end; "private" is what a process alone maps (the pages a
forked worker has written since its fork, and what it allocated itself), the rest of its PSS is its share of
pages mapped by several. reads/s counts read syscalls (/proc/PID/io), which
shows how much each process touches per tick. Kernel work done on a daemon's behalf (PSI triggers, cgroup file
generation in kworkers) is not charged to it and not counted here.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.realhost import CGROUP_ROOT, CgroupSandbox

REPO = Path(__file__).resolve().parent.parent

CLK_TCK = os.sysconf("SC_CLK_TCK")
SETTLE = 5.0  # seconds after "ready" before the window opens: start-up work (imports, first scans) is not idle
NOHANG_CONFIGS = (Path("/etc/nohang/nohang.conf"), Path("/usr/share/nohang/nohang.conf"))


# --- reading a process -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Counters:
    start: int  # the process's start time (clock ticks since boot): tells a reused PID apart
    cpu_ticks: int  # utime + stime of all its threads
    reads: int  # read syscalls so far


def counters(pid: int) -> Counters:
    stat = Path(f"/proc/{pid}/stat").read_text()
    rest = stat[stat.rindex(")") + 2:].split()  # comm may hold spaces and parentheses; the fields after it don't
    io = dict(line.split(": ") for line in Path(f"/proc/{pid}/io").read_text().splitlines())
    return Counters(start=int(rest[19]), cpu_ticks=int(rest[11]) + int(rest[12]), reads=int(io["syscr"]))


def pss_kib(pid: int) -> dict[str, int]:
    """Pss, Pss_Anon and Pss_File in KiB (shared pages are divided among their users, so these add up), and
    Private: the pages this process alone maps (Private_Clean + Private_Dirty), what it costs on its own."""
    out = {"Private": 0}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("Pss", "Pss_Anon", "Pss_File"):
            out[key] = int(value.split()[0])
        elif key in ("Private_Clean", "Private_Dirty"):
            out["Private"] += int(value.split()[0])
    return out


# --- the daemons ---------------------------------------------------------------------------------------------


@dataclass
class Daemon:
    """One daemon under test: how it is started, when it is ready, and which processes are its own."""

    name: str
    argv: list[str]
    ready: str  # a regex its log shows once it watches what it was given
    label: Callable[[psutil.Process], str]  # the name of one of its processes in the table
    env: dict[str, str] | None = None
    cwd: Path = Path("/")
    ready_timeout: float = 120.0
    scratch: list[Path] = field(default_factory=list)  # directories of its own, removed once it has stopped
    log_path: Path | None = None
    proc: subprocess.Popen | None = None

    def start(self, log_path: Path) -> None:
        self.log_path = log_path
        with open(log_path, "wb") as log:
            # A session of its own: a ^C at the terminal reaches this script alone, which then stops it in order.
            self.proc = subprocess.Popen(self.argv, cwd=self.cwd, env=self.env, stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path else ""

    def log_tail(self, lines: int = 20) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout
        while not re.search(self.ready, self.log(), re.MULTILINE):
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode} before it was ready:\n"
                                   f"{self.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} not ready after {self.ready_timeout:g} s:\n{self.log_tail()}")
            time.sleep(0.1)

    def processes(self) -> dict[str, int]:
        root = psutil.Process(self.proc.pid)
        return {self.label(p): p.pid for p in [root, *root.children(recursive=True)]}

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 15 s; by PID, our own child, not yet reaped so the PID is still ours."""
        if self.proc is None:
            return
        descendants = []
        with contextlib.suppress(psutil.Error):
            descendants = psutil.Process(self.proc.pid).children(recursive=True)
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        # pyoomd's workers die with their supervisor (PDEATHSIG); anything of ours that did not is ended here.
        # psutil's Process checks the start time before it signals, so a PID reused meanwhile is left alone.
        _, alive = psutil.wait_procs(descendants, timeout=5)
        for p in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
        self.proc = None
        for d in self.scratch:
            shutil.rmtree(d, ignore_errors=True)


def pyoomd_label(p: psutil.Process) -> str:
    """`python -m supervisor` is the supervisor, `python -P -m workers.NAME` a worker (a forked one's title is one
    string: setproctitle)."""
    cmd = " ".join(p.cmdline()).split()
    module = cmd[cmd.index("-m") + 1] if "-m" in cmd[:-1] else ""
    return module.removeprefix("workers.") if module != "supervisor" else "supervisor"


def comm_label(p: psutil.Process) -> str:
    return p.name()


def pyoomd_policy(prefix: str) -> str:
    # Pressure only: what oomd can read on this hybrid host too. dry: true on the action, and dry_run for the whole
    # policy as well: at idle the detector never holds, and if it did, nothing would be signalled.
    return f"""\
interval: 1s
dry_run: true
rulesets:
  - name: idle benchmark
    detectors:
      - name: pressure
        all:
          - pressure_above: {{cgroup: "{prefix}/*", resource: memory, threshold: 80, duration: 60}}
    actions:
      - kill_by_pressure: {{cgroup: "{prefix}/*", resource: memory, dry: true}}
"""


def pyoomd(work: Path, prefix: str) -> Daemon:
    config = work / "pyoomd.yaml"
    config.write_text(pyoomd_policy(prefix))
    # The unprivileged workers must reach their sockets: a 0755 directory of its own, not under a 0700 one.
    runtime = Path(tempfile.mkdtemp(prefix="pyoomd-idle-run-", dir="/tmp"))
    runtime.chmod(0o755)
    argv = [sys.executable, "-m", "supervisor", "run", "--config", str(config), "--runtime-dir", str(runtime),
            "--state-dir", tempfile.mkdtemp(prefix="pyoomd-state-", dir=work), "--bus", "none", "--systemd-bus", "none"]
    return Daemon("pyoomd", argv, r"first snapshot evaluated", pyoomd_label,
                  env=dict(os.environ, PYTHONPATH=str(REPO)), cwd=REPO, scratch=[runtime])


NON_KILLING_OOMD_ACTIONS = {"continue", "stop"}


def oomd_config(prefix: str) -> dict:
    detector = {"name": "pressure_above",
                "args": {"cgroup": f"{prefix}/*", "resource": "memory", "threshold": "80", "duration": "60"}}
    action = {"name": "kill_by_pressure", "args": {"cgroup": f"{prefix}/*", "resource": "memory", "dry": "true"}}
    return {"rulesets": [{"name": "idle benchmark", "detectors": [["pressure", detector]], "actions": [action]}]}


def check_oomd_config(config: dict) -> None:
    """Refuse to run oomd with any action that could kill: each is dry, or one that kills nothing at all."""
    if config.get("prekill_hooks"):
        raise ValueError("oomd config has prekill hooks")
    for ruleset in config["rulesets"]:
        for action in ruleset["actions"]:
            if action["name"] not in NON_KILLING_OOMD_ACTIONS and action.get("args", {}).get("dry") != "true":
                raise ValueError(f"oomd action {action['name']} in {ruleset['name']!r} is not dry")


def oomd(binary: str, work: Path, prefix: str) -> Daemon:
    config = oomd_config(prefix)
    check_oomd_config(config)
    path = work / "oomd.json"
    path.write_text(json.dumps(config, indent=2))
    # oomd refuses cgroup v1: here it reads the cgroup2 mount, where every cgroup has its memory.pressure. Its
    # runtime dir (lock, stats socket) and its kill log (/dev/kmsg by default) go to our own files.
    argv = [binary, "--config", str(path), "--cgroup-fs", str(CGROUP_ROOT / "unified"), "--interval", "1",
            "--runtime-dir", tempfile.mkdtemp(prefix="oomd-run-", dir=work), "--kmsg-override", str(work / "oomd-kmsg")]
    return Daemon("oomd", argv, r"Running oomd", comm_label)


def earlyoom(binary: str) -> Daemon:
    # --dryrun: it decides but kills nothing (its log says so: that line is what we wait for). Its thresholds stay
    # at their defaults (10 % / 5 % of memory available), far below what this idle host has free. It polls
    # adaptively, at most 1 s apart with this much headroom; -r 3600 is Debian's own setting (a report an hour).
    usage = subprocess.run([binary, "-h"], capture_output=True, text=True)
    if "--dryrun" not in usage.stdout + usage.stderr:
        raise RuntimeError(f"{binary} has no --dryrun: not run")
    return Daemon("earlyoom", [binary, "--dryrun", "-r", "3600"], r"dryrun mode enabled", comm_label)


# nohang has no dry run. It acts only when MemAvailable <= the threshold (and SwapFree <= its own, always true
# without swap), or on PSI or zram, and then only on a victim whose badness reaches min_badness: thresholds of 0 M,
# PSI and zram checks off and a min_badness no process can reach make it unable to act. It polls every second, as
# the others do (max_sleep 1 instead of its default 3).
NOHANG_SETTINGS = {
    "soft_threshold_min_mem": "0 M",
    "hard_threshold_min_mem": "0 M",
    "min_badness": "1000000000",
    "psi_checking_enabled": "False",
    "zram_checking_enabled": "False",
    "low_memory_warnings_enabled": "False",
    "post_kill_exe": "",
    "min_sleep": "1",
    "max_sleep": "1",
}


def nohang_config(template: str) -> str:
    lines, seen = [], set()
    for line in template.splitlines():
        key = line.partition("=")[0].strip()
        if key in NOHANG_SETTINGS:
            line = f"{key} = {NOHANG_SETTINGS[key]}"
            seen.add(key)
        if line.lstrip().startswith("@SOFT_ACTION"):  # a command run instead of a signal: none of those either
            continue
        lines.append(line)
    lines += [f"{k} = {v}" for k, v in NOHANG_SETTINGS.items() if k not in seen]
    return "\n".join(lines) + "\n"


def nohang(binary: str, work: Path) -> Daemon:
    template = next((p for p in NOHANG_CONFIGS if p.exists()), None)
    if template is None:
        raise RuntimeError(f"no nohang.conf in {', '.join(map(str, NOHANG_CONFIGS))}: not run")
    path = work / "nohang.conf"
    path.write_text(nohang_config(template.read_text()))
    return Daemon("nohang", [binary, "--monitor", "-c", str(path)], r"Monitoring has started", comm_label)


# --- measuring -------------------------------------------------------------------------------------------------


@dataclass
class Row:
    daemon: str
    cgroups: int
    process: str
    cpu_pct: float
    pss: float  # MiB
    pss_anon: float
    pss_file: float
    private: float  # MiB this process alone maps
    reads_per_s: float


def measure(daemon: Daemon, cgroups: int, seconds: float) -> list[Row]:
    before_pids = daemon.processes()
    before = {name: counters(pid) for name, pid in before_pids.items()}
    t0 = time.monotonic()
    time.sleep(seconds)
    elapsed = time.monotonic() - t0
    after_pids = daemon.processes()
    if after_pids != before_pids:  # a worker replaced, or one more process: the window measured something else
        raise RuntimeError(f"{daemon.name}'s processes changed during the window: {before_pids} -> {after_pids}"
                           f"\n{daemon.log_tail()}")
    rows = []
    for name, pid in after_pids.items():
        after = counters(pid)
        if after.start != before[name].start:
            raise RuntimeError(f"{daemon.name}: {name} (pid {pid}) was restarted during the window")
        pss = pss_kib(pid)
        rows.append(Row(
            daemon=daemon.name, cgroups=cgroups, process=name,
            cpu_pct=100.0 * (after.cpu_ticks - before[name].cpu_ticks) / CLK_TCK / elapsed,
            pss=pss["Pss"] / 1024, pss_anon=pss.get("Pss_Anon", 0) / 1024, pss_file=pss.get("Pss_File", 0) / 1024,
            private=pss["Private"] / 1024, reads_per_s=(after.reads - before[name].reads) / elapsed,
        ))
    return rows


@dataclass
class Tree:
    """pyoomd-idle-<pid>/cgNNNN in memory and unified, one sleep in each (moved there before exec)."""

    count: int
    empty: bool
    sandbox: CgroupSandbox = field(init=False)

    def __post_init__(self) -> None:
        self.sandbox = CgroupSandbox(name=f"pyoomd-idle-{os.getpid()}")

    @property
    def prefix(self) -> str:
        return self.sandbox.name

    def create(self) -> None:
        self.sandbox.mkdir()
        for i in range(self.count):
            self.sandbox.mkdir(f"cg{i:04d}")
            if not self.empty:
                self.sandbox.spawn(f"cg{i:04d}", ["sleep", "infinity"])

    def remove(self) -> None:
        self.sandbox.cleanup()  # our sleeps by PID, then the directories deepest first


def build_daemons(names: list[str], work: Path, prefix: str) -> tuple[list[Daemon], list[str]]:
    """The daemons that can run here, and a note for each one that cannot."""
    daemons, notes = [], []
    for name in names:
        try:
            if name == "pyoomd":
                daemons.append(pyoomd(work, prefix))
            elif name == "oomd":
                if not os.environ.get("OOMD"):
                    raise RuntimeError("OOMD is not set (the path of an oomd binary): not run")
                daemons.append(oomd(os.environ["OOMD"], work, prefix))
            elif (binary := shutil.which(name)) is None:
                raise RuntimeError(f"{name} is not on PATH: not run")
            else:
                daemons.append(earlyoom(binary) if name == "earlyoom" else nohang(binary, work))
        except (RuntimeError, ValueError, OSError) as e:
            notes.append(f"{name}: {e}")
    return daemons, notes


def run_one(daemon: Daemon, count: int, seconds: float, work: Path) -> list[Row]:
    print(f"{daemon.name} at {count} cgroups: starting", file=sys.stderr, flush=True)
    daemon.start(work / f"{daemon.name}-{count}.log")
    try:
        daemon.wait_ready()
        time.sleep(SETTLE)
        print(f"{daemon.name} at {count} cgroups: measuring {seconds:g} s", file=sys.stderr, flush=True)
        return measure(daemon, count, seconds)
    finally:
        daemon.stop()


# --- output -----------------------------------------------------------------------------------------------------


def table(headers: list[str], rows: list[list[str]], names: int) -> str:
    """Plain text columns: the first `names` left-aligned, the numbers after them right-aligned."""
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]

    def fmt(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) if i < names else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths,
                                                                                                   strict=True)))

    return "\n".join([fmt(headers), fmt(["-" * w for w in widths]), *map(fmt, rows)])


def report(rows: list[Row], notes: list[str], args: argparse.Namespace) -> None:
    print(f"idle cost, {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M:%S %Z}; {platform.node()}, "
          f"kernel {platform.release()}, {os.cpu_count()} cores, "
          f"{psutil.virtual_memory().total / 2**30:.1f} GiB; window {args.seconds:g} s, interval 1 s, "
          f"{'empty cgroups' if args.empty else 'one sleep per cgroup'}; host load (1/5/15 min) "
          + "/".join(f"{x:.2f}" for x in os.getloadavg()))  # other work on the host shares its 2 cores
    print()
    print(table(["daemon", "cgroups", "process", "CPU % of 1 core", "PSS MiB", "anon MiB", "file MiB", "private MiB",
                 "reads/s"],
                [[r.daemon, str(r.cgroups), r.process, f"{r.cpu_pct:.2f}", f"{r.pss:.1f}", f"{r.pss_anon:.1f}",
                  f"{r.pss_file:.1f}", f"{r.private:.1f}", f"{r.reads_per_s:.0f}"] for r in rows], names=3))
    print()
    totals = []
    for key in dict.fromkeys((r.daemon, r.cgroups) for r in rows):
        group = [r for r in rows if (r.daemon, r.cgroups) == key]
        totals.append([key[0], str(key[1]), str(len(group)), f"{sum(r.cpu_pct for r in group):.2f}",
                       f"{sum(r.pss for r in group):.1f}", f"{sum(r.reads_per_s for r in group):.0f}"])
    print(table(["daemon", "cgroups", "processes", "CPU % of 1 core", "PSS MiB", "reads/s"], totals, names=2))
    for note in notes:
        print(f"note: {note}")


# --- main -------------------------------------------------------------------------------------------------------


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def interrupted(signum: int, _frame: object) -> None:
    # The first signal unwinds into the cleanups (finally blocks); later ones are ignored so that they finish.
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    raise KeyboardInterrupt(signal.Signals(signum).name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="the measuring window per daemon and count")
    parser.add_argument("--cgroups", default="100,1000", help="comma-separated numbers of watched cgroups")
    parser.add_argument("--daemons", default="pyoomd,oomd,earlyoom,nohang",
                        help="comma-separated, of pyoomd, oomd (binary from $OOMD), earlyoom, nohang")
    parser.add_argument("--empty", action="store_true", help="leave the cgroups empty instead of one sleep in each")
    args = parser.parse_args()
    if os.geteuid() != 0:
        parser.error("run as root: it creates cgroups and reads other users' /proc/PID/io")
    counts = [int(n) for n in args.cgroups.split(",")]
    names = args.daemons.split(",")
    for sig in STOP_SIGNALS:  # SIGINT too: a shell starts background jobs with it ignored
        signal.signal(sig, interrupted)

    try:
        rows, notes = run_all(counts, names, args)
    except KeyboardInterrupt as e:
        sys.exit(f"interrupted ({e}); daemons, sleeps and cgroups removed")
    report(rows, notes, args)


def run_all(counts: list[int], names: list[str], args: argparse.Namespace) -> tuple[list[Row], list[str]]:
    rows: list[Row] = []
    notes: list[str] = []
    work = Path(tempfile.mkdtemp(prefix="pyoomd-idle-"))
    try:
        for count in counts:
            tree = Tree(count, args.empty)
            try:
                print(f"creating {count} cgroups under {tree.prefix}", file=sys.stderr, flush=True)
                tree.create()
                daemons, skipped = build_daemons(names, work, tree.prefix)
                notes += [n for n in skipped if n not in notes]
                for daemon in daemons:
                    try:
                        rows += run_one(daemon, count, args.seconds, work)
                    except RuntimeError as e:  # one daemon failing says nothing of the others: note it, go on
                        notes.append(f"{daemon.name} at {count} cgroups: {e}")
            finally:
                tree.remove()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return rows, notes


if __name__ == "__main__":
    main()
