"""Ticks on the real hierarchies of this host: each file read at most once a tick, through descriptors kept
open between ticks, and nothing of a removed cgroup kept open."""

from __future__ import annotations

import collections
import os
import time

import pytest

from cgroupfs import CgroupFS, detect_layout
from cgroupfs.keptfiles import KeptFiles

pytestmark = pytest.mark.real


def test_each_file_read_once_per_tick_and_afresh_the_next(cgroups, monkeypatch):
    cgroups.mkdir("a")
    cgroups.mkdir("b")
    cgroups.sleeper("a")
    cgroups.sleeper("b")
    time.sleep(0.2)
    reads: collections.Counter = collections.Counter()
    real = KeptFiles.read

    def counting(self, p):
        reads[p] += 1
        return real(self, p)

    monkeypatch.setattr(KeptFiles, "read", counting)
    fs = CgroupFS(detect_layout())
    for _ in range(2):
        reads.clear()
        with fs.tick():
            host = fs.read_host()
            stats = [fs.read_stats(p, host=host) for p in fs.resolve([cgroups.path, f"{cgroups.path}/*"])]
        assert [s.path for s in stats] == [cgroups.path, f"{cgroups.path}/a", f"{cgroups.path}/b"]
        assert stats[0].nr_procs == 2 and stats[0].pressure is not None
        twice = {str(p): n for p, n in reads.items() if n > 1}
        assert not twice, twice
        assert reads, "nothing was read"
    fs.close()


def test_kept_descriptors_are_reused_and_dropped_with_their_cgroup(cgroups):
    cgroups.mkdir("gone")
    path = f"{cgroups.path}/gone"
    fs = CgroupFS(detect_layout())
    with fs.tick():
        assert fs.read_stats(path) is not None
    kept = dict(fs._kept._fds)
    assert any(str(p).endswith("/gone/memory.stat") for p in kept)
    with fs.tick():
        first = fs.read_stats(path)
    assert dict(fs._kept._fds) == kept  # the same descriptors, re-read with pread
    for h in ("memory", "unified"):
        os.rmdir(f"/sys/fs/cgroup/{h}{path}")
    with fs.tick():
        assert fs.read_stats(path) is None  # vanished: absent from the tick, no error
    with fs.tick():
        pass
    assert not any("/gone/" in str(p) for p in fs._kept._fds), "a removed cgroup's files are still held open"
    cgroups.mkdir("gone", memory_limit=32 << 20)  # same name, a new cgroup
    with fs.tick():
        again = fs.read_stats(path)
    assert again is not None and again.inode != first.inode and again.limit == 32 << 20
    fs.close()


def test_members_are_current_every_tick_on_v1_too(cgroups):
    # v1 serves a cached pid list to a descriptor re-read within a second of its last use: a kept descriptor of
    # cgroup.procs would keep showing the first tick's members. Ticks here come 0.2 s apart, as fast ones do.
    cgroups.mkdir("grow")
    path = f"{cgroups.path}/grow"
    fs = CgroupFS(detect_layout())
    seen = []
    for _ in range(3):
        with fs.tick():
            seen.append(fs.read_stats(path).nr_procs)
        cgroups.sleeper("grow")
        time.sleep(0.2)
    with fs.tick():
        st = fs.read_stats(path)
    assert seen == [0, 1, 2] and st.nr_procs == 3
    assert st.pressure is not None  # the cgroup2 twin holds the same (current) members
    fs.close()


def test_a_glob_sees_cgroups_created_removed_and_renamed_between_ticks(cgroups, monkeypatch):
    # Listings are kept from tick to tick and redone only when inotify reports a change in their directory.
    for name in ("a", "b"):
        cgroups.mkdir(name)
    fs = CgroupFS(detect_layout())
    pattern = f"{cgroups.path}/*"
    listed: collections.Counter = collections.Counter()
    real_scandir = os.scandir

    def counting(d):
        listed[os.fspath(d)] += 1
        return real_scandir(d)

    monkeypatch.setattr(os, "scandir", counting)

    def resolve() -> list[str]:
        with fs.tick():
            return [p.rsplit("/", 1)[1] for p in fs.resolve([pattern])]

    try:
        assert resolve() == ["a", "b"]
        first = sum(listed.values())
        assert resolve() == ["a", "b"] and sum(listed.values()) == first, "an unchanged directory was listed again"
        cgroups.mkdir("c")
        assert resolve() == ["a", "b", "c"]
        os.rmdir(f"/sys/fs/cgroup/memory{cgroups.path}/a")
        os.rmdir(f"/sys/fs/cgroup/unified{cgroups.path}/a")
        assert resolve() == ["b", "c"]
        # cgroup v1 lets a cgroup be renamed within its parent; the unified twin keeps its name.
        os.rename(f"/sys/fs/cgroup/memory{cgroups.path}/b", f"/sys/fs/cgroup/memory{cgroups.path}/d")
        cgroups.dirs.append(cgroups.dirs[0] / "d")
        assert resolve() == ["b", "c", "d"]
        # A cgroup removed and made again under the same name is a new directory: its record says so.
        with fs.tick():
            before = fs.read_stats(f"{cgroups.path}/c", frozenset({"memory"}))
        for h in ("memory", "unified"):
            os.rmdir(f"/sys/fs/cgroup/{h}{cgroups.path}/c")
        cgroups.mkdir("c")
        with fs.tick():
            fs.resolve([pattern])
            after = fs.read_stats(f"{cgroups.path}/c", frozenset({"memory"}))
        assert after is not None and after.inode != before.inode
    finally:
        fs.close()
