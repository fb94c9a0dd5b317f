"""inotify(7) through libc: a descriptor that becomes readable when files in a directory change.

The standard library has no inotify; the supervisor polls this descriptor beside its sockets (drop-in files), and
`pyoomd reload` waits on it for the daemon's answer instead of polling the state directory.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from pathlib import Path

IN_CLOSE_WRITE = 0x00000008
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_NONBLOCK = 0o4000
IN_CLOEXEC = 0o2000000


class Watch:
    """An inotify descriptor watching one directory for `mask`; `fd` is readable when something happened."""

    def __init__(self, directory: Path, mask: int) -> None:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        fd = libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"inotify_init1: {os.strerror(err)}")
        if libc.inotify_add_watch(fd, os.fsencode(directory), mask) < 0:
            err = ctypes.get_errno()
            os.close(fd)
            raise OSError(err, f"inotify_add_watch {directory}: {os.strerror(err)}")
        self.fd = fd

    def drain(self) -> bool:
        """Read the pending notices; True when there were any."""
        changed = False
        while True:
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                return changed
            if not data:
                return changed
            changed = True

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Watch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
