"""Files kept open across ticks and re-read with pread.

Measured on this kernel (benchmarks/cgroupfs_read.py): pread on a kept descriptor costs a third to a tenth of
Python's open+read+close for cgroup and procfs files, and it needs no path walk, which is what stalls first
when the host is thrashing. Descriptors of files not read in a tick are closed when the tick ends, so a removed
cgroup is not kept pinned by us.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

CHUNK = 65536
# Read afresh every time, never through a kept descriptor: v1 builds a cgroup's pid list at the first read after
# open and serves that same list to later reads until it has been unused for a second, so a descriptor re-read
# every tick would show the members of the first tick forever.
FRESH_ONLY = frozenset({"cgroup.procs", "tasks", "cgroup.threads"})
LIMIT = 4096  # descriptors at most; past that, files are read the ordinary way


def _pread_all(fd: int) -> bytes:
    parts = []
    offset = 0
    while True:
        chunk = os.pread(fd, CHUNK, offset)
        parts.append(chunk)
        if len(chunk) < CHUNK:
            return b"".join(parts)
        offset += len(chunk)


def _open(p: str) -> int:
    return os.open(p, os.O_RDONLY | os.O_CLOEXEC)


class KeptFiles:
    def __init__(self, limit: int = LIMIT) -> None:
        self.limit = limit
        # Keyed by the path as a string: hashing a pathlib object costs more than the pread.
        self._fds: dict[str, int] = {}
        self._used: set[str] = set()

    def read(self, p: str | Path) -> str:
        p = os.fspath(p)
        if p[p.rfind("/") + 1:] in FRESH_ONLY:
            fd = _open(p)
            try:
                return _pread_all(fd).decode()
            finally:
                os.close(fd)
        fd = self._fds.get(p)
        if fd is None:
            fd = _open(p)
            if len(self._fds) >= self.limit:
                try:
                    return _pread_all(fd).decode()
                finally:
                    os.close(fd)
            self._fds[p] = fd
        self._used.add(p)
        try:
            return _pread_all(fd).decode()
        except OSError as e:
            # The file we hold belongs to a cgroup (or process) that is gone; a new one may have the name now.
            self._forget(p)
            if e.errno not in (errno.ENODEV, errno.ESRCH, errno.ENOENT):
                raise
        fd = self._fds[p] = _open(p)  # FileNotFoundError: gone for good
        return _pread_all(fd).decode()

    def touch(self, p: str) -> None:
        """Keep `p` open through the next sweep although it was not read (its last reading still holds)."""
        if p in self._fds:
            self._used.add(p)

    def _forget(self, p: str) -> None:
        fd = self._fds.pop(p, None)
        if fd is not None:
            os.close(fd)

    def sweep(self) -> None:
        """Close what was not read since the last sweep."""
        for p in [p for p in self._fds if p not in self._used]:
            self._forget(p)
        self._used.clear()

    def close(self) -> None:
        for p in list(self._fds):
            self._forget(p)

    def __len__(self) -> int:
        return len(self._fds)
