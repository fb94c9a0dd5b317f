"""oomd's kill actions ranked on synthetic snapshots (v1- and v2-shaped), kill preferences, recursion and the
arguments that reach the command. Pure: no I/O."""

from __future__ import annotations

import signal

import pytest

from cgroupfs.stats import CgroupStats, HostStats, Pressure
from ipc.messages import KillCommand, Snapshot
from policy.engine import Engine, policy_needs
from policy.loader import PolicyInvalid, load_policy_text
from policy.plugins.actions import RECURSIVE_DEPTH

MB = 1 << 20
GB = 1 << 30


def psi(avg10: float, avg60: float = 0.0) -> Pressure:
    return Pressure(some_avg10=avg10, some_avg60=avg60, some_avg300=0, some_total=0,
                    full_avg10=avg10, full_avg60=avg60, full_avg300=1.5, full_total=0)


def cg(path: str, usage_mb: float = 10, procs: int = 1, **kw) -> CgroupStats:
    return CgroupStats(path=path, inode=hash(path) & 0xFFFF, usage=int(usage_mb * MB), nr_procs=procs, **kw)


def snap(cgroups: list[CgroupStats], seq: int = 1, swap_total: int = 4 * GB) -> Snapshot:
    return Snapshot(seq=seq, generation=1, time=1000.0 + seq, monotonic=float(seq),
                    host=HostStats(mem_total=16 * GB, mem_available=8 * GB, swap_total=swap_total, swap_free=0),
                    cgroups=cgroups)


def policy(action: str, *more: str) -> str:
    actions = "\n".join(f"      - {a}" for a in (action, *more))
    return f"""
rulesets:
  - name: rs
    detectors:
      - name: always
        all: [continue: {{}}]
    actions:
{actions}
"""


def engine(action: str, *more: str, protected: frozenset[str] = frozenset()) -> Engine:
    return Engine(load_policy_text(policy(action, *more), "t.yaml"), generation=1, dry_run=False,
                  dry_run_source="default", protected=protected)


def decide(e: Engine, *snapshots: list[CgroupStats], swap_total: int = 4 * GB) -> KillCommand | None:
    """Tick through the snapshots (one second apart); the command of the last tick, if any."""
    commands: list[KillCommand] = []
    for seq, cgroups in enumerate(snapshots, start=1):
        commands = e.tick(snap(cgroups, seq, swap_total), now=float(seq)).commands
    assert len(commands) <= 1
    return commands[0] if commands else None


def order(cmd: KillCommand | None) -> list[str]:
    assert cmd is not None, "no command"
    return [c.path for c in cmd.candidates]


# ---- kill_by_swap_usage --------------------------------------------------------------------------------------


def test_swap_usage_ranks_by_swap_above_the_default_threshold_of_one_byte():
    e = engine('kill_by_swap_usage: {cgroup: "p/*"}')
    cmd = decide(e, [cg("/p/a", 900, swap_usage=10 * MB), cg("/p/b", 10, swap_usage=300 * MB),
                     cg("/p/none", 2000, swap_usage=0)])
    assert order(cmd) == ["/p/b", "/p/a"]  # no swap at all: never a candidate
    assert "300 MB of swap" in cmd.candidates[0].why


def test_swap_threshold_is_a_size_or_a_percentage_of_swap_total():
    cgroups = [cg("/p/a", swap_usage=150 * MB), cg("/p/b", swap_usage=500 * MB)]
    assert order(decide(engine('kill_by_swap_usage: {cgroup: "p/*", threshold: 200}'), cgroups)) == ["/p/b"]
    # 5% of 4 GiB of swap is 204.8 MB; 10% of 1 GiB is 102.4 MB
    assert order(decide(engine('kill_by_swap_usage: {cgroup: "p/*", threshold: "5%"}'), cgroups)) == ["/p/b"]
    assert order(decide(engine('kill_by_swap_usage: {cgroup: "p/*", threshold: "10%"}'), cgroups,
                        swap_total=GB)) == ["/p/b", "/p/a"]
    assert decide(engine('kill_by_swap_usage: {cgroup: "p/*", threshold: 1G}'), cgroups) is None


def test_swap_usage_on_v1_without_swap_accounting_picks_nothing_and_lets_the_chain_go_on():
    e = engine('kill_by_swap_usage: {cgroup: "p/*"}', 'kill_by_memory_size_or_growth: {cgroup: "p/*"}')
    cmd = decide(e, [cg("/p/a", 100), cg("/p/b", 300)])  # v1-shaped: swap_usage None
    assert cmd is not None and cmd.plugin == "kill_by_memory_size_or_growth"


