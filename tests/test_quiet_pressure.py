"""A pressure-only record stands in for reading its PSI file while nothing on the host has stalled since it was
read and it showed no pressure (cgroupfs/quiet.py): checked on fixture trees whose PSI files the test writes, with
a clock of its own, so that every reason to read again is exercised on cue."""

from __future__ import annotations

import collections
import os
import shutil

import pytest

from cgroupfs.keptfiles import KeptFiles
from cgroupfs.quiet import REFRESH, SETTLE
from cgroupfs.tree import CgroupFS
from tests.fixture_trees import THIS_MACHINE_CHILD, V2_HYBRID_CHILD, V2_SESSION, hybrid_host, v2_host

AT_REST = "some avg10=0.00 avg60=0.00 avg300=0.00 total={some}\nfull avg10=0.00 avg60=0.00 avg300=0.00 total={full}\n"
PRESSURED = "some avg10=12.50 avg60=3.10 avg300=0.70 total={some}\nfull avg10=9.00 avg60=2.00 avg300=0.40 total={full}\n"
PRESSURE = frozenset({"pressure"})
NAMES = ("a", "b", "c")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Host:
    """A pure-v2 fixture host with three idle cgroups under /test.slice, a clock, and a count of PSI reads."""

    def __init__(self, tmp_path, monkeypatch) -> None:
        self.fixture = v2_host(tmp_path)
        self.dirs = {n: self.fixture.add_cgroup("unified", f"/test.slice/{n}", V2_SESSION) for n in NAMES}
        for n in NAMES:
            self.set_cgroup(n, AT_REST, some=100, full=50)
        self.host_total = 5000
        self.set_host()
        self.clock = Clock()
        self.fs = CgroupFS(self.fixture.layout, proc=self.fixture.proc, clock=self.clock)
        self.reads: collections.Counter = collections.Counter()
        real = KeptFiles.read

        def counting(kept, p):
            self.reads[os.fspath(p)] += 1
            return real(kept, p)

        monkeypatch.setattr(KeptFiles, "read", counting)

    def set_cgroup(self, name: str, template: str, some: int, full: int) -> None:
        (self.dirs[name] / "memory.pressure").write_text(template.format(some=some, full=full))

    def set_host(self) -> None:
        (self.fixture.proc / "pressure" / "memory").write_text(AT_REST.format(some=self.host_total,
                                                                             full=self.host_total // 2))

    def tick(self, fields: frozenset[str] = PRESSURE, advance: float = 1.0) -> dict[str, object]:
        """One tick `advance` seconds after the last; returns each cgroup's record."""
        self.clock.now += advance
        self.reads.clear()
        with self.fs.tick():
            host = self.fs.read_host()
            return {p.rsplit("/", 1)[1]: self.fs.read_stats(p, fields, host)
                    for p in self.fs.resolve(["/test.slice/*"])}

    def read_pressure_of(self) -> set[str]:
        return {n for n in NAMES if self.reads[os.fspath(self.dirs[n] / "memory.pressure")]}

    def settle(self) -> None:
        for _ in range(int(SETTLE) + 1):
            self.tick()


@pytest.fixture
def host(tmp_path, monkeypatch):
    h = Host(tmp_path, monkeypatch)
    yield h
    h.fs.close()


def test_idle_cgroups_are_read_until_settled_then_stand_while_the_host_does_not_stall(host):
    records = host.tick()
    assert host.read_pressure_of() == set(NAMES)
    assert records["a"].pressure.some_total == 100 and records["a"].pressure.full_avg10 == 0.0
    # Read every tick until their totals have stood still for two of the kernel's averaging periods.
    ticks_read = 1
    while host.read_pressure_of():
        ticks_read += 1
        host.tick()
        assert ticks_read < 10, "idle cgroups are never left alone"
    assert ticks_read >= SETTLE
    # Then the host's own PSI is all that is read, and the records are the last ones read, exactly.
    again = host.tick()
    assert host.read_pressure_of() == set()
    assert host.reads[os.fspath(host.fixture.proc / "pressure" / "memory")] == 1
    assert again == records


def test_a_stall_anywhere_on_the_host_sends_every_cgroup_back_to_its_file(host):
    host.settle()
    host.tick()
    assert host.read_pressure_of() == set()
    host.host_total += 7  # a stall somewhere, in none of ours
    host.set_host()
    host.tick()
    assert host.read_pressure_of() == set(NAMES)
    # Their own totals had not moved: they stand again from the next tick.
    host.tick()
    assert host.read_pressure_of() == set()


def test_pressure_that_begins_is_seen_at_the_first_tick_after_it(host):
    host.settle()
    host.host_total += 40_000
    host.set_host()
    host.set_cgroup("b", PRESSURED, some=40_100, full=20_050)
    records = host.tick()
    assert records["b"].pressure.some_avg10 == 12.5 and records["b"].pressure.full_avg10 == 9.0
    # Pressure that stays is read every tick, even when the host stalls no more.
    for _ in range(int(SETTLE) * 2):
        records = host.tick()
        assert "b" in host.read_pressure_of() and records["b"].pressure.full_avg10 == 9.0
    # The others stand again at once.
    assert host.read_pressure_of() == {"b"}


def test_a_total_that_moved_under_zero_averages_is_read_until_the_kernel_has_averaged_it(host):
    # The averages lag the total by up to one 2 s period: zero averages with a moving total are no rest.
    host.settle()
    host.host_total += 3
    host.set_host()
    host.set_cgroup("c", AT_REST, some=103, full=50)
    host.tick()
    read_while_settling = 0
    for _ in range(int(SETTLE) + 2):
        host.tick()
        read_while_settling += "c" in host.read_pressure_of()
    assert read_while_settling >= SETTLE - 1
    host.tick()
    assert host.read_pressure_of() == set()


def test_records_are_read_again_after_refresh_whatever_the_host_does(host):
    host.settle()
    host.tick()
    assert host.read_pressure_of() == set()
    host.tick(advance=REFRESH)
    assert host.read_pressure_of() == set(NAMES)


def test_a_cgroup_made_anew_under_the_same_name_is_read(host):
    host.settle()
    shutil.rmtree(host.dirs["a"])
    host.dirs["a"] = host.fixture.add_cgroup("unified", "/test.slice/a", V2_SESSION)
    host.set_cgroup("a", AT_REST, some=0, full=0)
    records = host.tick()
    assert host.read_pressure_of() == {"a"}
    # (What is read comes through the descriptor kept on the old file: on tmpfs it reads on, where cgroupfs
    # answers ENODEV and the file is opened anew. The record is the new directory's all the same.)
    assert records["a"].inode == host.dirs["a"].stat().st_ino


def test_only_pressure_only_records_stand_in(host):
    host.settle()
    host.tick(frozenset({"pressure", "memory"}))
    assert host.read_pressure_of() == set(NAMES)


def test_a_host_without_psi_reads_every_cgroup_every_tick(host):
    (host.fixture.proc / "pressure" / "memory").unlink()
    for _ in range(int(SETTLE) + 3):
        host.tick()
        assert host.read_pressure_of() == set(NAMES)


def test_the_psi_file_stays_open_while_its_record_stands_in(host):
    host.settle()
    kept = set(host.fs._kept._fds)
    assert {os.fspath(host.dirs[n] / "memory.pressure") for n in NAMES} <= kept
    for _ in range(3):
        host.tick()
    assert host.read_pressure_of() == set()
    assert set(host.fs._kept._fds) == kept


def test_on_a_hybrid_host_the_verified_twin_is_what_stands_in(tmp_path):
    fixture = hybrid_host(tmp_path)
    pids = {int(x) for x in (fixture.cgroup_dir("memory", THIS_MACHINE_CHILD) / "cgroup.procs").read_text().split()}
    twin = fixture.add_cgroup("unified", THIS_MACHINE_CHILD, V2_HYBRID_CHILD, procs=pids)
    (twin / "memory.pressure").write_text(AT_REST.format(some=42, full=21))
    (fixture.proc / "pressure" / "memory").write_text(AT_REST.format(some=9000, full=4500))
    clock = Clock()
    fs = CgroupFS(fixture.layout, proc=fixture.proc, clock=clock)
    try:
        seen = []
        for _ in range(int(SETTLE) + 3):
            clock.now += 1
            with fs.tick():
                seen.append(fs.read_stats(THIS_MACHINE_CHILD, PRESSURE, fs.read_host()))
        assert all(r is not None and r.pressure.some_total == 42 for r in seen)
        # The twin stops holding the same processes: once the record is read again, it has no pressure.
        (twin / "cgroup.procs").write_text("1\n")
        clock.now += REFRESH
        with fs.tick():
            assert fs.read_stats(THIS_MACHINE_CHILD, PRESSURE, fs.read_host()).pressure is None
    finally:
        fs.close()
