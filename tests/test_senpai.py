"""senpai (oomd's memory.high autotuner) and the actuator's write path.

- The algorithm on synthetic snapshots, through the engine: probe, backoff, bounds, immediate_backoff, options.
- The actuator applying WriteCommands on a v2 fixture tree (a tmp copy of kernel samples), and refusing.
- On the real hybrid host: a write for a hybrid path is refused (no memory controller in cgroup2), writing nothing.
"""

from __future__ import annotations

import itertools
import logging
import os
import time
import uuid
from pathlib import Path

import msgspec
import pytest

from cgroupfs import CgroupFS, detect_layout
from cgroupfs.stats import CgroupStats, HostStats, Pressure
from ipc.codec import Channel
from ipc.messages import CommandMessage, PolicyUpdate, Snapshot, WriteCommand
from policy.engine import Engine
from policy.loader import PolicyInvalid, load_policy_text
from policy.plugins.senpai import Senpai
from tests.fixture_trees import SESSION_SCOPE, SYSTEM_SLICE, V2_SYSTEM_SLICE, sample_text, v2_host
from tests.realhost import CgroupSandbox
from workers.actuator import CommandExecutor

MB = 1 << 20
GB = 1 << 30
PAGE = ~0xFFF
PATH = "/workload.slice/app.service"
INODE = 4242


# ---- synthetic snapshots --------------------------------------------------------------------------------------


def psi(total_us: int = 0, avg10: float = 0.0, avg60: float = 0.0) -> Pressure:
    return Pressure(some_avg10=avg10, some_avg60=avg60, some_avg300=0.0, some_total=total_us)


def v2cg(path: str = PATH, *, usage: int = 2 * GB, file: int = 1500 * MB, anon: int = 400 * MB, shmem: int = 0,
         total_us: int = 0, protection: int = 0, limit: int | None = None, inode: int = INODE,
         io: Pressure | None = None, mem_avg: float = 0.0, swap_usage: int | None = None,
         swap_limit: int | None = None) -> CgroupStats:
    """A cgroup as the collector reads it from cgroup2 with the memory controller (protection is set)."""
    return CgroupStats(path=path, inode=inode, usage=usage, file=file, anon=anon, shmem=shmem, limit=limit,
                       protection=protection, pressure=psi(total_us, mem_avg, mem_avg), io_pressure=io,
                       swap_usage=swap_usage, swap_limit=swap_limit, nr_procs=3)


def snap(t: float, cgroups: list[CgroupStats], mem_total: int = 16 * GB, swap_total: int = 0,
         swap_free: int = 0) -> Snapshot:
    return Snapshot(seq=int(t * 10), generation=1, time=1_700_000_000.0 + t, monotonic=t,
                    host=HostStats(mem_total=mem_total, mem_available=mem_total // 2, swap_total=swap_total,
                                   swap_free=swap_free),
                    cgroups=cgroups)


def policy_text(args: str = "", cgroup: str = "workload.slice/*", extra_action: str = "") -> str:
    return f"""
rulesets:
  - name: tune
    detectors:
      - name: always
        all: [continue: {{}}]
    actions:
      - senpai: {{cgroup: "{cgroup}"{", " + args if args else ""}}}
{extra_action}"""


def engine(args: str = "", dry_run: bool = False, **kw: str) -> Engine:
    return Engine(load_policy_text(policy_text(args, **kw), "t.yaml"), generation=1, dry_run=dry_run,
                  dry_run_source="policy" if dry_run else "default", protected=frozenset())


def writes(e: Engine, s: Snapshot) -> list[WriteCommand]:
    out = e.tick(s, now=s.monotonic)
    assert all(isinstance(c, WriteCommand) for c in out.commands)
    return list(out.commands)  # type: ignore[arg-type]


def floor_of(cg: CgroupStats, limit_min: int = 100 * MB) -> int:
    """oomd's getLimitMinBytes without swap: limit_min_bytes above what is not file cache."""
    return limit_min + cg.usage - (cg.file - cg.shmem)  # type: ignore[operator]


