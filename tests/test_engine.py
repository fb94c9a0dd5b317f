"""The engine's semantics (oomd's) and the kill ranking, on synthetic snapshots: pure, no I/O."""

from __future__ import annotations

import msgspec
import pytest

from cgroupfs.stats import CgroupStats, HostStats, Pressure
from ipc.messages import CommandResult, Snapshot
from policy.engine import Engine, policy_needs
from policy.loader import load_policy_text
from policy.plugins.base import Arg, Plugin, Ret, register

MB = 1 << 20
RUNS: dict[str, int] = {}


@register
class CountingDetector(Plugin):
    """Test-only detector: counts its runs; holds when its `holds` argument is true."""

    name = "test_counting"
    kinds = frozenset({"detector"})
    args = (Arg("key", "string"), Arg("holds", "bool", True))
    key: str
    holds: bool

    def run(self, ctx) -> Ret:
        RUNS[self.key] = RUNS.get(self.key, 0) + 1
        return Ret.CONTINUE if self.holds else Ret.STOP


def pressure(avg10: float) -> Pressure:
    return Pressure(some_avg10=avg10, some_avg60=0, some_avg300=0, some_total=0,
                    full_avg10=avg10, full_avg60=0, full_avg300=0, full_total=0)


def cg(path: str, usage_mb: float, avg10: float = 0.0, procs: int = 1, protection: int = 0) -> CgroupStats:
    return CgroupStats(path=path, inode=hash(path) & 0xFFFF, usage=int(usage_mb * MB), pressure=pressure(avg10),
                       nr_procs=procs, protection=protection)


