"""Listings of cgroup directories kept from tick to tick, listed again only when inotify says they changed.

A policy's glob ("system.slice/*") is resolved every tick, and listing a directory of a thousand cgroups costs
the collector about as much as reading all their pressure files. Cgroups appear, vanish and are renamed only
through mkdir, rmdir and rename, which notify a watch on their parent like on any filesystem, so a listing stays
true until its directory's watch reports an event. A queue overflow forgets every listing; past `limit` watched
directories, the others are listed every time as before.
"""

from __future__ import annotations

import contextlib
import fnmatch
import logging
import os
from typing import NamedTuple

from cgroupfs.inotify import (
    IN_CREATE,
    IN_DELETE,
    IN_DELETE_SELF,
    IN_IGNORED,
    IN_MOVE_SELF,
    IN_MOVED_FROM,
    IN_MOVED_TO,
    IN_ONLYDIR,
    IN_Q_OVERFLOW,
    Inotify,
)

log = logging.getLogger("pyoomd.cgroupfs")

CHANGES = IN_CREATE | IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR
LIMIT = 256


class Entry(NamedTuple):
    name: str
    path: str
    inode: int


def list_subdirectories(d: str) -> list[Entry]:
    """The subdirectories of `d`, sorted by name, listed now (OSError when it cannot be listed)."""
    with os.scandir(d) as it:
        return sorted(Entry(e.name, e.path, e.inode()) for e in it if e.is_dir(follow_symlinks=False))


class Listings:
    """Subdirectories of a directory, sorted by name, from the last listing its watch has not contradicted."""

    def __init__(self, limit: int = LIMIT) -> None:
        self.limit = limit
        self._inotify: Inotify | None = None
        self._watched: dict[str, int] = {}  # directory -> watch descriptor
        self._dir_of: dict[int, str] = {}  # watch descriptor -> directory
        self._kept: dict[str, list[Entry]] = {}  # directory -> its subdirectories, while its watch is silent
        self._matching: dict[tuple[str, str], list[Entry]] = {}  # (directory, glob) -> what matches, likewise
        self._entries: dict[str, Entry] = {}  # path -> its entry in a kept listing
        try:
            self._inotify = Inotify()
        except OSError as e:  # out of inotify instances: every listing is done afresh, nothing else changes
            log.warning("cannot keep cgroup listings (%s); directories are listed every tick", e)

    def refresh(self) -> None:
        """Forget the listings whose directories changed since the last call (once a tick, before any list)."""
        if self._inotify is None or not self._watched:
            return
        for wd, mask in self._inotify.events():
            if mask & IN_Q_OVERFLOW:
                self._kept.clear()
                self._matching.clear()
                self._entries.clear()
                continue
            d = self._dir_of.get(wd)
            if d is None:
                continue
            self._forget(d)
            if mask & IN_IGNORED:  # the directory is gone, and its watch with it
                del self._dir_of[wd]
                self._watched.pop(d, None)

    def subdirectories(self, d: str) -> list[Entry]:
        """The subdirectories of `d` (OSError when it cannot be listed)."""
        kept = self._kept.get(d)
        if kept is not None:
            return kept
        watched = self._watch(d)
        entries = list_subdirectories(d)
        if watched:
            self._kept[d] = entries
            self._entries.update((e.path, e) for e in entries)
        return entries

    def entry(self, path: str) -> Entry | None:
        """`path` as a kept listing of its parent shows it (None: not in one; it may still exist)."""
        return self._entries.get(path)

    def _forget(self, d: str) -> None:
        entries = self._kept.pop(d, None)
        if entries is None:
            return
        for e in entries:
            self._entries.pop(e.path, None)
        self._matching = {k: v for k, v in self._matching.items() if k[0] != d}

    def matching(self, d: str, glob: str) -> list[Entry]:
        """The subdirectories of `d` whose names match `glob` (fnmatch, case-sensitive)."""
        found = self._matching.get((d, glob))
        if found is None:
            found = [e for e in self.subdirectories(d) if fnmatch.fnmatchcase(e.name, glob)]
            if d in self._kept:
                self._matching[(d, glob)] = found
        return found

    def _watch(self, d: str) -> bool:
        # Watched before it is listed: a change from here on is reported, an earlier one is in the listing.
        if d in self._watched:
            return True
        if self._inotify is None or len(self._watched) >= self.limit:
            return False
        try:
            wd = self._inotify.add_watch(d, CHANGES)
        except OSError:
            return False  # gone, or out of watches: listed afresh every time
        self._watched[d] = wd
        self._dir_of[wd] = d
        return True

    def close(self) -> None:
        if self._inotify is not None:
            with contextlib.suppress(OSError):
                self._inotify.close()
            self._inotify = None
        self._watched.clear()
        self._dir_of.clear()
        self._kept.clear()
        self._matching.clear()
        self._entries.clear()
