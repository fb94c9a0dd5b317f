"""Detector plugins on synthetic snapshots shaped like each layout's data: v1 (no per-cgroup PSI, no pgscan, no
nr_dying_descendants, vmpressure events), hybrid (v1 memory figures, PSI from the cgroup2 twin) and v2."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from cgroupfs.stats import CgroupStats, HostStats, Pressure
from cgroupfs.watch import TriggerSpec
from ipc.messages import Snapshot
from policy.context import History, TickContext
from policy.engine import Engine, policy_needs
from policy.loader import load_policy_text
from policy.model import PluginSpec
from policy.plugins import REGISTRY, ArgError, Plugin, Ret, RulesetOptions, build_plugin

MB = 1 << 20
GB = 1 << 30
WALL = 1_700_000_000.0  # wall clock = WALL + monotonic in these snapshots, as one collector's two clocks


def psi(avg10: float, avg60: float = 0.0, avg300: float = 0.0) -> Pressure:
    return Pressure(some_avg10=avg10, some_avg60=avg60, some_avg300=avg300, some_total=0,
                    full_avg10=avg10, full_avg60=avg60, full_avg300=avg300, full_total=0)


def v2(path: str, **figures: Any) -> CgroupStats:
    """A cgroup2 cgroup: its own PSI, pgscan, cgroup.stat."""
    base: dict[str, Any] = dict(usage=100 * MB, pressure=psi(0), io_pressure=psi(0), pgscan=0, workingset_refault=0,
                                pgmajfault=0, nr_dying_descendants=0, oom_kills=0, nr_procs=1)
    return CgroupStats(path=path, inode=figures.pop("inode", 1), **(base | figures))


def v1(path: str, **figures: Any) -> CgroupStats:
    """A pure v1 cgroup: no PSI of its own, no pgscan, no nr_dying_descendants; vmpressure stands in."""
    base: dict[str, Any] = dict(usage=100 * MB, workingset_refault=0, pgmajfault=0, oom_kills=0, failcnt=0,
                                nr_procs=1)
    return CgroupStats(path=path, inode=figures.pop("inode", 1), **(base | figures))


def hybrid(path: str, **figures: Any) -> CgroupStats:
    """A hybrid host's cgroup: v1 memory figures, PSI from its verified cgroup2 twin (so no vmpressure)."""
    base: dict[str, Any] = dict(usage=100 * MB, pressure=psi(0), io_pressure=psi(0), workingset_refault=0,
                                pgmajfault=0, oom_kills=0, nr_procs=1)
    return CgroupStats(path=path, inode=figures.pop("inode", 1), **(base | figures))


def host(swap_total: int = 0, swap_free: int = 0) -> HostStats:
    return HostStats(mem_total=8 * GB, mem_available=4 * GB, swap_total=swap_total, swap_free=swap_free)


def make(name: str, **args: Any) -> Plugin:
    return build_plugin(PluginSpec(name=name, args=args), "detector",
                        RulesetOptions(name="rs", post_action_delay=10, interval=1))


class Run:
    """Runs one plugin as the engine does: history updated from each snapshot, then `run` at `now`."""

    def __init__(self, plugin: Plugin) -> None:
        self.plugin = plugin
        self.history = History()
        self.seq = 0

    def __call__(self, now: float, cgroups: list[CgroupStats], host_stats: HostStats | None = None,
                 ruleset_cgroup: str | None = None) -> Ret:
        self.seq += 1
        snapshot = Snapshot(seq=self.seq, generation=1, time=WALL + now, monotonic=now,
                            host=host_stats or host(), cgroups=cgroups)
        self.history.update(snapshot)
        ctx = TickContext(snapshot=snapshot, now=now, history=self.history, protected=frozenset(), generation=1,
                          dry_run=False, dry_run_source="default", ruleset_cgroup=ruleset_cgroup)
        return self.plugin.run(ctx)


def run(name: str, **args: Any) -> Run:
    return Run(make(name, **args))


def test_oomd_json_string_arguments_parse():
    # oomd's JSON passes every argument as a string.
    r = run("pressure_rising_beyond", cgroup="high_pressure", resource="memory", threshold="80", duration="0",
            fast_fall_ratio="0")
    assert r(0, [v2("/high_pressure", pressure=psi(99.99, 99.99, 99.99))]) == C
    assert run("nr_dying_descendants", cgroup="cg", count="100", lte="false", debug="true")(
        0, [v2("/cg", nr_dying_descendants=123)]) == C
    assert run("swap_free", threshold_pct="20")(0, [], host(1000, 100)) == C


