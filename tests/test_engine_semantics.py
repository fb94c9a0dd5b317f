"""oomd's engine semantics beyond the basics (tests/test_engine.py): each case is a point of docs/engine.md."""

from __future__ import annotations

import logging

from cgroupfs.stats import CgroupStats
from policy.engine import Engine, policy_needs
from policy.loader import load_policy_text
from policy.model import DetectorGroup, DropIn, DropInRuleset, PluginSpec
from policy.plugins.base import Arg, Plugin, Ret, register
from tests.test_engine import CHILDREN, MB, cg, snap

CALLS: list[str] = []


@register
class Flaky(Plugin):
    """Test-only: raises when told to."""

    name = "test_flaky"
    kinds = frozenset({"detector", "action"})
    args = (Arg("fail", "bool", True), Arg("tag", "string", "flaky"))
    fail: bool
    tag: str

    def run(self, ctx) -> Ret:
        CALLS.append(self.tag)
        if self.fail:
            raise RuntimeError("boom")
        return Ret.CONTINUE


@register
class TwoStep(Plugin):
    """Test-only action: ASYNC_PAUSED once, then CONTINUE (an action that needs two ticks)."""

    name = "test_two_step"
    kinds = frozenset({"action"})

    def __init__(self, values, ruleset) -> None:
        super().__init__(values, ruleset)
        self.runs = 0

    def run(self, ctx) -> Ret:
        self.runs += 1
        CALLS.append(f"two_step:{self.runs}")
        return Ret.ASYNC_PAUSED if self.runs == 1 else Ret.CONTINUE


@register
class Record(Plugin):
    """Test-only action: records the ruleset and ruleset cgroup it ran for, and CONTINUEs."""

    name = "test_record"
    kinds = frozenset({"action"})
    args = (Arg("tag", "string", "record"),)
    tag: str

    def run(self, ctx) -> Ret:
        CALLS.append(f"{self.tag}:{ctx.ruleset}:{ctx.ruleset_cgroup}")
        return Ret.CONTINUE


def engine(yaml: str, drop_ins: list[DropIn] | None = None, previous: Engine | None = None) -> Engine:
    policy = load_policy_text(yaml, "t.yaml")
    if drop_ins:
        import msgspec

        policy = msgspec.structs.replace(policy, drop_ins=drop_ins)
    return Engine(policy, generation=1, dry_run=False, dry_run_source="default", protected=frozenset(),
                  previous=previous)


ALWAYS = """
rulesets:
  - name: base
    post_action_delay: 0
{extra}
    detectors:
      - name: always
        all:
          - continue: {{}}
    actions:
      - test_record: {{tag: base}}
"""


def test_async_paused_action_runs_again_next_tick_then_the_chain_goes_on():
    CALLS.clear()
    e = engine("""
rulesets:
  - name: r
    post_action_delay: 0
    detectors: [{name: g, all: [continue: {}]}]
    actions:
      - test_two_step: {}
      - test_record: {tag: after}
""")
    e.tick(snap([]), 0.0)
    assert CALLS == ["two_step:1"]
    e.tick(snap([]), 1.0)
    assert CALLS == ["two_step:1", "two_step:2", "after:r:None"]


def test_any_action_that_stops_pauses_the_rulesets_actions_but_not_its_detectors():
    CALLS.clear()
    e = engine("""
rulesets:
  - name: r
    post_action_delay: 10
    detectors: [{name: g, all: [test_flaky: {fail: false, tag: det}]}]
    actions:
      - test_record: {tag: act}
      - stop: {}
""")
    for t in (0.0, 5.0, 9.9, 10.1):
        e.tick(snap([]), t)
    assert CALLS == ["det", "act:r:None", "det", "det", "det", "act:r:None"]


def test_a_plugin_that_raises_is_isolated_then_its_ruleset_disabled(caplog):
    CALLS.clear()
    e = engine("""
rulesets:
  - name: broken
    detectors: [{name: g, all: [test_flaky: {tag: broken}]}]
    actions: [continue: {}]
  - name: healthy
    post_action_delay: 0
    detectors: [{name: g, all: [continue: {}]}]
    actions: [test_record: {tag: healthy}]
""")
    with caplog.at_level(logging.ERROR, logger="pyoomd.engine"):
        outcomes = [e.tick(snap([]), float(t)) for t in range(5)]
    assert CALLS.count("broken") == 3  # disabled after three failing ticks in a row
    assert CALLS.count("healthy:healthy:None") == 5  # the other ruleset never noticed
    assert caplog.text.count("plugin test_flaky raised RuntimeError") == 1  # logged once
    assert outcomes[2].disabled and outcomes[2].disabled[0][0] == "broken"
    assert ("broken", False) in [(name, enabled) for name, enabled, _, _ in e.status()]