def snap(cgroups: list[CgroupStats], seq: int = 1, mem_total: int = 1000 * MB) -> Snapshot:
    return Snapshot(seq=seq, generation=1, time=1000.0 + seq, monotonic=float(seq),
                    host=HostStats(mem_total=mem_total, mem_available=mem_total // 2, swap_total=0, swap_free=0),
                    cgroups=cgroups)


def engine_for(yaml: str, protected: frozenset[str] = frozenset(), dry_run: bool = False) -> Engine:
    policy = load_policy_text(yaml, "t.yaml")
    return Engine(policy, generation=1, dry_run=dry_run, dry_run_source="policy" if dry_run else "default",
                  protected=protected)


def ruleset(detectors: str, actions: str = '- kill_by_memory_size_or_growth: {cgroup: "p/*"}', delay: int = 10) -> str:
    return f"""
rulesets:
  - name: rs
    post_action_delay: {delay}
    detectors:
{detectors}
    actions:
      {actions}
"""


PRESSURE_GROUP = """      - name: hot
        all:
          - pressure_above: {cgroup: p, resource: memory, threshold: 10, duration: 2}
"""
CHILDREN = [cg("/p/big", 300), cg("/p/small", 10)]


def test_group_is_and_ruleset_is_or():
    e = engine_for(ruleset("""      - name: both
        all:
          - test_counting: {key: a1, holds: true}
          - test_counting: {key: a2, holds: false}
      - name: second
        all:
          - test_counting: {key: b1, holds: true}
""", actions="- continue: {}"))
    out = e.tick(snap([]), now=0.0)
    assert out.fired == [("rs", "second")]  # the first group fails because one of its detectors does


def test_every_detector_runs_every_tick_even_after_a_group_fired():
    RUNS.clear()
    e = engine_for(ruleset("""      - name: first
        all:
          - test_counting: {key: f}
      - name: later
        all:
          - test_counting: {key: l1, holds: false}
          - test_counting: {key: l2}
""", actions="- continue: {}"))
    for t in range(3):
        e.tick(snap([]), now=float(t))
    assert RUNS == {"f": 3, "l1": 3, "l2": 3}


def test_pressure_above_must_hold_for_duration_and_resets():
    e = engine_for(ruleset(PRESSURE_GROUP))
    hot = [cg("/p", 310, avg10=50), *CHILDREN]
    cold = [cg("/p", 310, avg10=5), *CHILDREN]
    assert e.tick(snap(hot), 0.0).commands == []
    assert e.tick(snap(hot), 1.0).commands == []
    assert e.tick(snap(cold), 1.5).commands == []  # dropped below: the clock restarts
    assert e.tick(snap(hot), 2.0).commands == []
    assert e.tick(snap(hot), 3.9).commands == []
    (cmd,) = e.tick(snap(hot), 4.0).commands
    assert cmd.candidates[0].path == "/p/big"


def test_pressure_above_is_strictly_above_full_avg10():
    e = engine_for(ruleset(PRESSURE_GROUP.replace("duration: 2", "duration: 0")))
    assert e.tick(snap([cg("/p", 1, avg10=10.0), *CHILDREN]), 0.0).commands == []
    assert e.tick(snap([cg("/p", 1, avg10=10.01), *CHILDREN]), 1.0).commands != []


def test_memory_above_percent_of_total_and_size():
    pct = engine_for(ruleset("""      - name: big
        all:
          - memory_above: {cgroup: "p/*", threshold: "25%", duration: 0}
""", actions="- continue: {}"))
    assert pct.tick(snap(CHILDREN, mem_total=2000 * MB), 0.0).fired == []  # 300 MB < 500 MB
    assert pct.tick(snap(CHILDREN, mem_total=1000 * MB), 1.0).fired == [("rs", "big")]  # 300 MB > 250 MB
    size = engine_for(ruleset("""      - name: big
        all:
          - memory_above: {cgroup: "p/*", threshold: 299, duration: 0}
""", actions="- continue: {}"))
    assert size.tick(snap(CHILDREN), 0.0).fired == [("rs", "big")]


def test_actions_run_in_order_and_stop_ends_the_chain():
    stopped = engine_for(ruleset(PRESSURE_GROUP.replace("duration: 2", "duration: 0"),
                                 actions='- stop: {}\n      - kill_by_memory_size_or_growth: {cgroup: "p/*"}'))
    assert stopped.tick(snap([cg("/p", 1, avg10=90), *CHILDREN]), 0.0).commands == []
    continued = engine_for(ruleset(PRESSURE_GROUP.replace("duration: 2", "duration: 0"),
                                   actions='- continue: {}\n      - kill_by_memory_size_or_growth: {cgroup: "p/*"}'))
    assert len(continued.tick(snap([cg("/p", 1, avg10=90), *CHILDREN]), 0.0).commands) == 1


def test_one_command_at_a_time_then_post_action_delay():
    e = engine_for(ruleset(PRESSURE_GROUP.replace("duration: 2", "duration: 0"), delay=10))
    hot = [cg("/p", 310, avg10=90), *CHILDREN]
    (cmd,) = e.tick(snap(hot), 0.0).commands
    assert cmd.ruleset == "rs" and cmd.group == "hot" and cmd.plugin == "kill_by_memory_size_or_growth"
    assert e.tick(snap(hot), 1.0).commands == []  # waiting for the actuator's answer
    assert e.on_result(CommandResult(id=cmd.id, status="killed", target="/p/big", pids=[1234]), now=1.5)
    assert e.tick(snap(hot), 2.0).commands == []
    assert e.tick(snap(hot), 11.4).commands == []  # paused until 1.5 + 10
    assert len(e.tick(snap(hot), 11.6).commands) == 1


def test_kill_action_post_action_delay_overrides_the_ruleset():
    e = engine_for(ruleset(PRESSURE_GROUP.replace("duration: 2", "duration: 0"), delay=100,
                           actions='- kill_by_memory_size_or_growth: {cgroup: "p/*", post_action_delay: 3}'))
    hot = [cg("/p", 310, avg10=90), *CHILDREN]
    (cmd,) = e.tick(snap(hot), 0.0).commands
    e.on_result(CommandResult(id=cmd.id, status="killed", target="/p/big", pids=[1]), now=0.0)
    assert e.tick(snap(hot), 2.9).commands == []
    assert len(e.tick(snap(hot), 3.1).commands) == 1


def test_nothing_killed_lets_the_chain_go_on_to_the_next_action():
    e = engine_for(ruleset(PRESSURE_GROUP.replace("duration: 2", "duration: 0"),
                           actions='- kill_by_memory_size_or_growth: {cgroup: "p/*"}\n'
                                   '      - kill_by_memory_size_or_growth: {cgroup: "q/*"}'))
    hot = [cg("/p", 310, avg10=90), *CHILDREN, cg("/q/other", 50)]
    (first,) = e.tick(snap(hot), 0.0).commands
    assert first.candidates[0].path.startswith("/p/")
    e.on_result(CommandResult(id=first.id, status="no-target", target=None, pids=[]), now=0.5)
    (second,) = e.tick(snap(hot), 1.0).commands
    assert second.candidates[0].path == "/q/other"


def test_unanswered_command_is_decided_again_not_replayed():
    e = engine_for(ruleset(PRESSURE_GROUP.replace("duration: 2", "duration: 0")))
    hot = [cg("/p", 310, avg10=90), *CHILDREN]
    (cmd,) = e.tick(snap(hot), 0.0).commands
    deadline = cmd.not_after + cmd.kill_timeout + 2.0
    assert e.tick(snap(hot), deadline - 0.1).commands == []
    (again,) = e.tick(snap(hot, seq=2), deadline + 0.1).commands
    assert again.id != cmd.id and again.snapshot_time == 1002.0
    assert not e.on_result(CommandResult(id=cmd.id, status="killed", target="/p/big", pids=[1]), now=deadline + 1)


def test_ranking_size_phase_first():
    e = engine_for(ruleset(PRESSURE_GROUP.replace("duration: 2", "duration: 0")))
    (cmd,) = e.tick(snap([cg("/p", 1, avg10=90), cg("/p/a", 100), cg("/p/b", 500), cg("/p/c", 200)]), 0.0).commands
    assert [c.path for c in cmd.candidates] == ["/p/b", "/p/c", "/p/a"]
    assert "above 50%" in cmd.candidates[0].why


def test_ranking_growth_phase_beats_plain_size():
    # Nothing is above 50% of the total, so the fastest grower among the largest half goes first, before /p/a,
    # which is larger but steady.
    policy = ruleset(PRESSURE_GROUP.replace("duration: 2", "duration: 0"),
                     actions='- kill_by_memory_size_or_growth: {cgroup: "p/*", growing_size_percentile: 50}')
    e = engine_for(policy)
    calm = [cg("/p", 1), cg("/p/a", 300), cg("/p/b", 250), cg("/p/c", 200), cg("/p/d", 10)]
    for t in range(20):
        e.tick(snap(calm), float(t))
    grown = [cg("/p", 1, avg10=90), cg("/p/a", 300), cg("/p/b", 250), cg("/p/c", 290), cg("/p/d", 10)]
    (cmd,) = e.tick(snap(grown), 21.0).commands
    assert [c.path for c in cmd.candidates] == ["/p/c", "/p/a", "/p/b", "/p/d"]
    assert "growing x1.30" in cmd.candidates[0].why


def test_protected_and_empty_cgroups_are_never_candidates():
    e = engine_for(ruleset(PRESSURE_GROUP.replace("duration: 2", "duration: 0"),
                           actions='- kill_by_memory_size_or_growth: {cgroup: "*,p/*,init.scope/*"}'),
                   protected=frozenset({"/p/daemon"}))
    cgroups = [cg("/p", 1, avg10=90), cg("/p/daemon", 900), cg("/p/empty", 800, procs=0), cg("/p/ok", 5),
               cg("/init.scope", 700), cg("/init.scope/x", 700)]
    (cmd,) = e.tick(snap(cgroups), 0.0).commands
    assert [c.path for c in cmd.candidates] == ["/p/ok", "/p"]


@pytest.mark.parametrize(("engine_dry", "plugin_dry", "expected"), [
    (False, "", (False, "default")),
    (True, "", (True, "policy")),
    (False, ", dry: true", (True, "plugin argument 'dry'")),
])
def test_dry_run_reaches_the_command(engine_dry, plugin_dry, expected):
    e = engine_for(ruleset(PRESSURE_GROUP.replace("duration: 2", "duration: 0"),
                           actions=f'- kill_by_memory_size_or_growth: {{cgroup: "p/*"{plugin_dry}}}'),
                   dry_run=engine_dry)
    (cmd,) = e.tick(snap([cg("/p", 1, avg10=90), *CHILDREN]), 0.0).commands
    assert (cmd.dry_run, cmd.dry_run_source) == expected


def test_grace_asks_for_sigterm_first_and_extends_the_kill_deadline():
    e = engine_for(ruleset(PRESSURE_GROUP.replace("duration: 2", "duration: 0"),
                           actions='- kill_by_memory_size_or_growth: {cgroup: "p/*", grace: 3s}'))
    (cmd,) = e.tick(snap([cg("/p", 1, avg10=90), *CHILDREN]), 0.0).commands
    assert cmd.grace == 3.0
    assert cmd.kill_timeout == 8.0


def test_needs_merge_what_plugins_declare():
    policy = load_policy_text(ruleset(PRESSURE_GROUP), "t.yaml")
    needs = policy_needs(policy)
    assert needs.cgroups == ("/p", "/p/*")
    assert needs.fields == {"memory", "pressure", "xattrs", "tree"}  # kill actions: preference xattrs, members
    assert needs.history is True
    assert needs.pressure_watch == (("/p", 10.0),)


def test_history_offers_per_second_rates_of_cumulative_counters():
    from policy.context import History

    def stats(refaults, pgscan=None, inode=7):
        return CgroupStats(path="/p/a", inode=inode, usage=MB, workingset_refault=refaults, pgscan=pgscan)

    h = History()
    first = Snapshot(seq=1, generation=1, time=0.0, monotonic=10.0, host=snap([]).host, cgroups=[stats(100)])
    h.update(first)
    assert h.rate(first.cgroups[0], "workingset_refault") is None  # first sight: no rate yet
    second = Snapshot(seq=2, generation=1, time=2.0, monotonic=12.0, host=first.host, cgroups=[stats(700)])
    h.update(second)
    assert h.rate(second.cgroups[0], "workingset_refault") == 300.0
    assert h.rate(second.cgroups[0], "pgscan") is None  # a v1 cgroup has no pgscan: no rate, not 0
    reborn = Snapshot(seq=3, generation=1, time=3.0, monotonic=13.0, host=first.host, cgroups=[stats(5, inode=8)])
    h.update(reborn)
    assert h.rate(reborn.cgroups[0], "workingset_refault") is None  # a new cgroup of the same name starts over
    # A tick's snapshot that leaves the counter out (only actions read it) keeps the last reading to pair with.
    h.update(Snapshot(seq=4, generation=1, time=4.0, monotonic=14.0, host=first.host, cgroups=[stats(None, inode=8)]))
    later = Snapshot(seq=5, generation=1, time=5.0, monotonic=15.0, host=first.host, cgroups=[stats(45, inode=8)])
    h.update(later)
    assert h.rate(later.cgroups[0], "workingset_refault") == 20.0  # (45 - 5) over the 2 s since that reading


def test_min_growth_ratio_is_a_real_number_not_oomds_truncated_integer():
    # oomd parses 1.25 as 1, so any growth >= 1 counts; pyoomd keeps 1.25 as documented.
    e = engine_for(ruleset(PRESSURE_GROUP.replace("duration: 2", "duration: 0"),
                           actions='- kill_by_memory_size_or_growth: {cgroup: "p/*", growing_size_percentile: 50}'))
    calm = [cg("/p", 1), cg("/p/a", 300), cg("/p/b", 250), cg("/p/c", 250), cg("/p/d", 10)]
    for t in range(20):
        e.tick(snap(calm), float(t))
    slightly = [cg("/p", 1, avg10=90), cg("/p/a", 300), cg("/p/b", 250), cg("/p/c", 290), cg("/p/d", 10)]
    (cmd,) = e.tick(snap(slightly), 21.0).commands
    assert cmd.candidates[0].path == "/p/a"  # /p/c grew x1.12: below 1.25, so size order stands


def test_a_runtime_pause_holds_the_actions_and_the_detectors_go_on():
    yaml = ruleset("""      - name: always
        all:
          - test_counting: {key: paused, holds: true}
""")
    policy = load_policy_text(yaml, "t.yaml")
    RUNS.pop("paused", None)
    e = Engine(policy, generation=1, dry_run=False, dry_run_source="default", protected=frozenset(),
               paused={"rs": 100.0})
    out = e.tick(snap([cg("/p", 400), *CHILDREN]), now=1.0)
    assert out.commands == [] and out.began == [("rs", "always")]  # it fires, but its actions wait
    assert RUNS["paused"] == 1
    (report,) = e.reports(now=1.0)
    assert report.paused_until == pytest.approx(100.0 + e.wall_offset, abs=0.01) and report.last_fired > 0
    after = e.tick(snap([cg("/p", 400), *CHILDREN], seq=2), now=101.0)
    assert [c.candidates[0].path for c in after.commands] == ["/p/big"] and after.began == []


def test_explain_gives_the_verdicts_and_the_ranking_without_running_anything_again():
    e = engine_for(ruleset(PRESSURE_GROUP))
    snapshot = snap([cg("/p", 400, avg10=50), *CHILDREN])
    e.tick(snapshot, now=1.0)
    before = e.history
    (explained,) = e.explain(snapshot, now=1.5)
    assert explained["ruleset"] == "rs" and explained["firing"] is False  # 2 s duration not yet held
    assert explained["groups"] == [{"group": "hot", "holds": False,
                                    "detectors": [{"detector": "pressure_above", "verdict": "no"}]}]
    (action,) = explained["actions"]
    assert [c["cgroup"] for c in action["candidates"]] == ["/p/big", "/p/small"]
    assert "300 MB" in action["candidates"][0]["why"]
    assert e.history is before and e.tick(snapshot, now=3.5).commands  # the windows were not disturbed


def test_a_ruleset_acts_only_on_a_full_snapshot_and_asks_for_one():
    """Kill actions' figures are read only for the snapshot they act on: on a tick's snapshot (detector figures
    only) the ruleset fires but asks for a full one, and acts on that."""
    yaml = ruleset("""      - name: always
        all:
          - test_counting: {key: full, holds: true}
""", actions='- kill_by_pressure: {cgroup: "p/*", resource: memory}')
    e = engine_for(yaml)
    assert e.instances["rs"].needs_full
    partial = msgspec.structs.replace(snap([cg("/p", 400)], seq=1), full=False)
    out = e.tick(partial, now=1.0)
    assert out.commands == [] and out.want_full and out.began == [("rs", "always")]
    full = snap([cg("/p", 400), *CHILDREN], seq=2)
    out = e.tick(full, now=1.1)
    assert [c.candidates[0].path for c in out.commands] == ["/p/big"] and not out.want_full