def test_ruleset_cgroup_is_relative_to_the_rulesets_cgroup():
    plugin = build_plugin(PluginSpec(name="exists", args={"ruleset_cgroup": "cache.slice"}), "detector",
                          RulesetOptions(name="rs", post_action_delay=10, interval=1, cgroup=("/workload/*",)))
    assert plugin.needs().cgroups == ("/workload/*/cache.slice",)
    r = Run(plugin)
    cgs = [v2("/workload/a/cache.slice"), v2("/workload/b")]
    assert r(0, cgs, ruleset_cgroup="/workload/a") == C
    assert r(1, cgs, ruleset_cgroup="/workload/b") == S


C, S = Ret.CONTINUE, Ret.STOP


# ---- declarations: oomd's names, defaults and required arguments --------------------------------------------------


@pytest.mark.parametrize(("plugin", "arg", "default"), [
    ("pressure_rising_beyond", "fast_fall_ratio", 0.85),
    ("exists", "negate", False),
    ("nr_dying_descendants", "lte", True),
    ("nr_dying_descendants", "negate", False),
    ("dump_cgroup_overview", "always", False),
    ("swap_free", "swapout_bps_threshold", 0),
])
def test_defaults_are_oomds(plugin, arg, default):
    (decl,) = [a for a in REGISTRY[plugin].args if a.name == arg]
    assert decl.default == default and type(decl.default) is type(default)


@pytest.mark.parametrize(("plugin", "required"), [
    ("pressure_rising_beyond", {"resource", "threshold", "duration"}),
    ("pressure_above", {"resource", "threshold", "duration"}),
    ("memory_reclaim", {"duration"}),
    ("swap_free", {"threshold_pct"}),
    ("exists", set()),  # cgroup or ruleset_cgroup: checked in setup
    ("nr_dying_descendants", {"count"}),
    ("dump_cgroup_overview", set()),
    ("pressure_trigger", {"resource", "stall", "window"}),
    ("vmpressure", {"duration"}),
    ("oom_kills_rising", {"duration"}),
])
def test_required_arguments(plugin, required):
    cls = REGISTRY[plugin]
    assert {a.name for a in cls.args if a.required} == required
    assert cls.doc and all(a.doc for a in cls.args)


def test_every_cgroup_plugin_takes_cgroup_and_ruleset_cgroup_and_needs_one():
    for name in ("pressure_rising_beyond", "memory_reclaim", "exists", "nr_dying_descendants",
                 "dump_cgroup_overview", "pressure_trigger", "vmpressure", "oom_kills_rising"):
        assert {"cgroup", "ruleset_cgroup"} <= {a.name for a in REGISTRY[name].args}
    with pytest.raises(ArgError, match="missing required argument 'cgroup'"):
        make("exists")
    with pytest.raises(ArgError, match="missing required argument 'count'"):
        make("nr_dying_descendants", cgroup="a")


@pytest.mark.parametrize(("name", "args", "bad"), [
    ("pressure_above", {"cgroup": "a", "resource": "cpu", "threshold": 1, "duration": 0}, "resource"),
    ("pressure_rising_beyond", {"cgroup": "a", "resource": "swap", "threshold": 1, "duration": 0}, "resource"),
    ("pressure_rising_beyond", {"cgroup": "a", "resource": "io", "threshold": "x", "duration": 0}, "threshold"),
    ("nr_dying_descendants", {"cgroup": "a", "count": -1}, "count"),
    ("swap_free", {"threshold_pct": 101}, "threshold_pct"),
    ("swap_free", {"threshold_pct": 10, "swapout_bps_threshold": 1000000}, "swapout_bps_threshold"),
    ("pressure_trigger", {"cgroup": "a", "resource": "memory", "type": "most", "stall": "1s", "window": "2s"}, "type"),
    ("pressure_trigger", {"cgroup": "a", "resource": "memory", "stall": "100ms", "window": "100ms"}, "window"),
    ("pressure_trigger", {"cgroup": "a", "resource": "memory", "stall": "100ms", "window": "11s"}, "window"),
    ("pressure_trigger", {"cgroup": "a", "resource": "memory", "stall": "3s", "window": "2s"}, "stall"),
    ("pressure_trigger", {"cgroup": "a", "resource": "memory", "stall": 0, "window": "2s"}, "stall"),
    ("vmpressure", {"cgroup": "a", "level": "critical", "duration": 10}, "level"),
    ("vmpressure", {"cgroup": "a", "level": "severe", "duration": 10}, "level"),
    ("oom_kills_rising", {"cgroup": "a", "count": 0, "duration": 10}, "count"),
])
def test_bad_arguments_name_the_argument(name, args, bad):
    with pytest.raises(ArgError) as e:
        make(name, **args)
    assert e.value.arg == bad and e.value.at_value