def probe(limit: int, cumulative_us: int, pressure_ms: int = 10, coeff: float = 10, max_probe: float = 0.01) -> int:
    """oomd's probe step, restated: whole-number error = target // stall, squared over coeff, capped."""
    error = pressure_ms * 1000 // max(cumulative_us, 1)
    factor = min((error / coeff) ** 2 * max_probe, max_probe)
    return int(limit - limit * factor) & PAGE


def backoff(limit: int, cumulative_us: int, pressure_ms: int = 10, coeff: float = 20, max_backoff: float = 1.0) -> int:
    error = cumulative_us // (pressure_ms * 1000)
    factor = min((error / coeff) ** 2 * max_backoff, max_backoff)
    return int(limit + limit * factor) & PAGE


# ---- the default mode: memory.high ------------------------------------------------------------------------------


def test_first_tick_sets_memory_high_to_current_usage():
    e = engine()
    (cmd,) = writes(e, snap(0, [v2cg()]))
    assert (cmd.file, cmd.value, cmd.path, cmd.inode) == ("memory.high", str(2 * GB), PATH, INODE)
    assert (cmd.generation, cmd.ruleset, cmd.group, cmd.plugin) == (1, "tune", "always", "senpai")
    assert cmd.not_after == pytest.approx(0 + 1.0 + 0.5)  # the next tick, and half a second
    assert not cmd.dry_run
    # senpai always CONTINUEs and nobody waits for a write: the ruleset is not held up
    assert all(rs.pending is None and rs.paused_until == 0 for rs in e.rulesets)


def test_probes_down_every_interval_ticks_while_pressure_stays_low():
    e = engine()
    writes(e, snap(0, [v2cg()]))
    for t in range(1, 7):  # oomd counts `interval` (6) ticks down before it probes
        assert writes(e, snap(t, [v2cg()])) == []
    (cmd,) = writes(e, snap(7, [v2cg()]))
    expected = probe(2 * GB, 0)  # no stall at all: the full max_probe step, 1%
    assert int(cmd.value) == expected == int(2 * GB * 0.99) & PAGE
    assert [writes(e, snap(t, [v2cg()])) for t in range(8, 14)] == [[]] * 6
    (cmd,) = writes(e, snap(14, [v2cg()]))
    assert int(cmd.value) == probe(expected, 0)


def test_probe_step_shrinks_as_stalls_approach_the_target():
    e = engine()
    writes(e, snap(0, [v2cg(total_us=1_000_000)]))
    for t in range(1, 7):
        writes(e, snap(t, [v2cg(total_us=1_000_000 + 1000 * t)]))  # 1 ms a tick: 6 ms so far, under 10 ms
    (cmd,) = writes(e, snap(7, [v2cg(total_us=1_007_000)]))
    # 7 ms of stalls: error 10 // 7 = 1, factor (1/10)^2 x 0.01 = 0.0001
    assert int(cmd.value) == probe(2 * GB, 7000) == int(2 * GB * (1 - 0.0001)) & PAGE


def test_backs_off_at_once_when_stalls_reach_the_target():
    e = engine()
    writes(e, snap(0, [v2cg(total_us=500)]))
    (cmd,) = writes(e, snap(1, [v2cg(total_us=500 + 30_000)]))  # 30 ms stalled: error 3
    assert int(cmd.value) == backoff(2 * GB, 30_000) == int(2 * GB * (1 + (3 / 20) ** 2)) & PAGE
    # the stall count starts again after an adjustment, and the probe waits `interval` ticks again
    assert [writes(e, snap(t, [v2cg(total_us=30_500)])) for t in range(2, 8)] == [[]] * 6
    assert len(writes(e, snap(8, [v2cg(total_us=30_500)]))) == 1


def test_stalls_add_up_across_ticks_until_they_reach_the_target():
    e = engine()
    writes(e, snap(0, [v2cg(total_us=0)]))
    assert writes(e, snap(1, [v2cg(total_us=4000)])) == []
    assert writes(e, snap(2, [v2cg(total_us=8000)])) == []
    (cmd,) = writes(e, snap(3, [v2cg(total_us=12_000)]))  # 12 ms in all
    assert int(cmd.value) == backoff(2 * GB, 12_000)


