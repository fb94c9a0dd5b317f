"""The collector waits on the kernel's pressure events for what the policy watches, on the real host:
PSI triggers where a cgroup has its own PSI file, v1 vmpressure where it has not, and counts that ride in
every snapshot."""

from __future__ import annotations

import select

import pytest

from cgroupfs import CgroupFS, detect_layout
from policy.engine import policy_needs
from policy.loader import load_policy_text
from tests.realhost import CgroupSandbox
from workers.collector import SnapshotTaker

pytestmark = pytest.mark.real


def needs_for(path: str, threshold: float = 5):
    return policy_needs(load_policy_text(f"""
rulesets:
  - name: watch
    detectors:
      - name: g
        all:
          - pressure_above: {{cgroup: "{path}", resource: memory, threshold: {threshold}, duration: 5}}
    actions:
      - continue: {{}}
""", "t.yaml"))


def new_taker() -> tuple[SnapshotTaker, select.poll]:
    poller = select.poll()  # the one poll that waits, as the collector's loop is
    return SnapshotTaker(CgroupFS(detect_layout()), poller), poller


def wait_for_events(taker: SnapshotTaker, poller, timeout: float = 40.0) -> int:
    ready = poller.poll(int(timeout * 1000))
    if not ready:
        raise AssertionError(f"no pressure event within {timeout:.0f}s")
    return sum(taker.on_ready(fd, revents) for fd, revents in ready)


def test_psi_trigger_on_a_cgroup_with_its_own_psi_file(cgroups: CgroupSandbox):
    cgroups.mkdir("t", memory_limit=64 << 20)
    path = f"{cgroups.path}/t"
    taker, poller = new_taker()
    try:
        taker.use(needs_for(path))
        first = taker.take(generation=1)
        (st,) = [s for s in first.cgroups if s.path == path]
        assert taker.watch.mechanism(path, "pressure") == "psi"
        assert st.pressure_events == 0 and st.vmpressure_events is None and st.last_event is None
        cgroups.thrasher("t")
        assert wait_for_events(taker, poller) >= 1
        (st,) = [s for s in taker.take(generation=1).cgroups if s.path == path]
        assert st.pressure_events >= 1
        assert st.last_event is not None and st.last_event >= first.time
        assert st.pressure is not None  # its own PSI file, verified twin
    finally:
        taker.close()


def test_vmpressure_stands_in_where_the_cgroup_has_no_psi_of_its_own(cgroups: CgroupSandbox):
    # A memory cgroup with no cgroup2 twin, as docker's and kubelet's cgroupfs drivers build them.
    cgroups.mkdir("v1only", memory_limit=64 << 20, hierarchies=("memory",))
    path = f"{cgroups.path}/v1only"
    taker, poller = new_taker()
    try:
        taker.use(needs_for(path))
        taker.take(generation=1)
        assert taker.watch.mechanism(path, "pressure") == "vmpressure"
        cgroups.thrasher("v1only", hierarchies=("memory",))
        assert wait_for_events(taker, poller) >= 1
        (st,) = [s for s in taker.take(generation=1).cgroups if s.path == path]
        assert st.vmpressure_events >= 1
        assert st.pressure_events is None
        assert st.pressure is None  # never the host's PSI, and no twin to read
    finally:
        taker.close()


def test_watch_follows_the_policy_and_the_cgroups(cgroups: CgroupSandbox):
    cgroups.mkdir("a")
    cgroups.mkdir("b")
    taker, _ = new_taker()
    try:
        taker.use(needs_for(f"{cgroups.path}/*"))
        taker.take(generation=1)
        assert sorted(taker.watch.watched) == [(f"{cgroups.path}/a", "pressure"), (f"{cgroups.path}/b", "pressure")]
        for h in ("memory", "unified"):
            (cgroups.dirs[0].parent.parent / h / cgroups.name / "b").rmdir()
        taker.take(generation=1)
        assert sorted(taker.watch.watched) == [(f"{cgroups.path}/a", "pressure")]
        taker.use(needs_for("pyoomd-test-nothing-here"))
        taker.take(generation=2)
        assert taker.watch.watched == {}
    finally:
        taker.close()


def test_memory_above_waits_for_a_v1_usage_threshold(cgroups: CgroupSandbox):
    cgroups.mkdir("t", memory_limit=64 << 20)
    cgroups.mkdir("v2only", hierarchies=("unified",))
    path = f"{cgroups.path}/t"
    needs = policy_needs(load_policy_text(f"""
rulesets:
  - name: size
    detectors:
      - name: g
        all:
          - memory_above: {{cgroup: "{path},{cgroups.path}/v2only", threshold: 48M, duration: 0}}
    actions:
      - continue: {{}}
""", "t.yaml"))
    taker, poller = new_taker()
    try:
        taker.use(needs)
        taker.take(generation=1)
        assert taker.watch.mechanism(path, "usage") == "usage threshold"
        assert taker.watch.mechanism(f"{cgroups.path}/v2only", "usage") is None  # cgroup2: read each tick
        cgroups.thrasher("t")
        assert wait_for_events(taker, poller) >= 1
        (st,) = [s for s in taker.take(generation=1).cgroups if s.path == path]
        assert st.threshold_events >= 1
        assert st.usage >= 40 << 20
    finally:
        taker.close()


def test_many_cgroups_under_one_parent_are_watched_through_the_parent(cgroups: CgroupSandbox):
    """Past AGGREGATE_ABOVE matches, one PSI trigger on the pattern's parent wakes the collector for any of them
    (its 'some' stall includes every task below it), and a thrasher in one child still brings an event."""
    from workers.collector import AGGREGATE_ABOVE

    for i in range(AGGREGATE_ABOVE + 4):
        cgroups.mkdir(f"c{i}", memory_limit=64 << 20)
    taker, poller = new_taker()
    try:
        taker.use(needs_for(f"{cgroups.path}/*"))
        taker.take(generation=1)
        watched = [path for path, _ in taker.watch.watched]
        assert watched == [cgroups.path] and taker.watch.mechanism(cgroups.path, "pressure") == "psi"
        cgroups.thrasher("c3")
        assert wait_for_events(taker, poller) >= 1
    finally:
        taker.close()