def test_nr_dying_descendants_accepts_its_documented_negate():
    # oomd documents `negate` but its parser refuses it; pyoomd accepts it.
    assert make("nr_dying_descendants", cgroup="a", count=1, negate=True).negate is True  # type: ignore[attr-defined]


# ---- pressure_above -----------------------------------------------------------------------------------------------


def test_pressure_above_io_reads_io_pressure_only():
    r = run("pressure_above", cgroup="a", resource="io", threshold=20, duration=0)
    assert r(0, [v2("/a", io_pressure=psi(30), pressure=psi(0))]) == C
    assert r(1, [v2("/a", io_pressure=psi(10), pressure=psi(90))]) == S
    assert make("pressure_above", cgroup="a", resource="io", threshold=20, duration=0).needs().fields == {"io"}


def test_pressure_above_memory_needs_and_watch():
    needs = make("pressure_above", cgroup="a,b/*", resource="memory", threshold=20, duration=0).needs()
    assert needs.fields == {"pressure"}
    assert needs.pressure_watch == (("/a", 20.0), ("/b/*", 20.0))
    assert make("pressure_above", cgroup="a", resource="io", threshold=20, duration=0).needs().pressure_watch == ()


@pytest.mark.parametrize("resource", ["memory", "io"])
def test_pressure_above_without_per_cgroup_psi_stops(resource):
    r = run("pressure_above", cgroup="a", resource=resource, threshold=0, duration=0)
    assert r(0, [v1("/a")]) == S  # a pure v1 cgroup has no PSI: unknown is not "above"
    assert r(1, [hybrid("/a", pressure=psi(5), io_pressure=psi(5))]) == C  # the cgroup2 twin's PSI serves


def test_pressure_above_io_holds_for_duration():
    r = run("pressure_above", cgroup="a", resource="io", threshold=20, duration=2)
    hot = [v2("/a", io_pressure=psi(30))]
    assert [r(t, hot) for t in (0, 1, 2)] == [S, S, C]
    assert r(3, [v2("/a", io_pressure=psi(20))]) == S  # strictly above
    assert r(4, hot) == S


# ---- pressure_rising_beyond ---------------------------------------------------------------------------------------


def test_rising_beyond_first_reading_counts_as_falling_from_100_like_oomd():
    r = run("pressure_rising_beyond", cgroup="a", resource="memory", threshold=10, duration=0)
    assert r(0, [v2("/a", pressure=psi(50, 50))]) == S  # 50 < 100 x 0.85
    assert r(1, [v2("/a", pressure=psi(50, 50))]) == C
    # oomd's own test sets fast_fall_ratio 0 to fire on the first reading.
    r0 = run("pressure_rising_beyond", cgroup="a", resource="memory", threshold=80, duration=0, fast_fall_ratio=0)
    assert r0(0, [v2("/a", pressure=psi(99.99, 99.99, 99.99))]) == C


def test_rising_beyond_needs_60s_above_for_duration_and_10s_above():
    r = run("pressure_rising_beyond", cgroup="a", resource="memory", threshold=10, duration=3)
    steady = [v2("/a", pressure=psi(40, 20))]
    assert [r(t, steady) for t in (0, 1, 2, 3)] == [S, S, S, C]
    assert r(4, [v2("/a", pressure=psi(40, 10))]) == S  # the 60 s average at the threshold: not above, clock resets
    assert [r(t, steady) for t in (5, 6, 7, 8)] == [S, S, S, C]
    assert r(9, [v2("/a", pressure=psi(10, 30))]) == S  # 10 s not above, though the 60 s still is
    assert r(10, steady) == C  # the 60 s clock kept running