def test_biased_swap_kill_discounts_swap_the_protection_entitles_to():
    # swap/mem ratio 4G/16G = 0.25: /p/a's 800 MB of protection entitles it to 200 MB of swap.
    cgroups = [cg("/p/a", swap_usage=300 * MB, protection=800 * MB), cg("/p/b", swap_usage=150 * MB, protection=0)]
    assert order(decide(engine('kill_by_swap_usage: {cgroup: "p/*"}'), cgroups)) == ["/p/a", "/p/b"]
    biased = decide(engine('kill_by_swap_usage: {cgroup: "p/*", biased_swap_kill: true}'), cgroups)
    assert order(biased) == ["/p/b", "/p/a"]


# ---- kill_by_pressure ----------------------------------------------------------------------------------------


def test_pressure_ranks_by_the_mean_of_full_avg10_and_avg60_v2():
    e = engine('kill_by_pressure: {cgroup: "p/*", resource: memory}')
    cmd = decide(e, [cg("/p/spiky", pressure=psi(60, 0)), cg("/p/steady", pressure=psi(35, 35)),
                     cg("/p/calm", 5000, pressure=psi(1, 1))])
    assert order(cmd) == ["/p/steady", "/p/spiky", "/p/calm"]  # 35 > 30 > 1; size does not matter
    assert "memory pressure full avg10 35.00" in cmd.candidates[0].why


def test_io_pressure_ranks_by_io_psi():
    e = engine('kill_by_pressure: {cgroup: "p/*", resource: io}')
    cmd = decide(e, [cg("/p/a", io_pressure=psi(5, 5), pressure=psi(90, 90)), cg("/p/b", io_pressure=psi(40, 20))])
    assert order(cmd) == ["/p/b", "/p/a"]


def test_pressure_needs_the_resource_argument():
    with pytest.raises(PolicyInvalid, match="resource"):
        engine('kill_by_pressure: {cgroup: "p/*"}')


def test_pressure_on_v1_ranks_by_refault_rate_after_a_second_snapshot():
    e = engine('kill_by_pressure: {cgroup: "p/*", resource: memory}')
    first = [cg("/p/a", workingset_refault=1000), cg("/p/b", workingset_refault=1000)]
    assert decide(e, first) is None  # no per-cgroup PSI, and no rate yet: waits
    cmd = decide(e, first, [cg("/p/a", workingset_refault=1100), cg("/p/b", workingset_refault=9000)])
    assert order(cmd) == ["/p/b", "/p/a"]
    assert "8000 refaults/s standing in" in cmd.candidates[0].why


# ---- kill_by_pg_scan -----------------------------------------------------------------------------------------


def test_pg_scan_waits_for_a_rate_then_ranks_scanned_cgroups_only_v2():
    e = engine('kill_by_pg_scan: {cgroup: "p/*"}', 'kill_by_memory_size_or_growth: {cgroup: "p/*"}')
    tick1 = [cg("/p/a", pgscan=100), cg("/p/b", pgscan=100), cg("/p/idle", 9000, pgscan=5)]
    assert decide(e, tick1) is None  # waits, and does not fall through to the next action either
    cmd = decide(e, tick1, [cg("/p/a", pgscan=300), cg("/p/b", pgscan=5000), cg("/p/idle", 9000, pgscan=5)])
    assert cmd is not None and cmd.plugin == "kill_by_pg_scan"
    assert order(cmd) == ["/p/b", "/p/a"]
    assert "4900 pgscan/s" in cmd.candidates[0].why


def test_pg_scan_on_v1_stands_in_refaults():
    e = engine('kill_by_pg_scan: {cgroup: "p/*"}')
    cmd = decide(e, [cg("/p/a", workingset_refault=0), cg("/p/b", workingset_refault=0)],
                 [cg("/p/a", workingset_refault=700), cg("/p/b", workingset_refault=50)])
    assert order(cmd) == ["/p/a", "/p/b"]
    assert "v1 stand-in for pgscan" in cmd.candidates[0].why


def test_pg_scan_with_no_counter_on_the_host_lets_the_chain_go_on():
    e = engine('kill_by_pg_scan: {cgroup: "p/*"}', 'kill_by_memory_size_or_growth: {cgroup: "p/*"}')
    cmd = decide(e, [cg("/p/a", 100), cg("/p/b", 300)])
    assert cmd is not None and cmd.plugin == "kill_by_memory_size_or_growth"


# ---- kill_by_io_cost -----------------------------------------------------------------------------------------


