"""Each cgroup file is read at most once a tick, on the real hierarchies of this host."""

from __future__ import annotations

import collections
import time

import pytest

import cgroupfs.tree
from cgroupfs import CgroupFS, detect_layout

pytestmark = pytest.mark.real


def test_each_file_read_once_per_tick_and_afresh_the_next(cgroups, monkeypatch):
    cgroups.mkdir("a")
    cgroups.mkdir("b")
    cgroups.sleeper("a")
    cgroups.sleeper("b")
    time.sleep(0.2)
    reads: collections.Counter = collections.Counter()
    real = cgroupfs.tree._read_file

    def counting(p):
        reads[p] += 1
        return real(p)

    monkeypatch.setattr(cgroupfs.tree, "_read_file", counting)
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
