"""How cgroupfs reads a file: open+read+close each time, or pread on a descriptor kept open.

Run as root on a host with cgroups: `.venv/bin/python benchmarks/cgroupfs_read.py`. Prints medians per file in
microseconds and the ratio; the collector keeps descriptors (cgroupfs/keptfiles.py) because of this table.
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

from cgroupfs.keptfiles import KeptFiles

CANDIDATES = [
    "/sys/fs/cgroup/memory/memory.stat",
    "/sys/fs/cgroup/memory/memory.usage_in_bytes",
    "/sys/fs/cgroup/memory/cgroup.procs",
    "/sys/fs/cgroup/unified/memory.pressure",
    "/sys/fs/cgroup/memory.stat",
    "/proc/meminfo",
    "/proc/pressure/memory",
]
ROUNDS, REPEAT = 7, 500


def open_read(p: Path) -> str:
    with open(p) as f:
        return f.read()


def median_us(fn, p: Path) -> float:
    samples = []
    for _ in range(ROUNDS):
        start = time.perf_counter()
        for _ in range(REPEAT):
            fn(p)
        samples.append((time.perf_counter() - start) / REPEAT * 1e6)
    return statistics.median(samples)


def main() -> None:
    kept = KeptFiles()
    files = [Path(p) for p in CANDIDATES if os.path.exists(p)]
    print(f"{'file':48} {'open+read us':>13} {'pread us':>9} {'ratio':>6}")
    for p in files:
        a = median_us(open_read, p)
        b = median_us(kept.read, p)
        print(f"{p!s:48} {a:13.1f} {b:9.1f} {a / b:6.1f}")
    kept.close()


if __name__ == "__main__":
    main()