def test_io_cost_is_bytes_plus_4096_per_operation_per_second():
    e = engine('kill_by_io_cost: {cgroup: "p/*"}')
    tick1 = [cg("/p/bulk", io_bytes=0, io_ops=0), cg("/p/seeky", io_bytes=0, io_ops=0)]
    assert decide(e, tick1) is None  # waits for a rate
    # bulk: 40 MB/s in 10 ops; seeky: 4 MB/s in 20000 ops = 4 MB + 78 MB of op cost
    cmd = decide(e, tick1, [cg("/p/bulk", io_bytes=40 * MB, io_ops=10), cg("/p/seeky", io_bytes=4 * MB, io_ops=20000)])
    assert order(cmd) == ["/p/seeky", "/p/bulk"]
    assert "io cost 82.1 MB/s" in cmd.candidates[0].why


# ---- kill preferences ----------------------------------------------------------------------------------------


SIZES = [cg("/p/big", 500), cg("/p/mid", 300), cg("/p/small", 10)]


def with_xattrs(cgroups: list[CgroupStats], marks: dict[str, dict[str, str]]) -> list[CgroupStats]:
    return [CgroupStats(**{**{f: getattr(c, f) for f in c.__struct_fields__}, "xattrs": marks.get(c.path, {})})
            for c in cgroups]


@pytest.mark.parametrize("prefer", ["trusted.oomd_prefer", "user.oomd_prefer"])
def test_prefer_xattr_goes_before_everything(prefer):
    cmd = decide(engine('kill_by_memory_size_or_growth: {cgroup: "p/*"}'),
                 with_xattrs(SIZES, {"/p/small": {prefer: "1"}}))
    assert order(cmd) == ["/p/small", "/p/big", "/p/mid"]
    assert f"preferred (xattr {prefer})" in cmd.candidates[0].why


@pytest.mark.parametrize("avoid", ["trusted.oomd_avoid", "user.oomd_avoid"])
def test_avoid_xattr_goes_after_everything(avoid):
    cmd = decide(engine('kill_by_memory_size_or_growth: {cgroup: "p/*"}'), with_xattrs(SIZES, {"/p/big": {avoid: ""}}))
    assert order(cmd) == ["/p/mid", "/p/small", "/p/big"]


def test_both_prefer_and_avoid_is_prefer_and_preferred_ones_keep_the_plugins_order():
    marks = {"/p/small": {"trusted.oomd_prefer": "", "trusted.oomd_avoid": ""}, "/p/mid": {"user.oomd_prefer": "1"}}
    cmd = decide(engine('kill_by_memory_size_or_growth: {cgroup: "p/*"}'), with_xattrs(SIZES, marks))
    assert order(cmd) == ["/p/mid", "/p/small", "/p/big"]


def test_systemd_omit_is_never_a_candidate_and_false_values_do_not_count():
    marks = {"/p/big": {"user.oomd_omit": "1"}, "/p/mid": {"user.oomd_avoid": "0"}}
    cmd = decide(engine('kill_by_memory_size_or_growth: {cgroup: "p/*"}'), with_xattrs(SIZES, marks))
    assert order(cmd) == ["/p/mid", "/p/small"]


def test_prefer_avoid_omit_arguments():
    cmd = decide(engine('kill_by_memory_size_or_growth: {cgroup: "p/*", prefer: "p/small", avoid: "p/big"}'), SIZES)
    assert order(cmd) == ["/p/small", "/p/mid", "/p/big"]
    assert "preferred (policy 'prefer')" in cmd.candidates[0].why
    assert "avoided (policy 'avoid')" in cmd.candidates[2].why
    cmd = decide(engine('kill_by_memory_size_or_growth: {cgroup: "p/*", omit: "p/b*,p/m*"}'), SIZES)
    assert order(cmd) == ["/p/small"]
    assert decide(engine('kill_by_memory_size_or_growth: {cgroup: "p/*", omit: "p"}'), SIZES) is None  # subtree


def test_preferences_filter_nothing_the_plugin_filtered_out():
    # oomd filters before sorting by preference: a preferred cgroup without swap is still no swap candidate.
    cgroups = with_xattrs([cg("/p/a", swap_usage=0), cg("/p/b", swap_usage=MB)], {"/p/a": {"trusted.oomd_prefer": ""}})
    assert order(decide(engine('kill_by_swap_usage: {cgroup: "p/*"}'), cgroups)) == ["/p/b"]


def test_every_kill_plugin_reads_xattrs():
    for action in ('kill_by_memory_size_or_growth: {cgroup: "p/*"}', 'kill_by_swap_usage: {cgroup: "p/*"}',
                   'kill_by_pressure: {cgroup: "p/*", resource: io}', 'kill_by_pg_scan: {cgroup: "p/*"}',
                   'kill_by_io_cost: {cgroup: "p/*"}'):
        needs = policy_needs(load_policy_text(policy(action), "t.yaml"))
        # Every tick where the ranking has history (growth, rates), else in the full snapshot it acts on.
        assert "xattrs" in needs.fields | needs.action_fields, action
        assert "tree" in needs.fields | needs.action_fields, action