def test_drop_in_copy_runs_before_its_base_newest_first_and_base_keeps_running():
    CALLS.clear()
    yaml = ALWAYS.format(extra="    drop_in: {actions: true}")
    older = DropIn(source="a.yaml", mtime_ns=1, rulesets=[
        DropInRuleset(name="base", actions=[PluginSpec("test_record", {"tag": "older"})])])
    newer = DropIn(source="b.yaml", mtime_ns=2, rulesets=[
        DropInRuleset(name="base", actions=[PluginSpec("test_record", {"tag": "newer"})])])
    e = engine(yaml, [older, newer])
    e.tick(snap([]), 0.0)
    assert [c.split(":")[0] for c in CALLS] == ["newer", "older", "base"]
    assert CALLS[0] == "newer:base [drop-in b.yaml]:None"


def test_disable_on_drop_in_rests_the_base_while_a_drop_in_targets_it():
    CALLS.clear()
    yaml = ALWAYS.format(extra="    drop_in: {actions: true, disable_on_drop_in: true}")
    d = DropIn(source="a.yaml", mtime_ns=1, rulesets=[
        DropInRuleset(name="base", actions=[PluginSpec("test_record", {"tag": "dropin"})])])
    engine(yaml, [d]).tick(snap([]), 0.0)
    assert [c.split(":")[0] for c in CALLS] == ["dropin"]
    CALLS.clear()
    engine(yaml).tick(snap([]), 0.0)  # the drop-in removed: the base runs again
    assert [c.split(":")[0] for c in CALLS] == ["base"]


def test_drop_in_keeps_what_it_does_not_replace_and_may_not_replace_what_the_base_forbids():
    CALLS.clear()
    yaml = ALWAYS.format(extra="    drop_in: {detectors: true}")
    never = [DetectorGroup("never", [PluginSpec("stop")])]
    d = DropIn(source="a.yaml", mtime_ns=1, rulesets=[DropInRuleset(name="base", detector_groups=never)])
    e = engine(yaml, [d])
    e.tick(snap([]), 0.0)
    assert [c.split(":")[0] for c in CALLS] == ["base"]  # the copy's detectors never fire; its actions are base's
    forbidden = DropIn(source="x.yaml", mtime_ns=3, rulesets=[
        DropInRuleset(name="base", actions=[PluginSpec("test_record", {"tag": "sneaky"})])])
    CALLS.clear()
    engine(yaml, [forbidden]).tick(snap([]), 0.0)
    assert [c.split(":")[0] for c in CALLS] == ["base"]  # actions were not open to drop-ins: ignored


def test_per_cgroup_ruleset_runs_once_per_matching_cgroup_with_the_xattr():
    CALLS.clear()
    e = engine("""
rulesets:
  - name: each
    cgroup: "workload.slice/*"
    xattr_filter: oomd_example
    post_action_delay: 0
    detectors: [{name: g, all: [continue: {}]}]
    actions: [test_record: {tag: each}]
""")
    cgroups = [
        CgroupStats(path="/workload.slice/a", inode=1, xattrs={"user.oomd_example": "1"}),
        CgroupStats(path="/workload.slice/b", inode=2, xattrs={"trusted.oomd_example": ""}),
        CgroupStats(path="/workload.slice/c", inode=3, xattrs={}),
    ]
    e.tick(snap(cgroups), 0.0)
    assert sorted(CALLS) == ["each:each @ /workload.slice/a:/workload.slice/a",
                             "each:each @ /workload.slice/b:/workload.slice/b"]
    assert "xattrs" in policy_needs(e.policy).fields
    assert "/workload.slice/*" in policy_needs(e.policy).cgroups