def test_rising_beyond_fast_fall_ratio():
    r = run("pressure_rising_beyond", cgroup="a", resource="memory", threshold=10, duration=0)
    r(0, [v2("/a", pressure=psi(60, 60))])
    assert r(1, [v2("/a", pressure=psi(52, 60))]) == C  # 52 >= 60 x 0.85 = 51
    assert r(2, [v2("/a", pressure=psi(40, 60))]) == S  # 40 < 52 x 0.85
    assert r(3, [v2("/a", pressure=psi(40, 60))]) == C  # levelled off
    slow = run("pressure_rising_beyond", cgroup="a", resource="memory", threshold=10, duration=0, fast_fall_ratio=0.5)
    slow(0, [v2("/a", pressure=psi(60, 60))])
    assert slow(1, [v2("/a", pressure=psi(31, 60))]) == C


def test_rising_beyond_follows_the_most_pressured_cgroup_and_io():
    r = run("pressure_rising_beyond", cgroup="p/*", resource="io", threshold=10, duration=0, fast_fall_ratio=0)
    cgs = [v2("/p/a", io_pressure=psi(5, 5, 5)), v2("/p/b", io_pressure=psi(30, 20, 1), pressure=psi(0))]
    assert r(0, cgs) == C
    assert make("pressure_rising_beyond", cgroup="a", resource="io", threshold=1, duration=0).needs().fields == {"io"}
    assert r(1, [v2("/p/b", io_pressure=psi(0), pressure=psi(90, 90))]) == S  # memory pressure is not io


def test_rising_beyond_on_v1_stops_and_reads_hybrid_twins():
    r = run("pressure_rising_beyond", cgroup="a", resource="memory", threshold=0, duration=0, fast_fall_ratio=0)
    assert r(0, [v1("/a")]) == S
    assert r(1, [hybrid("/a", pressure=psi(5, 5))]) == C


# ---- memory_reclaim -----------------------------------------------------------------------------------------------


def test_memory_reclaim_v2_pgscan_within_duration():
    r = run("memory_reclaim", cgroup="a", duration=5)
    # A non-zero counter on first sight says nothing about "recently" (oomd would count it: it starts from 0).
    assert r(0, [v2("/a", pgscan=1000)]) == S
    assert r(1, [v2("/a", pgscan=1000)]) == S
    assert r(2, [v2("/a", pgscan=1500)]) == C
    assert r(7, [v2("/a", pgscan=1500)]) == C  # 5 s since: still within
    assert r(7.5, [v2("/a", pgscan=1500)]) == S
    # v2 has pgscan: refaults alone do not count there.
    assert r(8, [v2("/a", pgscan=1500, workingset_refault=99)]) == S


def test_memory_reclaim_v1_stand_ins():
    r = run("memory_reclaim", cgroup="a", duration=0)
    assert r(0, [v1("/a", workingset_refault=10, pgmajfault=5)]) == S
    assert r(1, [v1("/a", workingset_refault=10, pgmajfault=50)]) == S  # refaults are the figure: majfaults ignored
    assert r(2, [v1("/a", workingset_refault=11, pgmajfault=50)]) == C
    old = run("memory_reclaim", cgroup="a", duration=0)  # a kernel without refault counters in memory.stat
    assert old(0, [v1("/a", workingset_refault=None, pgmajfault=5)]) == S
    assert old(1, [v1("/a", workingset_refault=None, pgmajfault=6)]) == C
    hy = run("memory_reclaim", cgroup="a", duration=0)
    assert hy(0, [hybrid("/a", workingset_refault=1)]) == S
    assert hy(1, [hybrid("/a", workingset_refault=2)]) == C


def test_memory_reclaim_any_cgroup_and_no_figure_stops():
    r = run("memory_reclaim", cgroup="p/*", duration=0)
    r(0, [v2("/p/a", pgscan=1), v2("/p/b", pgscan=1)])
    assert r(1, [v2("/p/a", pgscan=1), v2("/p/b", pgscan=2)]) == C
    bare = run("memory_reclaim", cgroup="a", duration=10)
    nothing = CgroupStats(path="/a", inode=1, usage=MB)  # e.g. the cgroup2 root: no reclaim counters read
    assert [bare(t, [nothing]) for t in (0, 1)] == [S, S]
    needs = make("memory_reclaim", cgroup="a", duration=1).needs()
    assert needs.fields == {"reclaim"} and needs.history


