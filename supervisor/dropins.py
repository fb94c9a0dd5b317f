"""The drop-in directory: policy files added, changed and removed while pyoomd runs (oomd's --drop-in-dir).

Changes are waited on with inotify (a file closed after writing, moved in, moved out, deleted), so the
supervisor's poll loop wakes on them; it then loads every drop-in afresh. Files whose names begin with "." are
ignored (editors' and tools' temporary files), as oomd does. A drop-in that does not load, or names a ruleset the
base does not have or does not open to drop-ins, is refused with its reason and the others still apply.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from policy.compose import check_drop_in
from policy.loader import PolicyInvalid, load_drop_in
from policy.model import DropIn, Policy

log = logging.getLogger("pyoomd.supervisor")

IN_CLOSE_WRITE = 0x00000008
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_NONBLOCK = 0o4000
IN_CLOEXEC = 0o2000000
WATCHED = IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO | IN_DELETE | IN_DELETE_SELF | IN_MOVE_SELF


@dataclass
class DropInDir:
    path: Path
    fd: int = -1

    def open(self) -> None:
        """Start waiting on changes; `fd` is readable when one happened."""
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        fd = libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            raise OSError(ctypes.get_errno(), f"inotify_init1: {os.strerror(ctypes.get_errno())}")
        self.path.mkdir(parents=True, exist_ok=True)
        if libc.inotify_add_watch(fd, os.fsencode(self.path), WATCHED) < 0:
            err = ctypes.get_errno()
            os.close(fd)
            raise OSError(err, f"inotify_add_watch {self.path}: {os.strerror(err)}")
        self.fd = fd

    def drain(self) -> bool:
        """Read the pending change notices; True when there were any."""
        changed = False
        while True:
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                return changed
            if not data:
                return changed
            changed = True

    def load(self, base: Policy) -> tuple[list[DropIn], list[str]]:
        """Every drop-in that applies to `base`, and the reasons others were refused."""
        drop_ins: list[DropIn] = []
        errors: list[str] = []
        for p in sorted(self.path.iterdir()) if self.path.is_dir() else []:
            if p.name.startswith(".") or not p.is_file():
                continue
            try:
                drop_in = load_drop_in(p)
            except PolicyInvalid as e:
                errors.extend(str(err) for err in e.errors)
                continue
            problems = check_drop_in(base, drop_in)
            if problems:
                errors.extend(problems)
                continue
            drop_ins.append(drop_in)
        return drop_ins, errors

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