def test_ruleset_cgroup_arguments_are_relative_to_the_rulesets_cgroup():
    e = engine("""
rulesets:
  - name: each
    cgroup: "workload.slice/*"
    detectors:
      - name: big
        all:
          - memory_above: {ruleset_cgroup: "task", threshold: 100M, duration: 0}
    actions: [continue: {}]
""")
    cgroups = [
        CgroupStats(path="/workload.slice/a", inode=1), CgroupStats(path="/workload.slice/a/task", inode=2,
                                                                     usage=500 * MB),
        CgroupStats(path="/workload.slice/b", inode=3), CgroupStats(path="/workload.slice/b/task", inode=4,
                                                                     usage=10 * MB),
    ]
    out = e.tick(snap(cgroups), 0.0)
    assert out.fired == [("each @ /workload.slice/a", "big")]
    assert "/workload.slice/*/task" in policy_needs(e.policy).cgroups


def test_silence_logs_quiets_the_engine_for_that_ruleset_only(caplog):
    yaml = """
rulesets:
  - name: quiet
    silence_logs: [engine]
    detectors: [{name: g, all: [continue: {}]}]
    actions: [continue: {}]
  - name: loud
    detectors: [{name: g, all: [continue: {}]}]
    actions: [continue: {}]
"""
    with caplog.at_level(logging.INFO, logger="pyoomd.engine"):
        engine(yaml).tick(snap([]), 0.0)
    assert "ruleset 'loud' fired" in caplog.text
    assert "'quiet'" not in caplog.text


def test_reload_keeps_the_state_of_unchanged_rulesets_only():
    yaml = """
rulesets:
  - name: same
    detectors:
      - name: hot
        all: [pressure_above: {cgroup: p, resource: memory, threshold: 10, duration: 3}]
    actions: [continue: {}]
  - name: edited
    detectors:
      - name: hot
        all: [pressure_above: {cgroup: p, resource: memory, threshold: 10, duration: 3}]
    actions: [continue: {}]
"""
    hot = [cg("/p", 310, avg10=50), *CHILDREN]
    old = engine(yaml)
    old.tick(snap(hot), 0.0)
    old.tick(snap(hot), 2.0)
    head, tail = yaml.split("  - name: edited", 1)
    new = engine(head + "  - name: edited" + tail.replace("actions: [continue: {}]", "actions: [stop: {}]"),
                 previous=old)
    assert new.instances["same"] is old.instances["same"]
    assert new.instances["edited"] is not old.instances["edited"]
    out = new.tick(snap(hot), 3.0)
    assert [name for name, _ in out.fired] == ["same"]  # its 3 s window carried over; the edited one starts afresh
    assert new.history is old.history


def test_a_reload_that_only_spells_the_arguments_differently_keeps_the_state():
    """`duration: 3` and `duration: 3s` (or "3") are one duration: found by the soak, where such a reload threw the
    ruleset's window away."""
    yaml = """
rulesets:
  - name: rs
    detectors:
      - name: hot
        all: [pressure_above: {cgroup: p, resource: memory, threshold: 10, duration: 3}]
    actions: [continue: {}]
"""
    hot = [cg("/p", 310, avg10=50), *CHILDREN]
    old = engine(yaml)
    old.tick(snap(hot), 0.0)
    old.tick(snap(hot), 2.0)
    for spelling in ("duration: 3s", 'duration: "3"', "duration: 3000ms"):
        new = engine(yaml.replace("duration: 3", spelling), previous=old)
        assert new.instances["rs"] is old.instances["rs"], spelling
    changed = engine(yaml.replace("duration: 3", "duration: 4"), previous=old)
    assert changed.instances["rs"] is not old.instances["rs"]
    out = engine(yaml.replace("duration: 3", "duration: 3s"), previous=old).tick(snap(hot), 3.0)
    assert [name for name, _ in out.fired] == ["rs"]


def test_the_reload_diff_sees_through_spelling_too():
    from policy.loader import load_policy_text
    from supervisor.arbiter import describe_changes

    base = "rulesets:\n  - name: rs\n    detectors:\n      - name: g\n        all: [pressure_above: {cgroup: p, " \
           "resource: memory, threshold: 10, duration: 1}]\n    actions: [continue: {}]\n"
    a, b = load_policy_text(base, "a.yaml"), load_policy_text(base.replace("duration: 1", "duration: 1s"), "b.yaml")
    assert describe_changes(a, b) == "no change"