# ---- swap_free ----------------------------------------------------------------------------------------------------


def test_swap_free_below_threshold_pct():
    r = run("swap_free", threshold_pct=20)
    total = 20971512 * 1024
    assert r(0, [], host(total, total - 20971440 * 1024)) == C  # oomd's LowSwap
    assert r(1, [], host(total, total - 3310136 * 1024)) == S  # oomd's EnoughSwap
    assert r(2, [], host(1000, 200)) == S  # exactly 20%: not below
    assert r(3, [], host(1000, 199)) == C
    assert r(4, [], host(0, 0)) == S  # no swap at all: nothing is below a threshold of 0 (oomd's SwapOff)
    assert make("swap_free", threshold_pct="12.5").threshold_pct == 12.5  # type: ignore[attr-defined]


# ---- exists -------------------------------------------------------------------------------------------------------


def test_exists_and_negate_with_globs():
    cgs = [v1("/system.slice/a.service"), v2("/workload.slice")]
    assert run("exists", cgroup="system.slice/*")(0, cgs) == C
    assert run("exists", cgroup="nope.slice,workload.slice")(0, cgs) == C
    assert run("exists", cgroup="nope.slice/*")(0, cgs) == S
    assert run("exists", cgroup="nope.slice/*", negate=True)(0, cgs) == C
    assert run("exists", cgroup="system.slice/*", negate="true")(0, cgs) == S
    assert make("exists", cgroup="a,b/*").needs().cgroups == ("/a", "/b/*")


# ---- nr_dying_descendants -----------------------------------------------------------------------------------------


def test_nr_dying_descendants_lte_and_gt_like_oomds_tests():
    lte = run("nr_dying_descendants", cgroup="cg", count=100, lte=True)
    assert lte(0, [v2("/cg", nr_dying_descendants=123)]) == S
    assert lte(1, [v2("/cg", nr_dying_descendants=100)]) == C  # at most
    gt = run("nr_dying_descendants", cgroup="cg", count=100, lte=False)
    assert gt(0, [v2("/cg", nr_dying_descendants=123)]) == C
    assert gt(1, [v2("/cg", nr_dying_descendants=100)]) == S  # strictly more
    root = run("nr_dying_descendants", cgroup="/", count=29, lte=False)
    assert root(0, [v2("/", nr_dying_descendants=30)]) == C
    many = run("nr_dying_descendants", cgroup="above,above1,below", count=100)
    assert many(0, [v2("/above", nr_dying_descendants=200), v2("/above1", nr_dying_descendants=300),
                    v2("/below", nr_dying_descendants=90)]) == C  # any one is enough


def test_nr_dying_descendants_negate_and_missing_figure():
    neg = run("nr_dying_descendants", cgroup="cg", count=100, negate=True)
    assert neg(0, [v2("/cg", nr_dying_descendants=123)]) == C
    assert neg(1, [v2("/cg", nr_dying_descendants=90)]) == S
    for shape in (v1, hybrid):  # cgroup.stat is cgroup2's: no figure, and negate does not invent one
        assert run("nr_dying_descendants", cgroup="cg", count=100)(0, [shape("/cg")]) == S
        assert run("nr_dying_descendants", cgroup="cg", count=100, negate=True)(0, [shape("/cg")]) == S
    assert run("nr_dying_descendants", cgroup="cg", count=100, negate=True)(0, []) == S
    assert REGISTRY["nr_dying_descendants"].requires == {"v2"}


def test_nr_dying_descendants_debug_logs(caplog):
    caplog.set_level(logging.INFO, logger="pyoomd.plugins")
    run("nr_dying_descendants", cgroup="cg", count=100, debug=True)(0, [v2("/cg", nr_dying_descendants=7)])
    assert "nr_dying_descendants of /cg is 7 <= 100" in caplog.text


# ---- dump_cgroup_overview -----------------------------------------------------------------------------------------