def test_backoff_is_capped_at_max_backoff_and_by_the_ceiling():
    e = engine("max_backoff: 0.5")
    writes(e, snap(0, [v2cg(usage=1 * GB)]))
    (cmd,) = writes(e, snap(1, [v2cg(usage=1 * GB, total_us=10_000_000)]))  # 10 s stalled: far past coeff
    assert int(cmd.value) == int(1 * GB * 1.5) & PAGE
    capped = engine()
    writes(capped, snap(0, [v2cg(usage=1 * GB, limit=1200 * MB)]))
    (cmd,) = writes(capped, snap(1, [v2cg(usage=1 * GB, limit=1200 * MB, total_us=10_000_000)]))
    assert int(cmd.value) == 1200 * MB  # memory.max is the ceiling
    host = engine("limit_max_bytes: 104857600")
    writes(host, snap(0, [v2cg(usage=1 * GB)]))
    (cmd,) = writes(host, snap(1, [v2cg(usage=1 * GB, total_us=10_000_000)]))
    assert int(cmd.value) == 1 * GB + 100 * MB  # usage + limit_max_bytes


def test_probing_stops_at_the_floor_of_what_cannot_be_reclaimed():
    cg = v2cg(usage=1 * GB, file=300 * MB, anon=700 * MB)
    floor = floor_of(cg)  # 100 MB + (1 GB - 300 MB) = 824 MB
    e = engine("interval: 0, max_probe: 0.1")  # a probe every tick, 10% at a time
    values = [int(c.value) for t in range(0, 12) for c in writes(e, snap(t, [cg]))]
    assert values[0] == 1 * GB
    assert min(values) == floor & PAGE and values[-1] == floor & PAGE
    assert all(b <= a for a, b in itertools.pairwise(values))


def test_memory_protection_keeps_the_floor_up():
    cg = v2cg(usage=1 * GB, file=900 * MB, anon=100 * MB, protection=900 * MB)
    e = engine("interval: 0, max_probe: 1")
    values = [int(c.value) for t in range(0, 4) for c in writes(e, snap(t, [cg]))]
    assert values[-1] == 900 * MB  # not floor_of(cg) (224 MB): memory.min/low protect 900 MB


def test_swap_that_is_free_counts_anon_as_reclaimable():
    kw = dict(usage=1 * GB, file=200 * MB, anon=800 * MB)
    no_swap = engine("interval: 0, max_probe: 1")
    with_swap = engine("interval: 0, max_probe: 1")
    for t in range(3):
        last_plain = writes(no_swap, snap(t, [v2cg(**kw)]))
        last_swap = writes(with_swap, snap(t, [v2cg(**kw, swap_usage=0, swap_limit=300 * MB)],
                                          swap_total=4 * GB, swap_free=4 * GB))
    assert int(last_plain[0].value) == (100 * MB + 1024 * MB - 200 * MB) & PAGE
    # swap.max leaves 300 MB of swap to this cgroup: that much anon can go too
    assert int(last_swap[0].value) == (100 * MB + 1024 * MB - 200 * MB - 300 * MB) & PAGE


def test_a_small_cgroup_starts_at_the_floor_not_below_it():
    cg = v2cg(usage=20 * MB, file=10 * MB, anon=10 * MB)
    (cmd,) = writes(engine(), snap(0, [cg]))
    assert int(cmd.value) == floor_of(cg) & PAGE  # oomd would start at 20 MB; the first step clamps anyway


def test_pressure_ms_and_coefficients_are_honoured():
    e = engine("pressure_ms: 100, coeff_backoff: 5")
    writes(e, snap(0, [v2cg()]))
    assert writes(e, snap(1, [v2cg(total_us=60_000)])) == []  # 60 ms < 100 ms: no backoff
    (cmd,) = writes(e, snap(2, [v2cg(total_us=250_000)]))  # 250 ms: error 2
    assert int(cmd.value) == backoff(2 * GB, 250_000, pressure_ms=100, coeff=5)


