"""What a kill leaves behind for fleet tooling built for oomd: xattrs on the killed cgroup and a line in kmsg.

oomd marks a cgroup it kills with, in both the trusted. and user. namespaces:

- `oomd_ooms`: how many times it was picked (incremented by one per kill),
- `oomd_kill`: how many processes were killed in it (incremented by the count),
- `oomd_kill_uuid`: the id of the latest kill (pyoomd: the command id),

and writes one line to /dev/kmsg per kill:
`oomd kill: <avg10> <avg60> <avg300> <path> <usage> ruleset:[<r>] detectorgroup:[<g>] killer:<plugin> v2`
(the cgroup's own 'full' memory pressure with two decimals, its path relative to the cgroup root, its usage in
bytes). Every function here reports what failed and never raises: a mark is bookkeeping, and the kill it follows
has already happened. Only the actuator calls them, and never in dry-run.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

log = logging.getLogger(__name__)

KMSG_PATH = "/dev/kmsg"
NAMESPACES = ("trusted", "user")
OOMS = "oomd_ooms"
KILL = "oomd_kill"
KILL_UUID = "oomd_kill_uuid"
# printk truncates a record at about 1 KiB; stay below it so the line ends where we end it.
KMSG_MAX = 976


def _counter(d: Path, name: str) -> int:
    """The integer in xattr `name` of `d`; 0 when absent or not an integer (oomd starts from 0 as well)."""
    try:
        return int(os.getxattr(d, name).decode().strip() or 0)
    except OSError as e:
        if e.errno == errno.ENODATA:
            return 0
        raise
    except ValueError:
        return 0


def mark_kill(dirs: Iterable[str | Path], kill_id: str, nr_killed: int) -> list[str]:
    """Record a kill on each cgroup directory in `dirs` (the killed cgroup's primary directory and its cgroup2
    twin): oomd_ooms += 1, oomd_kill += nr_killed, oomd_kill_uuid = kill_id, in the trusted. and user. namespaces.
    Returns a note per failure (also logged); nothing raises."""
    problems: list[str] = []
    for d in dict.fromkeys(Path(x) for x in dirs):  # a path's primary directory may be its own twin
        problems.extend(_mark_dir(d, kill_id, nr_killed))
    for problem in problems:
        log.warning("%s", problem)
    return problems


def _mark_dir(d: Path, kill_id: str, nr_killed: int) -> list[str]:
    problems: list[str] = []
    for ns in NAMESPACES:
        for name, step in ((OOMS, 1), (KILL, nr_killed), (KILL_UUID, None)):
            attr = f"{ns}.{name}"
            try:
                value = kill_id if step is None else str(_counter(d, attr) + step)
                os.setxattr(d, attr, value.encode())
            except OSError as e:
                if e.errno in (errno.ENOENT, errno.ENOTDIR):
                    # Removed once empty (systemd does so for a unit that died): nothing left to mark.
                    return [f"cannot mark {d}: it is gone"]
                problems.append(f"cannot set {attr} on {d}: {e.strerror or e}")
    return problems


def kill_line(
    path: str,
    usage: int | None,
    pressure: Sequence[float] | None,
    ruleset: str,
    group: str,
    plugin: str,
) -> str:
    """oomd's kill line, without the "oomd kill: " prefix that `write_kmsg` adds (oomd's kmsg prefix)."""
    avg10, avg60, avg300 = [*(pressure or ()), 0.0, 0.0, 0.0][:3]
    return (f"{avg10:.2f} {avg60:.2f} {avg300:.2f} {path.strip('/')} {usage or 0} ruleset:[{ruleset}] "
            f"detectorgroup:[{group}] killer:{plugin} v2")


def write_kmsg(line: str, prefix: str = "oomd kill", path: str | Path = KMSG_PATH) -> str | None:
    """Write one record to the kernel log (`prefix: line`); None, or why it could not be written.

    Opened for each line: with kernel.printk_devkmsg=ratelimit the kernel limits each opener to a burst of lines,
    and a fresh open never inherits an earlier burst. Without a priority prefix the kernel files the line under
    facility user at its default level, as it does oomd's."""
    text = f"{prefix}: {line}" if prefix else line
    data = text.encode(errors="replace")[:KMSG_MAX].rstrip(b"\n") + b"\n"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError as e:
        problem = f"cannot open {path}: {e.strerror or e}"
        log.warning("%s (kill line: %s)", problem, text)
        return problem
    try:
        os.write(fd, data)
    except OSError as e:
        problem = f"cannot write {path}: {e.strerror or e}"
        log.warning("%s (kill line: %s)", problem, text)
        return problem
    finally:
        os.close(fd)
    return None
