"""`make demo`: the livelock pyoomd exists for, on this host, in about a minute.

It makes a cgroup of its own with a 40 MiB memory limit, starts a program there that reads a 256 MiB file over
and over (its page cache can never fit: the kernel reclaims and re-reads forever, and its OOM killer never acts,
since nothing is out of memory), starts an idle neighbour beside it, and runs pyoomd with a small policy on
their parent. It prints the thrasher's memory pressure each second until pyoomd kills it, then what pyoomd
recorded, and removes everything it made. Run as root; Ctrl-C cleans up too.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CGROUP = Path("/sys/fs/cgroup")
NAME = f"pyoomd-demo-{os.getpid()}"
HIERARCHIES = ("memory", "unified")
THRASHER = textwrap.dedent("""
    import mmap, os, sys
    with open(sys.argv[1], "wb") as f:      # written inside the cgroup: its page cache is charged there
        for _ in range(256):
            f.write(os.urandom(1 << 20))
    m = mmap.mmap(os.open(sys.argv[1], os.O_RDONLY), 0, prot=mmap.PROT_READ)
    while True:
        for i in range(0, len(m), 4096):
            m[i]
""")
POLICY = f"""\
# The demo's policy: when the thrasher's 10 s 'full' memory pressure stays above 10 % for 2 s, kill the
# largest (or fastest-growing) child of the demo cgroup.
interval: 1s
rulesets:
  - name: demo
    post_action_delay: 60s
    detectors:
      - name: a child stalls on memory
        all:
          - pressure_above: {{cgroup: "{NAME}/*", resource: memory, threshold: 10, duration: 2}}
    actions:
      - kill_by_memory_size_or_growth: {{cgroup: "{NAME}/*"}}
"""


def cgroup_dir(h: str, child: str = "") -> Path:
    return CGROUP / h / NAME / child if child else CGROUP / h / NAME


def start_in(child: str, argv: list[str]) -> subprocess.Popen:
    dirs = [cgroup_dir(h, child) for h in HIERARCHIES]

    def move() -> None:
        for d in dirs:
            (d / "cgroup.procs").write_text(str(os.getpid()))

    return subprocess.Popen(argv, preexec_fn=move, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def full_avg10(child: str) -> float | None:
    try:
        line = (cgroup_dir("unified", child) / "memory.pressure").read_text().splitlines()[1]
    except (OSError, IndexError):
        return None
    return float(line.split()[1].split("=")[1])


def main() -> int:
    if os.geteuid() != 0:
        print("make demo needs root: it makes cgroups and runs pyoomd", file=sys.stderr)
        return 2
    if not all((CGROUP / h / "cgroup.procs").exists() for h in HIERARCHIES):
        print(f"make demo needs {CGROUP}/memory and {CGROUP}/unified (a hybrid host, as this kind of machine is)",
              file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="pyoomd-demo-", dir="/tmp"))
    work.chmod(0o755)  # the unprivileged workers reach their sockets through it
    procs: list[subprocess.Popen] = []
    made: list[Path] = []
    try:
        for h in HIERARCHIES:
            for child in ("", "thrasher", "idle"):
                d = cgroup_dir(h, child)
                d.mkdir()
                made.append(d)
        (cgroup_dir("memory", "thrasher") / "memory.limit_in_bytes").write_text(str(40 << 20))
        (work / "policy.yaml").write_text(POLICY)
        (work / "policy.yaml").chmod(0o644)
        print(f"1. cgroup /{NAME}/thrasher with a 40 MiB memory limit, and /{NAME}/idle beside it\n")
        print("2. pyoomd starts with this policy:\n")
        print(textwrap.indent(POLICY, "     "))
        log = open(work / "pyoomd.log", "wb")  # noqa: SIM115 - kept open while pyoomd runs
        daemon = subprocess.Popen([sys.executable, "-m", "supervisor", "run", "--config", str(work / "policy.yaml"),
                                   "--runtime-dir", str(work / "run"), "--state-dir", str(work / "state"),
                                   "--bus", "none"], cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)),
                                  stdout=log, stderr=log)
        procs.append(daemon)
        deadline = time.monotonic() + 60
        while b"first snapshot evaluated" not in (work / "pyoomd.log").read_bytes():
            if daemon.poll() is not None or time.monotonic() > deadline:
                print((work / "pyoomd.log").read_text(), file=sys.stderr)
                return 1
            time.sleep(0.2)
        print("   pyoomd is protecting this host (log: " + str(work / "pyoomd.log") + ")\n")
        idle = start_in("idle", ["sleep", "1000"])
        thrasher = start_in("thrasher", [sys.executable, "-c", THRASHER, str(work / "thrash.dat")])
        procs += [idle, thrasher]
        print("3. the thrasher reads a 256 MiB file in 40 MiB: its page cache thrashes, the kernel OOM killer never "
              "acts\n")
        started = time.monotonic()
        while thrasher.poll() is None and time.monotonic() - started < 180:
            pressure = full_avg10("thrasher")
            bar = "#" * int((pressure or 0) / 2)
            print(f"   {time.monotonic() - started:5.1f} s  full memory pressure avg10 {pressure or 0:6.2f} %  {bar}")
            time.sleep(1)
        if thrasher.poll() is None:
            print("\n   pyoomd did not kill it within 3 minutes; see its log", file=sys.stderr)
            return 1
        print(f"\n4. killed after {time.monotonic() - started:.1f} s (exit status {thrasher.returncode}); the idle "
              f"neighbour is {'still running' if idle.poll() is None else 'gone (!)'}\n")
        time.sleep(0.5)
        for line in (work / "state" / "actions.jsonl").read_text().splitlines():
            r = json.loads(line)
            print(f"   action record: {r['result']} {r['target']} (pids {r['pids']}) by {r['plugin']} via "
                  f"{r['mechanism']}: {r['reason']}")
        print("\n   every action is also a log line, a D-Bus ActionTaken signal and a Prometheus counter")
        return 0 if idle.poll() is None else 1
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM if p is procs[0] else signal.SIGKILL)  # our own children, by PID
                try:
                    p.wait(15)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        for d in sorted(made, key=lambda p: len(p.parts), reverse=True):
            for _ in range(50):
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.1)
        (work / "thrash.dat").unlink(missing_ok=True)
        print(f"\n5. cleaned up: /{NAME} removed; pyoomd's log and records kept in {work}")


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