def test_interval_counts_time_not_snapshots():
    """Event-driven snapshots between ticks must not make senpai probe sooner."""
    e = engine()
    writes(e, snap(0, [v2cg()]))
    for t in [x / 10 for x in range(3, 64, 3)]:  # a snapshot every 0.3 s, up to 6.3 s
        assert writes(e, snap(t, [v2cg()])) == [], t
    assert len(writes(e, snap(7.0, [v2cg()]))) == 1  # 6 ticks counted down, the 7th probes (half a tick of slack)


def test_a_recreated_cgroup_starts_over_and_a_vanished_one_is_forgotten():
    e = engine()
    writes(e, snap(0, [v2cg()]))
    (cmd,) = writes(e, snap(1, [v2cg(inode=9999, usage=3 * GB)]))
    assert (cmd.value, cmd.inode) == (str(3 * GB), 9999)
    plugin = e.rulesets[0].actions[0]
    assert isinstance(plugin, Senpai) and list(plugin.tracked) == [9999]
    writes(e, snap(2, []))
    assert plugin.tracked == {}


def test_dry_run_is_carried_on_every_write():
    (cmd,) = writes(engine(dry_run=True), snap(0, [v2cg()]))
    assert cmd.dry_run and cmd.dry_run_source == "policy"
    (cmd,) = writes(engine("dry: true"), snap(0, [v2cg()]))
    assert cmd.dry_run and cmd.dry_run_source == "plugin argument 'dry'"


def test_the_next_action_still_runs_after_senpai():
    e = Engine(load_policy_text(policy_text(extra_action='      - kill_by_memory_size_or_growth: {cgroup: "p/*"}'),
                                "t.yaml"), generation=1, dry_run=False, dry_run_source="default", protected=frozenset())
    victim = CgroupStats(path="/p/x", inode=7, usage=1 * GB, nr_procs=1, protection=0)
    out = e.tick(snap(0, [v2cg(), victim]), now=0.0)
    assert [type(c).__name__ for c in out.commands] == ["WriteCommand", "KillCommand"]


# ---- immediate_backoff: memory.reclaim --------------------------------------------------------------------------


QUIET_IO = psi(0, 0.0, 0.0)


def test_immediate_backoff_reclaims_while_pressure_is_low_and_leaves_memory_high_alone():
    e = engine("immediate_backoff: true")
    cg = v2cg(io=QUIET_IO)
    assert writes(e, snap(0, [cg])) == []  # nothing written at the start: memory.high is not senpai's
    assert [writes(e, snap(t, [cg])) for t in range(1, 7)] == [[]] * 6
    (cmd,) = writes(e, snap(7, [cg]))
    assert cmd.file == "memory.reclaim"
    assert int(cmd.value) == int((cg.usage - floor_of(cg)) * 0.01) & PAGE  # type: ignore[operator]
    assert [writes(e, snap(t, [cg])) for t in range(8, 14)] == [[]] * 6
    assert len(writes(e, snap(14, [cg]))) == 1


def test_immediate_backoff_waits_while_memory_or_io_pressure_shows():
    for hot in (v2cg(io=QUIET_IO, mem_avg=0.5), v2cg(io=psi(0, 0.0, 0.2))):
        e = engine("immediate_backoff: true")
        assert [c for t in range(0, 12) for c in writes(e, snap(t, [hot]))] == []
        (cmd,) = writes(e, snap(12, [v2cg(io=QUIET_IO)]))  # calm again: it reclaims at once
        assert cmd.file == "memory.reclaim"


def test_immediate_backoff_reclaims_nothing_at_the_floor():
    cg = v2cg(usage=500 * MB, file=0, anon=500 * MB, io=QUIET_IO)  # nothing reclaimable without swap
    e = engine("immediate_backoff: true, interval: 0")
    assert [c for t in range(0, 5) for c in writes(e, snap(t, [cg]))] == []