def test_actions_without_history_are_read_only_for_the_snapshot_they_act_on():
    needs = policy_needs(load_policy_text(policy('kill_by_swap_usage: {cgroup: "p/*"}'), "t.yaml"))
    assert needs.action_cgroups == ("/p/*",) and {"swap", "memory", "tree", "xattrs"} <= needs.action_fields
    assert "/p/*" not in needs.cgroups
    growth = policy_needs(load_policy_text(policy('kill_by_memory_size_or_growth: {cgroup: "p/*"}'), "t.yaml"))
    assert "/p/*" in growth.cgroups and growth.action_cgroups == ()  # its growth rate needs every tick


# ---- recursive -----------------------------------------------------------------------------------------------


TREE = [
    cg("/w", 1000), cg("/w/a", 600), cg("/w/a/x", 100), cg("/w/a/y", 500), cg("/w/b", 400), cg("/w/b/z", 400),
    cg("/w/a/y/deep", 500), cg("/w/a/empty", 0, procs=0), cg("/v", 300),
]


def test_recursive_walks_down_to_the_best_leaf_and_backtracks_in_order():
    cmd = decide(engine('kill_by_memory_size_or_growth: {cgroup: "w,v", recursive: true}'), TREE)
    # /w beats /v; in /w, /w/a beats /w/b; in /w/a, /w/a/y beats /w/a/x; /w/a/y has one child, a leaf.
    assert order(cmd) == ["/w/a/y/deep", "/w/a/x", "/w/b/z", "/v"]
    assert "walked down from /w" in cmd.candidates[0].why


def test_recursive_compares_siblings_with_preferences_at_each_level():
    marks = {"/w/b": {"trusted.oomd_prefer": ""}, "/w/a/y": {"user.oomd_omit": "1"}}
    cmd = decide(engine('kill_by_memory_size_or_growth: {cgroup: "w", recursive: true}'), with_xattrs(TREE, marks))
    assert order(cmd) == ["/w/b/z", "/w/a/x"]  # omitted /w/a/y is not gone into either


def test_recursive_goes_through_protected_ancestors_but_never_picks_them():
    e = engine('kill_by_memory_size_or_growth: {cgroup: "w", recursive: true}',
               protected=frozenset({"/w", "/w/a", "/w/a/y", "/w/a/y/deep"}))
    assert order(decide(e, TREE)) == ["/w/a/x", "/w/b/z"]


def test_recursive_reads_and_allows_descendants_to_a_fixed_depth():
    needs = policy_needs(load_policy_text(policy('kill_by_pressure: {cgroup: "w", resource: memory, recursive: true}'),
                                          "t.yaml"))
    assert needs.action_cgroups[:3] == ("/w", "/w/*", "/w/*/*")  # read for the snapshot it acts on
    assert len(needs.action_cgroups) == 1 + RECURSIVE_DEPTH


# ---- what reaches the command --------------------------------------------------------------------------------


def test_signal_target_and_reap_memory_reach_the_command():
    cmd = decide(engine('kill_by_memory_size_or_growth: {cgroup: "p/*", signal: SIGTERM, '
                        'target: largest_process, reap_memory: false}'), SIZES)
    assert cmd is not None
    assert (cmd.signal, cmd.target, cmd.reap_memory) == (int(signal.SIGTERM), "largest_process", False)
    default = decide(engine('kill_by_memory_size_or_growth: {cgroup: "p/*"}'), SIZES)
    assert default is not None and (default.signal, default.target) == (int(signal.SIGKILL), "cgroup")


def test_candidates_carry_their_pressure_for_the_kill_line():
    cmd = decide(engine('kill_by_pressure: {cgroup: "p/*", resource: memory}'), [cg("/p/a", pressure=psi(20, 10))])
    assert cmd is not None and cmd.candidates[0].pressure == [20.0, 10.0, 1.5]


@pytest.mark.parametrize(("args", "message"), [
    ("signal: SIGSTOP", "does not end a process"),
    ("signal: SIGTERM, grace: 2s", "with 'grace'"),
    ("signal: SIGNOPE", "unknown signal"),
    ("target: pid", "not one of cgroup, largest_process"),
])
def test_bad_kill_arguments_are_refused(args, message):
    with pytest.raises(PolicyInvalid, match=message):
        engine(f'kill_by_memory_size_or_growth: {{cgroup: "p/*", {args}}}')
