"""inotify(7) through libc: a descriptor that becomes readable when files in watched directories change.

The standard library has no inotify. The collector keeps directory listings of cgroup trees between ticks and
lists a directory again only when a cgroup was created, removed or renamed in it (mkdir and rmdir on cgroupfs
notify like on any filesystem); the supervisor polls a watch beside its sockets (drop-in files), and
`pyoomd reload` waits on one for the daemon's answer instead of polling the state directory.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import struct
from pathlib import Path

IN_CLOSE_WRITE = 0x00000008
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000
IN_NONBLOCK = 0o4000
IN_CLOEXEC = 0o2000000

_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len (of the name that follows)


class Inotify:
    """One inotify descriptor with any number of directory watches; `fd` is readable when something happened."""

    def __init__(self) -> None:
        self._libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        fd = self._libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            raise self._error("inotify_init1")
        self.fd = fd

    def _error(self, what: str) -> OSError:
        err = ctypes.get_errno()
        return OSError(err, f"{what}: {os.strerror(err)}")

    def add_watch(self, directory: str | Path, mask: int) -> int:
        """Watch `directory` for `mask`; returns the watch descriptor that its events carry."""
        wd = self._libc.inotify_add_watch(self.fd, os.fsencode(directory), mask)
        if wd < 0:
            raise self._error(f"inotify_add_watch {directory}")
        return wd

    def rm_watch(self, wd: int) -> None:
        self._libc.inotify_rm_watch(self.fd, wd)  # fails only for a watch already gone with its directory

    def events(self) -> list[tuple[int, int]]:
        """The pending events as (watch descriptor, mask); IN_Q_OVERFLOW comes with descriptor -1."""
        out: list[tuple[int, int]] = []
        while True:
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                return out
            if not data:
                return out
            offset = 0
            while offset + _EVENT.size <= len(data):
                wd, mask, _cookie, length = _EVENT.unpack_from(data, offset)
                out.append((wd, mask))
                offset += _EVENT.size + length

    def drain(self) -> bool:
        """Read the pending events; True when there were any."""
        return bool(self.events())

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Inotify:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Watch(Inotify):
    """An inotify descriptor watching one directory for `mask`."""

    def __init__(self, directory: Path, mask: int) -> None:
        super().__init__()
        try:
            self.add_watch(directory, mask)
        except OSError:
            self.close()
            raise