def test_dump_cgroup_overview_logs_only_noticeable_pressure(caplog):
    caplog.set_level(logging.INFO, logger="pyoomd.plugins")
    r = run("dump_cgroup_overview", cgroup="p/*")
    cgs = [v2("/p/hot", pressure=psi(1, 0.5, 0.1), usage=300 * MB, pgscan=42), v2("/p/calm", pressure=psi(0.99, 5)),
           v2("/p/blip", pressure=psi(5, 0)), v1("/p/old")]
    assert r(0, cgs, host(2 * GB, GB)) == C
    lines = [rec.getMessage() for rec in caplog.records]
    assert lines == ["cgroup=/p/hot total=300MB pressure=1.00:0.50:0.10 swapfree=1024MB/2048MB pgscan=42 "
                     "workingset_refault=0 pgmajfault=0"]


def test_dump_cgroup_overview_always_and_v1_figures(caplog):
    caplog.set_level(logging.INFO, logger="pyoomd.plugins")
    r = run("dump_cgroup_overview", cgroup="a", always=True)
    assert r(0, [v1("/a", workingset_refault=7)]) == C
    (line,) = [rec.getMessage() for rec in caplog.records]
    assert "pressure=n/a" in line and "pgscan=n/a" in line and "workingset_refault=7" in line
    assert run("dump_cgroup_overview", cgroup="a")(0, []) == C  # nothing to show: still CONTINUE


# ---- pressure_trigger ---------------------------------------------------------------------------------------------


TRIGGER = TriggerSpec("memory", "some", 150_000, 2_000_000)


def trig(path: str, count: int | None, last_wall: float | None = None, shape=v2, **figures: Any) -> CgroupStats:
    triggers = None if count is None else {TRIGGER.key: count}
    last = None if last_wall is None else {TRIGGER.key: last_wall}
    return shape(path, triggers=triggers, trigger_last=last, **figures)


def test_pressure_trigger_declares_the_trigger_exactly():
    p = make("pressure_trigger", cgroup="a,b/*", resource="memory", type="some", stall="150ms", window="2s")
    assert p.needs().trigger_watch == (("/a", TRIGGER), ("/b/*", TRIGGER))
    assert TRIGGER.key == "memory some 150000/2000000"
    assert make("pressure_trigger", cgroup="a", resource="cpu", stall=1, window=1).type == "some"  # type: ignore[attr-defined]


def test_pressure_trigger_holds_for_one_window_after_each_firing():
    r = run("pressure_trigger", cgroup="a", resource="memory", stall="150ms", window="2s")
    assert r(0, [trig("/a", 0)]) == S  # watched, never fired
    assert r(1, [trig("/a", 1, WALL + 0.8)]) == C
    assert r(2.8, [trig("/a", 1, WALL + 0.8)]) == C  # exactly one window since the firing
    assert r(2.9, [trig("/a", 1, WALL + 0.8)]) == S
    assert r(3.5, [trig("/a", 2, WALL + 3.4)]) == C
    assert r(5.5, [trig("/a", 2, WALL + 3.4)]) == S


def test_pressure_trigger_firing_before_we_started_still_counts_if_recent():
    # After a policy reload the plugin is new but the collector's counts and times carry over.
    r = run("pressure_trigger", cgroup="a", resource="memory", stall="150ms", window="2s")
    assert r(10, [trig("/a", 5, WALL + 9.5)]) == C
    assert run("pressure_trigger", cgroup="a", resource="memory", stall="150ms", window="2s")(
        10, [trig("/a", 5, WALL + 7.0)]) == S


def test_pressure_trigger_without_firing_time_uses_the_rise_of_the_count():
    r = run("pressure_trigger", cgroup="a", resource="memory", stall="150ms", window="2s")
    assert r(0, [trig("/a", 3)]) == S  # old firings of unknown age
    assert r(1, [trig("/a", 4)]) == C
    assert r(3, [trig("/a", 4)]) == C
    assert r(3.1, [trig("/a", 4)]) == S
    assert r(4, [trig("/a", 1, inode=2)]) == S  # a new cgroup of that name: its count starts over


def test_pressure_trigger_without_psi_stops():
    r = run("pressure_trigger", cgroup="a", resource="memory", stall="150ms", window="2s")
    assert r(0, [trig("/a", None, shape=v1)]) == S  # v1: the collector could open no trigger
    assert r(1, [v2("/a")]) == S
    assert REGISTRY["pressure_trigger"].requires == {"per-cgroup psi"}


