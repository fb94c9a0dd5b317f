"""A cgroup file the kernel would never write so (garbage, not UTF-8, truncated) costs that figure, which is then
absent, and nothing else: not the record, not the tick, not the collector (found by the fuzzing pass)."""

from __future__ import annotations

import select

from policy.plugins import Needs
from tests.fixture_trees import SESSION_SCOPE, SYSTEM_SLICE, v2_host
from workers.collector import SnapshotTaker


def test_garbage_in_a_cgroup_file_leaves_that_figure_out(tmp_path, caplog):
    host = v2_host(tmp_path)
    d = host.cgroup_dir("unified", SESSION_SCOPE)
    (d / "memory.current").write_text("lots\n")
    (d / "memory.pressure").write_bytes(b"some avg10=\xff\xfe\n")
    fs = host.fs()
    with fs.tick():
        stats = fs.read_stats(SESSION_SCOPE, frozenset({"memory", "pressure", "tree"}), fs.read_host())
    assert stats is not None and stats.usage is None and stats.pressure is None
    assert stats.nr_procs == 14  # the rest of the record is there
    assert "cannot read its memory figures (ValueError" in caplog.text  # said once, with the reason


def test_a_tick_goes_on_past_a_host_file_that_is_garbage(tmp_path):
    host = v2_host(tmp_path)
    (host.proc / "meminfo").write_text("MemTotal: lots kB\n")
    (host.proc / "pressure" / "memory").write_text("some avg10=0.00 avg60=0.00\n")  # truncated
    taker = SnapshotTaker(host.fs(), select.poll())
    taker.use(Needs(cgroups=(SYSTEM_SLICE, SESSION_SCOPE), fields=frozenset({"memory", "pressure"})))
    snapshot = taker.take(1)
    assert snapshot.host.pressure is None and snapshot.host.mem_total == 0
    assert [cg.path for cg in snapshot.cgroups] == [SYSTEM_SLICE, SESSION_SCOPE]