def test_swap_validation_waits_while_swap_is_nearly_full():
    e = engine("immediate_backoff: true, interval: 0, swap_validation: true")
    full = v2cg(io=QUIET_IO, swap_usage=900 * MB, swap_limit=1 * GB)
    roomy = v2cg(io=QUIET_IO, swap_usage=100 * MB, swap_limit=1 * GB)
    host = dict(swap_total=8 * GB, swap_free=7 * GB)
    writes(e, snap(0, [full], **host))
    assert writes(e, snap(1, [full], **host)) == []  # 90% of swap.max used: past swap_threshold 0.8
    assert len(writes(e, snap(2, [roomy], **host))) == 1
    off = engine("immediate_backoff: true, interval: 0")
    writes(off, snap(0, [full], **host))
    assert len(writes(off, snap(1, [full], **host))) == 1


# ---- where senpai cannot work, and arguments --------------------------------------------------------------------


def test_v1_and_hybrid_cgroups_are_left_alone_and_the_reason_logged_once(caplog):
    v1 = CgroupStats(path=PATH, inode=1, usage=GB, file=GB // 2, anon=GB // 2, pressure=psi(), nr_procs=1)
    v1b = CgroupStats(path=PATH + "-b", inode=2, usage=GB, file=GB // 2, anon=GB // 2, pressure=psi(), nr_procs=1)
    hybrid_only = CgroupStats(path="/workload.slice/c", inode=3, usage=GB, memory_estimated=True, nr_procs=1)
    e = engine()
    with caplog.at_level(logging.INFO, logger="pyoomd.plugins"):
        for t in range(10):
            assert writes(e, snap(t, [v1, v1b, hybrid_only])) == []
    assert caplog.text.count("v1 has no memory.high, only the hard limit") == 1
    assert caplog.text.count("its cgroup2 directory has no memory controller") == 1


def test_a_cgroup_without_psi_of_its_own_is_left_alone():
    cg = msgspec.structs.replace(v2cg(), pressure=None)
    assert [c for t in range(8) for c in writes(engine(), snap(t, [cg]))] == []


def test_needs_reads_the_literal_ancestors_for_swap_but_targets_only_the_pattern():
    plugin = engine(cgroup="workload.slice/app.slice/*").rulesets[0].actions[0]
    needs = plugin.needs()
    assert needs.cgroups == ("/workload.slice/app.slice/*", "/workload.slice", "/workload.slice/app.slice")
    assert needs.fields == {"memory", "swap", "pressure"}
    assert plugin.watched_patterns() == ("/workload.slice/app.slice/*",)
    assert "io" in engine("immediate_backoff: true").rulesets[0].actions[0].needs().fields


@pytest.mark.parametrize(("args", "message"), [
    ("modulate_swappiness: true", "vm.swappiness for the whole host"),
    ("coeff_probe: 0", "must be above 0"),
    ("pressure_ms: 0", "outside 1.."),
    ("max_probe: 2", "outside 0..1"),
    ("limit_min_byte: 5", "did you mean 'limit_min_bytes'"),
])
def test_bad_arguments_are_refused_at_load(args, message):
    with pytest.raises(PolicyInvalid, match=message):
        load_policy_text(policy_text(args), "t.yaml")


def test_oomd_json_senpai_loads_with_oomd_argument_strings():
    policy = load_policy_text("""{"rulesets": [{"name": "senpai ruleset",
      "detectors": [["continue detector group", {"name": "continue", "args": {}}]],
      "actions": [{"name": "senpai", "args": {"cgroup": "workload.slice/workload-tw.slice/*",
        "limit_min_bytes": "209715200", "interval": "3", "pressure_ms": "20", "immediate_backoff": "false",
        "memory_high_timeout_ms": "20"}}]}]}""", "oomd.json")
    plugin = Engine(policy, 1, False, "default", frozenset()).rulesets[0].actions[0]
    assert isinstance(plugin, Senpai)
    assert (plugin.limit_min_bytes, plugin.interval, plugin.pressure_ms) == (200 * MB, 3, 20)


def test_the_plugins_second_opinion_for_the_actuator():
    plugin = engine().rulesets[0].actions[0]
    assert isinstance(plugin, Senpai)
    assert plugin.check_write("memory.high", str(GB), None) is None
    assert "below limit_min_bytes" in plugin.check_write("memory.high", str(50 * MB), None)
    assert "not a byte count" in plugin.check_write("memory.high", "max", None)
    assert "not a byte count" in plugin.check_write("memory.high", "-1", None)
    assert plugin.check_write("memory.reclaim", str(10 * MB), GB) is None
    assert "below limit_min_bytes" in plugin.check_write("memory.reclaim", str(GB - 50 * MB), GB)
    assert "could not be read" in plugin.check_write("memory.reclaim", str(MB), None)
    assert "does not write" in plugin.check_write("memory.max", str(GB), None)


# ---- the actuator on a v2 fixture tree --------------------------------------------------------------------------


def v2_update(patterns: str = "system.slice", protected: list[str] | None = None, generation: int = 1,
              dry_run: bool = False) -> PolicyUpdate:
    text = policy_text(cgroup=patterns, extra_action='      - kill_by_memory_size_or_growth: {cgroup: "user.slice/*"}')
    return PolicyUpdate(generation=generation, policy=load_policy_text(text, "t.yaml"), dry_run=dry_run,
                        dry_run_source="policy" if dry_run else "default", protected_paths=protected or ["/"],
                        daemon_pid=os.getpid())


def write_cmd(path: str, inode: int, *, file: str = "memory.high", value: str = str(GB), generation: int = 1,
              not_after: float | None = None, plugin: str = "senpai", dry_run: bool = False) -> WriteCommand:
    return WriteCommand(id=uuid.uuid4().hex, generation=generation, ruleset="tune", group="always", plugin=plugin,
                        snapshot_time=time.time(), not_after=not_after if not_after is not None else time.monotonic() + 5,
                        path=path, inode=inode, file=file, value=value, reason="test",  # type: ignore[arg-type]
                        dry_run=dry_run, dry_run_source="test")


@pytest.fixture
def v2(tmp_path: Path):
    host = v2_host(tmp_path)
    fs = host.fs()
    executor = CommandExecutor(fs, daemon_pid=os.getpid(), kmsg_path=None)
    executor.apply_policy(v2_update())
    slice_dir = host.cgroup_dir("unified", SYSTEM_SLICE)
    return host, executor, slice_dir, os.stat(slice_dir).st_ino


def test_actuator_writes_memory_high_of_a_v2_cgroup(v2):
    _host, ex, d, inode = v2
    original = sample_text(f"{V2_SYSTEM_SLICE}/memory.high")
    assert (d / "memory.high").read_text() == original == "max\n"
    assert ex.fs.identity(SYSTEM_SLICE) == inode  # the snapshot's inode is the directory written to
    result = ex.execute_write(write_cmd(SYSTEM_SLICE, inode, value=str(3 * GB)))
    assert (result.status, result.target) == ("written", SYSTEM_SLICE)
    assert (d / "memory.high").read_text() == str(3 * GB)
    assert result.pids == []


def test_actuator_dry_run_writes_nothing(v2):
    _host, ex, d, inode = v2
    result = ex.execute_write(write_cmd(SYSTEM_SLICE, inode, dry_run=True))
    assert result.status == "dry-run" and "would write" in result.detail
    assert (d / "memory.high").read_text() == "max\n"
    ex.apply_policy(v2_update(dry_run=True))  # the policy's dry run holds even if a command says otherwise
    assert ex.execute_write(write_cmd(SYSTEM_SLICE, inode)).status == "dry-run"
    assert (d / "memory.high").read_text() == "max\n"


def _unchanged(d: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(d.iterdir()) if p.is_file()}


@pytest.mark.parametrize(("change", "status", "detail"), [
    (dict(file="memory.max"), "refused", "not a file pyoomd writes"),
    (dict(file="cgroup.procs", value="1"), "refused", "not a file pyoomd writes"),
    (dict(path=SESSION_SCOPE), "refused", "not under the cgroups this action may act on"),
    (dict(path="/system.slice/.."), "refused", "may not contain '..'"),
    (dict(path="system.slice"), "refused", "not a normalised cgroup path"),
    (dict(inode=1), "refused", "replaced by another cgroup of the same name"),
    (dict(not_after=0.0), "expired", "past its deadline"),
    (dict(generation=2), "refused", "policy generation 2, running 1"),
    (dict(plugin="kill_by_memory_size_or_growth"), "refused", "no action 'kill_by_memory_size_or_growth' that writes"),
    (dict(value="max"), "refused", "not a byte count"),
    (dict(value="1\nmax"), "refused", "not a byte count"),
    (dict(value=str(10 * MB)), "refused", "below limit_min_bytes"),
    (dict(file="memory.reclaim", value=str(MB)), "refused", "no memory.reclaim here (memory.reclaim came with kernel 5.19)"),
])
def test_actuator_refusals_write_nothing(v2, change, status, detail):
    host, ex, d, inode = v2
    before = {SYSTEM_SLICE: _unchanged(d), SESSION_SCOPE: _unchanged(host.cgroup_dir("unified", SESSION_SCOPE))}
    args = dict(path=SYSTEM_SLICE, inode=inode) | change
    path, inode_ = args.pop("path"), args.pop("inode")
    result = ex.execute_write(write_cmd(path, inode_, **args))
    assert result.status == status
    assert detail in result.detail
    assert before == {SYSTEM_SLICE: _unchanged(d), SESSION_SCOPE: _unchanged(host.cgroup_dir("unified", SESSION_SCOPE))}


def test_actuator_refuses_a_protected_cgroup(v2):
    _host, ex, d, inode = v2
    ex.apply_policy(v2_update(protected=["/", SYSTEM_SLICE]))
    result = ex.execute_write(write_cmd(SYSTEM_SLICE, inode))
    assert result.status == "refused" and "protected" in result.detail
    assert (d / "memory.high").read_text() == "max\n"


def test_actuator_refuses_a_cgroup2_directory_without_the_memory_controller(v2):
    host, ex, _d, _inode = v2
    ex.apply_policy(v2_update(patterns="init.scope,system.slice"))
    d = host.cgroup_dir("unified", "/init.scope")  # in the fixture: cgroup.procs only, no memory files
    result = ex.execute_write(write_cmd("/init.scope", os.stat(d).st_ino, value=str(GB)))
    assert result.status == "refused"  # init.scope is always protected, whatever the policy says
    ex.apply_policy(v2_update(patterns="workload.slice"))
    bare = host.add_cgroup("unified", "/workload.slice")
    result = ex.execute_write(write_cmd("/workload.slice", os.stat(bare).st_ino))
    assert result.status == "refused"
    assert "its cgroup2 directory has no memory controller" in result.detail
    assert not (bare / "memory.high").exists()


def test_actuator_writes_memory_reclaim_where_the_kernel_has_it(v2):
    _host, ex, d, inode = v2
    # The 5.12 sample predates memory.reclaim (5.19): an empty file stands in for the kernel's.
    (d / "memory.reclaim").write_text("")
    current = int(sample_text(f"{V2_SYSTEM_SLICE}/memory.current"))
    result = ex.execute_write(write_cmd(SYSTEM_SLICE, inode, file="memory.reclaim", value=str(64 * MB)))
    assert result.status == "written"
    assert (d / "memory.reclaim").read_text() == str(64 * MB)
    too_much = current - 50 * MB  # would leave less than limit_min_bytes
    result = ex.execute_write(write_cmd(SYSTEM_SLICE, inode, file="memory.reclaim", value=str(too_much)))
    assert result.status == "refused" and "below limit_min_bytes" in result.detail
    assert (d / "memory.reclaim").read_text() == str(64 * MB)


def test_actuator_never_follows_a_symlink_out_of_the_cgroup(v2, tmp_path):
    _host, ex, d, inode = v2
    outside = tmp_path / "elsewhere"
    outside.write_text("untouched\n")
    (d / "memory.high").unlink()
    (d / "memory.high").symlink_to(outside)
    result = ex.execute_write(write_cmd(SYSTEM_SLICE, inode))
    assert result.status == "failed"
    assert outside.read_text() == "untouched\n"


def test_a_write_command_for_another_file_does_not_even_decode():
    channel = Channel("test", CommandMessage)
    frame = msgspec.msgpack.encode(write_cmd(SYSTEM_SLICE, 1, file="memory.max"))
    assert channel.decode(frame) is None and channel.dropped == 1
    good = write_cmd(SYSTEM_SLICE, 1)
    assert channel.decode(channel.encode(good)) == good


def test_plugin_to_actuator_on_the_fixture_tree(v2):
    """What the collector reads from the fixture, senpai decides on, and the actuator writes."""
    host, ex, d, _inode = v2
    fs = host.fs()
    e = Engine(v2_update().policy, 1, False, "default", frozenset({"/"}))
    needs = e.needs()
    stats = [s for p in fs.resolve(needs.cgroups) if (s := fs.read_stats(p, needs.fields | {"tree"})) is not None]
    snapshot = Snapshot(seq=1, generation=1, time=time.time(), monotonic=time.monotonic(), host=fs.read_host(),
                        cgroups=stats)
    (cmd,) = [c for c in e.tick(snapshot, time.monotonic()).commands if isinstance(c, WriteCommand)]
    usage = int(sample_text(f"{V2_SYSTEM_SLICE}/memory.current"))
    assert (cmd.path, cmd.file, int(cmd.value)) == (SYSTEM_SLICE, "memory.high", usage & PAGE)
    assert ex.execute_write(cmd).status == "written"
    assert (d / "memory.high").read_text() == str(usage & PAGE)


# ---- the real hybrid host ---------------------------------------------------------------------------------------


@pytest.mark.real
def test_hybrid_host_write_is_refused_and_senpai_decides_nothing(cgroups: CgroupSandbox):
    cgroups.mkdir("work")
    cgroups.sleeper("work")
    path = f"{cgroups.path}/work"
    fs = CgroupFS(detect_layout())
    if fs.layout.kind != "hybrid":
        pytest.skip(f"this host is {fs.layout.kind}, not hybrid")
    unified = fs.layout.unified.dir_of(path)  # type: ignore[union-attr]
    v1 = fs.layout.memory.dir_of(path)  # type: ignore[union-attr]
    before = {name: (v1 / name).read_text() for name in ("memory.limit_in_bytes", "memory.soft_limit_in_bytes")}
    listing = sorted(p.name for p in unified.iterdir())

    update = PolicyUpdate(generation=1, policy=load_policy_text(policy_text(cgroup=f"{cgroups.name}/work*"), "t.yaml"),
                          dry_run=False, dry_run_source="default", protected_paths=["/"], daemon_pid=os.getpid())
    ex = CommandExecutor(fs, daemon_pid=os.getpid(), kmsg_path=None)
    ex.apply_policy(update)
    for inode in {fs.identity(path), os.stat(unified).st_ino}:  # the snapshot's (v1) inode, or cgroup2's own
        for file in ("memory.high", "memory.reclaim"):
            result = ex.execute_write(write_cmd(path, inode or 0, file=file, value=str(GB)))
            assert result.status == "refused", result
            assert "cgroup2 directory has no memory controller" in result.detail
            assert "v1 memory controller" in result.detail
    assert sorted(p.name for p in unified.iterdir()) == listing
    assert {name: (v1 / name).read_text() for name in before} == before

    # And senpai, given what the collector reads here, decides nothing.
    e = Engine(update.policy, 1, False, "default", frozenset({"/"}))
    needs = e.needs()
    stats = [s for p in fs.resolve(needs.cgroups) if (s := fs.read_stats(p, needs.fields | {"tree"})) is not None]
    assert any(s.path == path for s in stats)
    snapshot = Snapshot(seq=1, generation=1, time=time.time(), monotonic=time.monotonic(), host=fs.read_host(),
                        cgroups=stats)
    assert e.tick(snapshot, time.monotonic()).commands == []