# ---- vmpressure ---------------------------------------------------------------------------------------------------


def test_vmpressure_counts_events_within_duration_on_v1():
    r = run("vmpressure", cgroup="a", count=3, duration=10)
    assert r(0, [v1("/a", vmpressure_events=50)]) == S  # what came before we looked is not "within"
    assert r(1, [v1("/a", vmpressure_events=52)]) == S
    assert r(2, [v1("/a", vmpressure_events=53)]) == C
    assert r(10, [v1("/a", vmpressure_events=53)]) == C  # baseline: the reading at t=0, 10 s ago
    assert r(11, [v1("/a", vmpressure_events=53)]) == S  # baseline t=1 (52): one event within the last 10 s
    assert r(13, [v1("/a", vmpressure_events=2, inode=9)]) == S  # recreated: starts over


def test_vmpressure_needs_and_other_layouts():
    p = make("vmpressure", cgroup="a", duration=10)
    assert p.level == "medium" and p.count == 1  # type: ignore[attr-defined]
    # The collector waits on vmpressure where there is no PSI; 100% never tightens another plugin's threshold.
    assert p.needs().pressure_watch == (("/a", 100.0),)
    for shape in (v2, hybrid):  # PSI is watched there instead: no vmpressure figure
        r = run("vmpressure", cgroup="a", duration=10)
        assert [r(t, [shape("/a", pressure_events=t)]) for t in range(3)] == [S, S, S]
    assert REGISTRY["vmpressure"].requires == {"v1"}


# ---- oom_kills_rising ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [v1, hybrid, v2])
def test_oom_kills_rising(shape):
    r = run("oom_kills_rising", cgroup="p/*", count=2, duration=60)
    assert r(0, [shape("/p/a", oom_kills=7), shape("/p/b", oom_kills=0)]) == S
    assert r(10, [shape("/p/a", oom_kills=8), shape("/p/b", oom_kills=0)]) == S
    assert r(20, [shape("/p/a", oom_kills=8), shape("/p/b", oom_kills=2)]) == C  # per cgroup, any of them
    assert r(90, [shape("/p/a", oom_kills=8), shape("/p/b", oom_kills=2)]) == S
    assert make("oom_kills_rising", cgroup="a", duration=1).needs().fields == {"oom"}


def test_oom_kills_rising_without_counter_stops():
    r = run("oom_kills_rising", cgroup="a", duration=60)
    assert [r(t, [v1("/a", oom_kills=None)]) for t in (0, 1)] == [S, S]  # v1 before 4.13


# ---- through the engine -------------------------------------------------------------------------------------------


POLICY = """
rulesets:
  - name: rs
    post_action_delay: 10
    detectors:
      - name: io_stalled
        all:
          - pressure_above: {cgroup: p, resource: io, threshold: 40, duration: 0}
          - exists: {cgroup: "p/*"}
      - name: triggered
        all:
          - pressure_trigger: {cgroup: p, resource: io, type: full, stall: 200ms, window: 1s}
          - oom_kills_rising: {cgroup: p, count: 1, duration: 30s}
    actions:
      - continue: {}
"""


def engine_snap(seq: int, cgroups: list[CgroupStats]) -> Snapshot:
    return Snapshot(seq=seq, generation=1, time=WALL + seq, monotonic=float(seq), host=host(), cgroups=cgroups)


def test_engine_runs_the_new_detectors_from_yaml():
    policy = load_policy_text(POLICY, "t.yaml")
    needs = policy_needs(policy)
    assert {"io", "oom"} <= needs.fields
    assert needs.trigger_watch == (("/p", TriggerSpec("io", "full", 200_000, 1_000_000)),)
    e = Engine(policy, generation=1, dry_run=False, dry_run_source="default", protected=frozenset())
    key = "io full 200000/1000000"
    calm = [v2("/p", io_pressure=psi(50), triggers={key: 0}), v2("/p/a")]
    assert e.tick(engine_snap(1, calm), 1.0).fired == [("rs", "io_stalled")]
    fired = [v2("/p", io_pressure=psi(5), oom_kills=1, triggers={key: 1}, trigger_last={key: WALL + 1.9}), v2("/p/a")]
    assert e.tick(engine_snap(2, fired), 2.0).fired == [("rs", "triggered")]
