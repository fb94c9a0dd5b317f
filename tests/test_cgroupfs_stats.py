"""cgroupfs.parse on every real sample, and CgroupFS.read_stats / read_host on fixture trees of each layout.

Expected figures come from the sample files themselves (parsed here with plain code, or quoted as read).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cgroupfs.kill import PF_KTHREAD, is_kernel_thread, signal_cgroup
from cgroupfs.parse import (
    UNLIMITED_FLOOR,
    parse_flat_keyed,
    parse_limit,
    parse_meminfo,
    parse_pids,
    parse_pressure,
    parse_proc_cgroup,
)
from cgroupfs.stats import CgroupStats, HostStats, Pressure
from tests.fixture_trees import (
    AWS_DOCKER,
    EKS_CONTAINER,
    FIXTURES,
    MEMINFO_618,
    PSI_618,
    SESSION_SCOPE,
    SYSTEM_SLICE,
    THIS_MACHINE_CHILD,
    UBUNTU_SERVICE,
    UBUNTU_SERVICE_PID,
    V1_AWS,
    V1_CHILD,
    V1_EKS,
    V1_ROOT,
    V1_UBUNTU,
    V2_HYBRID_CHILD,
    V2_HYBRID_ROOT,
    V2_OOMD,
    V2_SESSION,
    V2_SYSTEM_SLICE,
    hybrid_host,
    live_proc_text,
    rss_bytes_of_statm,
    sample,
    sample_int,
    sample_keyed,
    sample_lines,
    sample_pids,
    sample_text,
    v1_host,
    v2_host,
    write_procs,
)

V1_UNLIMITED = 9223372036854771712  # PAGE_COUNTER_MAX * 4 KiB, as every unlimited v1 sample prints it
HYBRID_MOUNTINFOS = [
    "mountinfo/this-machine-hybrid",
    "mountinfo/hybrid-ubuntu1804",
    "mountinfo/hybrid-systemd232-cgroup2-at-systemd-fedora",
    "mountinfo/hybrid-cgroup-lines-only-ubuntu-5.13plus",
]


def rel_files(pattern: str) -> list[str]:
    return sorted(str(p.relative_to(FIXTURES)) for p in FIXTURES.glob(pattern))


def psi_lines(rel: str) -> dict[str, dict[str, float]]:
    """A PSI sample split here independently: {"some": {"avg10": ...}, "full": {...}}."""
    out = {}
    for line in sample_lines(rel):
        kind, *kvs = line.split()
        out[kind] = {k: float(v) for k, v in (kv.split("=") for kv in kvs)}
    return out


def expected_pressure(rel: str) -> Pressure:
    lines = psi_lines(rel)
    some, full = lines["some"], lines.get("full")
    return Pressure(
        some_avg10=some["avg10"], some_avg60=some["avg60"], some_avg300=some["avg300"], some_total=int(some["total"]),
        full_avg10=full["avg10"] if full else None, full_avg60=full["avg60"] if full else None,
        full_avg300=full["avg300"] if full else None, full_total=int(full["total"]) if full else None,
    )


# ---- parse_limit -------------------------------------------------------------------------------------------------

LIMIT_FILES = [
    f
    for pattern in ("**/memory*.limit_in_bytes", "**/memory.max", "**/memory.high", "**/memory.swap.max",
                    "**/memory.swap.high", "**/memory.low", "**/memory.min")
    for f in rel_files(pattern)
]


def test_the_limit_samples_spell_unlimited_two_ways():
    spellings = {sample_text(f).strip() for f in LIMIT_FILES}
    assert {"max", str(V1_UNLIMITED)} <= spellings
    assert {s for s in spellings if s == "max" or int(s) >= UNLIMITED_FLOOR} == {"max", str(V1_UNLIMITED)}


@pytest.mark.parametrize("rel", LIMIT_FILES)
def test_parse_limit_every_sample(rel):
    text = sample_text(rel)
    if text.strip() in ("max", str(V1_UNLIMITED)):
        assert parse_limit(text) is None
    else:
        assert parse_limit(text) == int(text)


def test_parse_limit_real_limits_as_read():
    assert parse_limit(sample_text(f"{V1_EKS}/memory.limit_in_bytes")) == 2147483648
    assert parse_limit(sample_text(f"{V1_EKS}/memory.memsw.limit_in_bytes")) == 2147483648
    assert parse_limit(sample_text("v2/kernel-6.x-telegraf-capture/memory.max")) == 103079215104
    assert parse_limit(sample_text("v2/kernel-6.x-telegraf-capture/memory.swap.max")) == 0  # "0": no swap at all


def test_parse_limit_other_unlimited_spellings():
    page_counter_max = (2**63 - 1) // 4096
    assert page_counter_max * 4096 == V1_UNLIMITED
    assert parse_limit(f"{(2**63 - 1) // 65536 * 65536}\n") is None  # 64 KiB pages
    assert parse_limit("18446744073709551615\n") is None  # before 3.19: RESOURCE_MAX
    assert parse_limit(f"{UNLIMITED_FLOOR}\n") is None
    assert parse_limit(f"{UNLIMITED_FLOOR - 4096}\n") == UNLIMITED_FLOOR - 4096


# ---- parse_pressure ----------------------------------------------------------------------------------------------

AGGR_PSI = "v2/memory.pressure-experimental-aggr-format/memory.pressure"
PSI_FILES = [
    f for f in rel_files("proc/*/pressure-*") + rel_files("v2/**/*.pressure") if f != AGGR_PSI and "cgroup." not in f
]


@pytest.mark.parametrize("rel", PSI_FILES)
def test_parse_pressure_every_sample(rel):
    text = sample_text(rel)
    if not text.startswith("some"):
        # irq pressure (6.1+) has a `full` line only.
        assert set(psi_lines(rel)) == {"full"}
        with pytest.raises(ValueError, match="some"):
            parse_pressure(text)
        return
    p = parse_pressure(text)
    assert p == expected_pressure(rel)
    assert (p.full_avg10 is None) == ("full" not in psi_lines(rel))


@pytest.mark.parametrize(
    "rel", ["proc/kernel-4.20-5.12-node-exporter-2019/pressure-cpu", "v2/kernel-5.12-fedora-system-slice/cpu.pressure"]
)
def test_parse_pressure_cpu_before_5_13_has_no_full_line(rel):
    p = parse_pressure(sample_text(rel))
    assert p.full_avg10 is None and p.full_avg60 is None and p.full_avg300 is None and p.full_total is None
    assert p.some_total == int(sample_text(rel).split("total=")[1])


def test_parse_pressure_values_as_read():
    # proc/this-machine-6.18/pressure-memory, read under thrashing.
    p = parse_pressure(sample_text(PSI_618))
    assert (p.some_avg10, p.some_avg60, p.some_avg300, p.some_total) == (5.25, 7.55, 2.67, 38532244)
    assert (p.full_avg10, p.full_avg60, p.full_avg300, p.full_total) == (5.17, 7.45, 2.63, 37210683)
    assert isinstance(p.some_total, int) and isinstance(p.full_total, int)


def test_parse_pressure_experimental_aggr_format_is_refused():
    with pytest.raises(ValueError):
        parse_pressure(sample_text(AGGR_PSI))


# ---- parse_meminfo -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rel", rel_files("proc/*/meminfo"))
def test_parse_meminfo_bytes(rel):
    info = parse_meminfo(sample_text(rel))
    lines = sample_lines(rel)
    assert len(info) == len(lines)
    for line in lines:
        key, rest = line.split(":")
        value, *unit = rest.split()
        assert info[key] == int(value) * (1024 if unit == ["kB"] else 1)


def test_parse_meminfo_as_read():
    info = parse_meminfo(sample_text(MEMINFO_618))
    assert info["MemTotal"] == 24683792 * 1024
    assert info["MemAvailable"] == 24241832 * 1024
    assert info["SwapTotal"] == 0
    assert info["HugePages_Total"] == 0  # a count, no unit
    assert info["Hugepagesize"] == 2048 * 1024
    old = parse_meminfo(sample_text("proc/kernel-pre-3.14-node-exporter/meminfo"))
    assert "MemAvailable" not in old
    assert old["SwapTotal"] == 4194300 * 1024


# ---- parse_flat_keyed, parse_pids ----------------------------------------------------------------------------------

KEYED_FILES = [
    f
    for pattern in ("**/memory.stat", "**/memory.events", "**/memory.events.local", "**/cgroup.events",
                    "**/cgroup.stat", "**/cpu.stat", "proc/*/vmstat", "**/memory.oom_control", "**/memory.swap.events")
    for f in rel_files(pattern)
]


@pytest.mark.parametrize("rel", KEYED_FILES)
def test_parse_flat_keyed_every_sample(rel):
    assert parse_flat_keyed(sample_text(rel)) == sample_keyed(rel)


@pytest.mark.parametrize(
    "rel",
    ["v2/kernel-5.12-fedora-system-slice/memory.pressure", "v2/kernel-5.12-fedora-system-slice/io.stat",
     "v2/io.stat-quirks/ubuntu-joined-empty-devices/io.stat",
     "v2/io.stat-quirks/ubuntu2-trailing-empty-devices/io.stat",
     f"{V1_EKS}/memory.numa_stat"],
)
def test_parse_flat_keyed_ignores_other_formats(rel):
    assert parse_flat_keyed(sample_text(rel)) == {}


def test_parse_flat_keyed_as_read():
    stat = parse_flat_keyed(sample_text(f"{V1_CHILD}/memory.stat"))
    assert stat["total_rss"] == 1802240 and stat["total_workingset_refault_file"] == 80
    assert stat["hierarchical_memory_limit"] == V1_UNLIMITED
    assert parse_flat_keyed(sample_text(f"{V2_SESSION}/cgroup.events")) == {"populated": 1, "frozen": 0}


@pytest.mark.parametrize("rel", rel_files("**/cgroup.procs") + rel_files("**/tasks") + rel_files("**/cgroup.threads"))
def test_parse_pids(rel):
    assert parse_pids(sample_text(rel)) == [int(x) for x in sample_lines(rel)]


# ---- parse_proc_cgroup ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rel", rel_files("proc-self-cgroup/*"))
def test_parse_proc_cgroup_every_sample(rel):
    parsed = parse_proc_cgroup(sample_text(rel))
    expected = {}
    for line in sample_lines(rel):
        _, ctrls, path = line.split(":", 2)
        for key in ctrls.split(",") if ctrls else [""]:
            expected[key] = path
    assert parsed == expected


def test_parse_proc_cgroup_co_mounted_and_unified():
    amzn2 = parse_proc_cgroup(sample_text("proc-self-cgroup/v1-legacy-amzn2-k8s-container-process"))
    assert amzn2["cpu"] == amzn2["cpuacct"] == amzn2["memory"] == EKS_CONTAINER
    assert amzn2["net_cls"] == amzn2["net_prio"] == EKS_CONTAINER
    assert amzn2[""] == "/"  # the kernel has cgroup2, systemd 219 does not use it
    assert "cpu,cpuacct" not in amzn2
    centos = parse_proc_cgroup(sample_text("proc-self-cgroup/v1-centos7-docker-container"))
    assert centos["cpu"] == centos["cpuacct"]  # listed `cpuacct,cpu` on 3.10
    assert "" not in centos  # 3.10: no cgroup2, no `0::` line
    assert "" not in parse_proc_cgroup(sample_text("proc-self-cgroup/v1-docker-container-aws-pre4.5"))
    assert parse_proc_cgroup(sample_text("proc-self-cgroup/v2-container-cgroupns-self")) == {"": "/"}
    this = parse_proc_cgroup(sample_text("proc-self-cgroup/this-machine-hybrid"))
    assert this["memory"] == THIS_MACHINE_CHILD and this[""] == "/" and this["name=systemd"] == "/"
    # Outside the reader's cgroup namespace: kept as printed.
    ns = parse_proc_cgroup(sample_text("proc-self-cgroup/v2-host-root-process-seen-from-container-cgroupns"))
    assert ns == {"": "/../.."}


# ---- read_host -----------------------------------------------------------------------------------------------------


def test_read_host_this_machine(tmp_path):
    host = v2_host(tmp_path).fs().read_host()
    assert host == HostStats(
        mem_total=24683792 * 1024, mem_available=24241832 * 1024, swap_total=0, swap_free=0,
        pressure=expected_pressure(PSI_618),
    )


def test_read_host_without_psi_and_with_swap(tmp_path):
    host = v1_host(tmp_path).fs().read_host()  # the 4.8-4.19 oomd meminfo, no /proc/pressure
    assert host.pressure is None
    assert host.mem_total == 58616708 * 1024
    assert host.mem_available == 49878948 * 1024
    assert (host.swap_total, host.swap_free) == (2097148 * 1024, 1097041 * 1024)


def test_read_host_before_memavailable_uses_memfree(tmp_path):
    host = v1_host(tmp_path, meminfo="proc/kernel-pre-3.14-node-exporter/meminfo").fs().read_host()
    assert host.mem_available == 225472 * 1024  # MemFree
    assert (host.swap_total, host.swap_free) == (4194300 * 1024, 3155360 * 1024)


# ---- read_stats: pure v1 -------------------------------------------------------------------------------------------

V1_CGROUPS = [
    ("/", V1_ROOT),
    (UBUNTU_SERVICE, V1_UBUNTU),
    (EKS_CONTAINER, V1_EKS),
    (AWS_DOCKER, V1_AWS),
    (THIS_MACHINE_CHILD, V1_CHILD),
]


@pytest.mark.parametrize(("path", "rel"), V1_CGROUPS, ids=[r for _, r in V1_CGROUPS])
def test_read_stats_v1_memory_figures(tmp_path, path, rel):
    host = v1_host(tmp_path)
    fs = host.fs()
    st = fs.read_stats(path)
    stat = sample_keyed(f"{rel}/memory.stat")
    limit = sample_int(f"{rel}/memory.limit_in_bytes")
    assert st.path == path
    assert st.usage == sample_int(f"{rel}/memory.usage_in_bytes")
    assert st.limit == (None if limit == V1_UNLIMITED else limit)
    assert st.anon == stat["total_rss"]
    assert st.file == stat["total_cache"]
    assert st.shmem == stat.get("total_shmem")
    assert st.protection is None  # v1 has no memory.min/low: absent, not 0
    assert st.memory_estimated is False
    assert st.pressure is None  # pure v1 on a kernel before PSI: no per-cgroup PSI, no host PSI for "/"
    assert st.nr_procs == len(fs.members(path))
    assert st.populated is True
    assert st.inode == fs.identity(path)


def test_read_stats_v1_figures_as_read(tmp_path):
    fs = v1_host(tmp_path).fs()
    eks = fs.read_stats(EKS_CONTAINER)
    assert (eks.usage, eks.limit, eks.anon, eks.file, eks.shmem) == (1215860736, 2147483648, 1119465472, 78397440, 0)
    assert eks.nr_procs == 12
    ubuntu = fs.read_stats(UBUNTU_SERVICE)
    assert (ubuntu.usage, ubuntu.limit, ubuntu.anon, ubuntu.file) == (9039872, None, 8404992, 0)
    assert ubuntu.nr_procs == 1
    # 3.1x-4.1: no shmem line in memory.stat, so no figure (None, not 0).
    aws = fs.read_stats(AWS_DOCKER)
    assert (aws.usage, aws.anon, aws.file, aws.shmem) == (295997440, 230662144, 65101824, None)
    root = fs.read_stats("/")
    assert (root.usage, root.anon, root.file, root.shmem) == (224899072, 31842304, 193253376, 9990144)


def test_read_stats_v1_root_gets_host_psi_when_the_kernel_has_it(tmp_path):
    # Pure v1 on a PSI kernel (v1/this-machine-6.18 with this machine's /proc): "/" has the host's PSI, the
    # rest has none.
    fs = v1_host(tmp_path, meminfo=MEMINFO_618, pressure=PSI_618).fs()
    assert fs.read_stats("/").pressure == expected_pressure(PSI_618)
    assert fs.read_stats(THIS_MACHINE_CHILD).pressure is None
    host = fs.read_host()
    assert fs.read_stats("/", host=host).pressure is host.pressure


@pytest.mark.parametrize(
    "mi",
    ["mountinfo/v1-legacy-amzn2-eks-node-arm64", "mountinfo/v1-legacy-fedora20-docker-host",
     "mountinfo/v1-legacy-ubuntu1404-cgroup-lite", "mountinfo/v1-docker-container-subpaths-ubuntu-aufs"],
)
def test_read_stats_v1_each_mount_form(tmp_path, mi):
    st = v1_host(tmp_path, mi).fs().read_stats(EKS_CONTAINER)
    assert (st.usage, st.limit, st.pressure) == (1215860736, 2147483648, None)


def test_read_stats_fields(tmp_path):
    fs = v1_host(tmp_path, meminfo=MEMINFO_618, pressure=PSI_618).fs()
    only_pressure = fs.read_stats("/", fields=frozenset({"pressure"}))
    assert only_pressure.usage is None and only_pressure.limit is None and only_pressure.anon is None
    assert only_pressure.pressure == expected_pressure(PSI_618)
    only_memory = fs.read_stats("/", fields=frozenset({"memory"}))
    assert only_memory.pressure is None and only_memory.usage == sample_int(f"{V1_ROOT}/memory.usage_in_bytes")


def test_read_stats_missing_path(tmp_path):
    fs = v1_host(tmp_path).fs()
    assert fs.read_stats("/system.slice/gone.service") is None


# ---- read_stats: hybrid --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mi", HYBRID_MOUNTINFOS)
def test_hybrid_twin_with_the_same_members_gives_its_psi(tmp_path, mi):
    host = hybrid_host(tmp_path, mi)
    host.add_cgroup("unified", THIS_MACHINE_CHILD, V2_HYBRID_CHILD, procs=sample_pids(f"{V1_CHILD}/cgroup.procs"))
    st = host.fs().read_stats(THIS_MACHINE_CHILD)
    # Memory figures from the v1 memory cgroup, PSI from the cgroup2 twin (all zeros, unlike the host's).
    assert st.usage == 4481024 == sample_int(f"{V1_CHILD}/memory.usage_in_bytes")
    assert st.anon == 1802240 and st.file == 352256 and st.limit is None
    assert st.pressure == expected_pressure(f"{V2_HYBRID_CHILD}/memory.pressure")
    assert st.pressure.some_total == 0 and st.pressure.full_total == 0
    assert st.pressure != expected_pressure(PSI_618)
    assert st.memory_estimated is False
    assert st.inode == host.fs().identity(THIS_MACHINE_CHILD)


@pytest.mark.parametrize("mi", HYBRID_MOUNTINFOS)
def test_hybrid_twin_with_other_members_gives_no_psi(tmp_path, mi):
    host = hybrid_host(tmp_path, mi)
    procs = sample_pids(f"{V1_CHILD}/cgroup.procs")
    twin = host.add_cgroup("unified", THIS_MACHINE_CHILD, V2_HYBRID_CHILD, procs=sorted(procs)[:-1])
    fs = host.fs()
    assert fs.read_stats(THIS_MACHINE_CHILD).pressure is None  # a subset
    write_procs(twin, procs | {UBUNTU_SERVICE_PID})
    assert fs.read_stats(THIS_MACHINE_CHILD).pressure is None  # a superset
    write_procs(twin, [])
    assert fs.read_stats(THIS_MACHINE_CHILD).pressure is None  # empty, as the idle sample was
    # The memory figures do not depend on the twin.
    assert fs.read_stats(THIS_MACHINE_CHILD).usage == sample_int(f"{V1_CHILD}/memory.usage_in_bytes")


def test_hybrid_no_twin_gives_no_psi(tmp_path):
    # As on this machine: memory:/process_api/... but 0::/ (proc-self-cgroup/this-machine-hybrid).
    st = hybrid_host(tmp_path).fs().read_stats(THIS_MACHINE_CHILD)
    assert st.pressure is None
    assert st.usage == sample_int(f"{V1_CHILD}/memory.usage_in_bytes")


def test_hybrid_twin_members_compared_recursively(tmp_path):
    host = hybrid_host(tmp_path)
    procs = sample_pids(f"{V1_CHILD}/cgroup.procs")
    host.add_cgroup("unified", THIS_MACHINE_CHILD, V2_HYBRID_CHILD)  # no processes of its own
    host.add_cgroup("unified", THIS_MACHINE_CHILD + "/leaf", V2_HYBRID_CHILD, procs=procs)
    st = host.fs().read_stats(THIS_MACHINE_CHILD)
    assert st.pressure == expected_pressure(f"{V2_HYBRID_CHILD}/memory.pressure")


def test_hybrid_ubuntu1804_real_twin_without_psi_files(tmp_path):
    # The 4.15 capture: the same service in memory and in unified, both holding PID 3757, but 4.15 has no PSI.
    host = hybrid_host(tmp_path, "mountinfo/hybrid-ubuntu1804")
    fs = host.fs()
    assert sample_pids(f"{V1_UBUNTU}/cgroup.procs") == sample_pids(
        "v2/kernel-4.15-ubuntu1804-hybrid-unified-service/cgroup.procs"
    ) == {UBUNTU_SERVICE_PID}
    st = fs.read_stats(UBUNTU_SERVICE)
    assert st.pressure is None
    assert (st.usage, st.anon, st.limit, st.nr_procs) == (9039872, 8404992, None, 1)


def test_hybrid_root_gets_host_psi_and_v1_root_figures(tmp_path):
    fs = hybrid_host(tmp_path).fs()
    st = fs.read_stats("/")
    assert st.pressure == expected_pressure(PSI_618)
    assert st.usage == sample_int(f"{V1_ROOT}/memory.usage_in_bytes")
    assert st.anon == sample_keyed(f"{V1_ROOT}/memory.stat")["total_rss"]
    assert st.memory_estimated is False


def test_hybrid_unified_only_path_is_estimated_from_statm(tmp_path):
    host = hybrid_host(tmp_path)
    pids = [5001, 5002, 5003]
    host.add_cgroup("unified", "/only-in-unified", V2_HYBRID_CHILD, procs=pids)
    host.add_process(5001, statm=True)
    host.add_process(5002, statm=True)
    host.add_process(5003)  # exited between listing and reading: no statm
    fs = host.fs()
    st = fs.read_stats("/only-in-unified")
    expected = sum(rss_bytes_of_statm((host.proc / str(p) / "statm").read_text()) for p in (5001, 5002))
    assert expected > 0
    assert st.memory_estimated is True
    assert st.usage == expected
    assert (st.limit, st.anon, st.file, st.shmem, st.protection) == (None, None, None, None, None)
    # Its own cgroup2 directory: its own PSI, no member check needed.
    assert st.pressure == expected_pressure(f"{V2_HYBRID_CHILD}/memory.pressure")
    assert st.nr_procs == 3
    assert st.inode == fs.identity("/only-in-unified")


def test_hybrid_unified_only_path_with_the_4_15_twin_has_no_pressure_file(tmp_path):
    host = hybrid_host(tmp_path, "mountinfo/hybrid-ubuntu1804")
    host.add_cgroup("unified", "/only-4.15", "v2/kernel-4.15-ubuntu1804-hybrid-unified-service")
    host.add_process(UBUNTU_SERVICE_PID, statm=True)
    st = host.fs().read_stats("/only-4.15")
    assert st.pressure is None
    assert st.memory_estimated is True
    assert st.usage == rss_bytes_of_statm((host.proc / str(UBUNTU_SERVICE_PID) / "statm").read_text())


def test_slash_reads_the_cgroup2_roots_own_psi_file_else_the_hosts(tmp_path):
    # The kernel's root memory.pressure is system-wide (it equals /proc/pressure/memory in these samples), and in
    # a cgroup namespace it is the namespace root's own: so "/" reads it where it exists, the host's otherwise.
    assert psi_lines(f"{V2_HYBRID_ROOT}/memory.pressure") == psi_lines(PSI_618)
    host = hybrid_host(tmp_path)
    other = "proc/kernel-4.20-5.12-node-exporter-2019/pressure-memory"
    (host.proc / "pressure" / "memory").write_text(sample_text(other))
    assert host.fs().read_stats("/").pressure == expected_pressure(f"{V2_HYBRID_ROOT}/memory.pressure")
    (host.cgroup_dir("unified", "/") / "memory.pressure").unlink()  # a kernel whose root has no PSI file
    assert host.fs().read_stats("/").pressure == expected_pressure(other)


# ---- read_stats: pure v2 -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("path", "rel"), [(SYSTEM_SLICE, V2_SYSTEM_SLICE), (SESSION_SCOPE, V2_SESSION)])
def test_read_stats_v2_memory_figures(tmp_path, path, rel):
    fs = v2_host(tmp_path).fs()
    st = fs.read_stats(path)
    stat = sample_keyed(f"{rel}/memory.stat")
    assert st.usage == sample_int(f"{rel}/memory.current")
    assert sample_text(f"{rel}/memory.max").strip() == "max"
    assert st.limit is None
    assert (st.anon, st.file, st.shmem) == (stat["anon"], stat["file"], stat["shmem"])
    assert st.protection == max(sample_int(f"{rel}/memory.min"), sample_int(f"{rel}/memory.low")) == 0
    assert st.pressure == expected_pressure(f"{rel}/memory.pressure")
    assert st.memory_estimated is False


def test_read_stats_v2_figures_as_read(tmp_path):
    fs = v2_host(tmp_path).fs()
    session = fs.read_stats(SESSION_SCOPE)
    assert (session.usage, session.anon, session.file, session.shmem) == (10498404352, 1411100672, 8621432832, 20480)
    assert (session.pressure.some_total, session.pressure.full_total) == (1736583, 1677369)
    assert session.nr_procs == 14 and session.populated is True
    system = fs.read_stats(SYSTEM_SLICE)
    assert (system.usage, system.anon, system.file, system.shmem) == (11583053824, 3531862016, 7489388544, 675840)
    assert system.nr_procs == 0  # the 5.12 sample has no cgroup.procs


def test_read_stats_v2_real_limit(tmp_path):
    rel = "v2/kernel-6.x-telegraf-capture"
    st = v2_host(tmp_path, cgroups={"/workload.slice": rel}).fs().read_stats("/workload.slice")
    assert (st.usage, st.limit) == (13071106048, 103079215104)
    assert (st.anon, st.file, st.shmem) == (2471755776, 8532865024, 4096)
    assert st.pressure == expected_pressure(f"{rel}/memory.pressure")


def test_read_stats_v2_oomd_fixture_without_min_low_files(tmp_path):
    # oomd's 4.x fixture has no memory.min / memory.low: protection 0. (Its PSI values are synthetic.)
    assert not (sample(V2_OOMD) / "memory.low").exists()
    st = v2_host(tmp_path, cgroups={SYSTEM_SLICE: V2_OOMD}).fs().read_stats(SYSTEM_SLICE)
    stat = sample_keyed(f"{V2_OOMD}/memory.stat")
    assert (st.usage, st.limit, st.anon, st.file, st.shmem) == (
        sample_int(f"{V2_OOMD}/memory.current"), None, stat["anon"], stat["file"], stat["shmem"],
    )
    assert st.protection == 0
    assert st.pressure == expected_pressure(f"{V2_OOMD}/memory.pressure")


@pytest.mark.parametrize(("low", "min_", "expected"), [
    ("536870912", "268435456", 536870912),  # MemoryLow=512M, MemoryMin=256M: the larger
    ("268435456", "536870912", 536870912),
    ("0", "268435456", 268435456),
])
def test_read_stats_v2_protection_is_max_of_min_and_low(tmp_path, low, min_, expected):
    # memory.min / memory.low are knobs: the kernel prints back what systemd or an admin wrote.
    host = v2_host(tmp_path)
    d = host.cgroup_dir("unified", SESSION_SCOPE)
    (d / "memory.low").write_text(low + "\n")
    (d / "memory.min").write_text(min_ + "\n")
    assert host.fs().read_stats(SESSION_SCOPE).protection == expected


def test_read_stats_v2_protection_max_means_fully_protected(tmp_path):
    host = v2_host(tmp_path)
    d = host.cgroup_dir("unified", SESSION_SCOPE)
    # "max" exactly as the kernel prints it in this sample's own memory.max.
    (d / "memory.low").write_text(sample_text(f"{V2_SESSION}/memory.max"))
    st = host.fs().read_stats(SESSION_SCOPE)
    assert st.protection >= st.usage


def test_read_stats_v2_experimental_psi_format_gives_no_pressure(tmp_path):
    host = v2_host(tmp_path)
    d = host.cgroup_dir("unified", SESSION_SCOPE)
    (d / "memory.pressure").write_text(sample_text(AGGR_PSI))
    st = host.fs().read_stats(SESSION_SCOPE)
    assert st.pressure is None
    assert st.usage == sample_int(f"{V2_SESSION}/memory.current")


def test_read_stats_v2_root_comes_from_meminfo_with_host_psi(tmp_path):
    # The cgroup2 root has no memory.current: /proc/meminfo speaks for it (oomd: MemTotal - MemFree).
    host = v2_host(tmp_path)
    host.add_process(1, "proc-self-cgroup/v2-unified-host-init-scope-opensuse-kubic", statm=True)
    st = host.fs().read_stats("/")
    info = {ln.split(":")[0]: int(ln.split()[1]) * 1024 for ln in (host.proc / "meminfo").read_text().splitlines()
            if ln.split()[-1] == "kB"}
    assert st.memory_estimated is False
    assert st.usage == info["MemTotal"] - info["MemFree"]
    assert (st.anon, st.file, st.shmem) == (info["AnonPages"], info["Cached"], info["Shmem"])
    assert st.limit is None
    assert st.pressure == expected_pressure(PSI_618)
    assert st.nr_procs == 15  # the session's 14 and PID 1 in init.scope


def test_cgroup_stats_is_what_read_stats_returns(tmp_path):
    st = v2_host(tmp_path).fs().read_stats(SESSION_SCOPE)
    assert isinstance(st, CgroupStats)
    assert st.path == SESSION_SCOPE


# ---- /proc/PID/stat: kernel threads, and a dry-run walk over a fixture cgroup -------------------------------------


def _flags(stat: str) -> int:
    return int(stat.rsplit(")", 1)[1].split()[6])


def _kthread_stat() -> str:
    try:
        stat = live_proc_text("stat", 2)
    except OSError:
        pytest.skip("no /proc/2 here")
    if not _flags(stat) & PF_KTHREAD:
        pytest.skip("PID 2 is not a kernel thread here (PID namespace?)")
    return stat


def test_is_kernel_thread_on_live_stat_copies(tmp_path):
    host = v1_host(tmp_path)
    own = live_proc_text("stat")
    kthread = _kthread_stat()
    host.add_process(10, stat=own)
    host.add_process(20, stat=kthread)
    # The command name may hold spaces and parentheses: the same lines with a hostile comm.
    i, j = own.index("("), own.rindex(")")
    host.add_process(11, stat=own[:i] + "(x) S 2 2 (y)" + own[j + 1:])
    i, j = kthread.index("("), kthread.rindex(")")
    host.add_process(21, stat=kthread[:i] + "(a) R 1 (b c)" + kthread[j + 1:])
    proc = str(host.proc)
    assert not is_kernel_thread(10, proc) and not is_kernel_thread(11, proc)
    assert is_kernel_thread(20, proc) and is_kernel_thread(21, proc)
    assert not is_kernel_thread(30, proc)  # gone


def test_signal_cgroup_dry_run_lists_and_checks_without_signalling(tmp_path):
    host = v1_host(tmp_path)
    members = sorted(sample_pids(f"{V1_EKS}/cgroup.procs"))
    kthread, refused = members[0], members[1]
    host.add_process(kthread, stat=_kthread_stat())
    for pid in members[2:]:
        host.add_process(pid, stat=live_proc_text("stat"))
    report = signal_cgroup(
        host.fs(), EKS_CONTAINER, 0, deadline=0.0,  # signal 0 sends nothing, even if dry-run failed
        refuse_pid=lambda pid: "the daemon" if pid == refused else None, dry_run=True,
    )
    assert report.rounds == 1
    assert report.signalled == members[2:]
    assert report.skipped == {kthread: "kernel thread", refused: "the daemon"}
    assert report.remaining == []


def test_fixture_location_is_inside_the_repository():
    assert FIXTURES.is_dir() and (FIXTURES / "SOURCES.md").is_file()
    if "PYOOMD_FIXTURES" not in os.environ:
        assert Path(__file__).resolve().parent / "fixtures" / "kernel-samples" == FIXTURES


def test_tick_reads_each_file_once_then_afresh(tmp_path):
    host = v1_host(tmp_path)
    fs = host.fs()
    d = host.cgroup_dir("memory", EKS_CONTAINER)
    before = sample_int(f"{V1_EKS}/memory.usage_in_bytes")
    after = sample_int(f"{V1_EKS}/memory.max_usage_in_bytes")  # another real figure of the same cgroup
    assert before != after
    with fs.tick():
        assert fs.read_stats(EKS_CONTAINER).usage == before
        (d / "memory.usage_in_bytes").write_text(f"{after}\n")
        write_procs(d, [])
        again = fs.read_stats(EKS_CONTAINER)
        assert again.usage == before  # the tick's first reading
        assert again.nr_procs == 12
    now = fs.read_stats(EKS_CONTAINER)
    assert now.usage == after
    assert now.nr_procs == 0  # an empty cgroup.procs, read afresh
