"""cgroupfs.layout on every real mountinfo sample, and cgroupfs.tree's navigation (resolve, identity, members,
pid_in, own_paths) on fixture trees of each layout.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cgroupfs.layout import Hierarchy, Layout, LayoutError, detect_layout, layout_from_mountinfo, parse_mountinfo
from cgroupfs.tree import CgroupFS, CgroupPathError, is_under, normalize
from tests.fixture_trees import (
    AWS_DOCKER,
    AWS_DOCKER_PID,
    EKS_CONTAINER,
    EKS_PID,
    FIXTURES,
    SESSION_SCOPE,
    SYSTEM_SLICE,
    THIS_MACHINE_CHILD,
    UBUNTU_SERVICE,
    UBUNTU_SERVICE_PID,
    V1_CHILD,
    V1_EKS,
    V2_HYBRID_CHILD,
    V2_SESSION,
    hybrid_host,
    proc_cgroup_path,
    sample,
    sample_lines,
    sample_pids,
    sample_text,
    v1_host,
    v2_host,
)

CG = "/sys/fs/cgroup"
# The root field of the v1 bind mounts inside that Docker container (every hierarchy shows the same cgroup).
DOCKER_V1_SCOPE = "/system.slice/docker-dc4eaa1a34ec4d593bc0125d31eea823a1d76ae483aeb1409cca80304e34da2e.scope"

# file -> (kind, memory mount point, memory root, unified mount point or None), as read from each sample.
EXPECTED = {
    "v1-legacy-fedora20-docker-host": ("v1", f"{CG}/memory", "/", None),
    "v1-legacy-amzn2-eks-node-arm64": ("v1", f"{CG}/memory", "/", None),
    "v1-legacy-ubuntu1404-cgroup-lite": ("v1", f"{CG}/memory", "/", None),
    "v1-docker-container-subpaths-ubuntu-aufs": ("v1", f"{CG}/memory", DOCKER_V1_SCOPE, None),
    "hybrid-ubuntu1804": ("hybrid", f"{CG}/memory", "/", f"{CG}/unified"),
    "hybrid-systemd232-cgroup2-at-systemd-fedora": ("hybrid", f"{CG}/memory", "/", f"{CG}/systemd"),
    "hybrid-cgroup-lines-only-ubuntu-5.13plus": ("hybrid", f"{CG}/memory", "/", f"{CG}/unified"),
    "this-machine-hybrid": ("hybrid", f"{CG}/memory", "/", f"{CG}/unified"),
    "v2-unified-host-opensuse-kubic": ("v2", CG, "/", CG),
    "v2-unified-host-seen-from-container-cgroupns-opensuse-tumbleweed": ("v2", CG, "/../..", CG),
    "v2-container-cgroupns-docker-k8s-ubuntu2110": ("v2", CG, "/", CG),
    "v2-container-cgroupns-docker-ubuntu": ("v2", CG, "/", CG),
    # Without a cgroup namespace the mount's root is the container's cgroup, the very path its processes'
    # /proc/PID/cgroup shows (the paired samples).
    "v2-container-no-cgroupns-crio-opensuse-kubic": (
        "v2", CG, proc_cgroup_path("proc-self-cgroup/v2-container-no-cgroupns-crio", ""), CG,
    ),
    "v2-container-no-cgroupns-containerd-ubuntu": (
        "v2", CG, proc_cgroup_path("proc-self-cgroup/v2-container-no-cgroupns-containerd", ""), CG,
    ),
    "v2-container-seen-from-other-cgroupns-docker-opensuse": (
        "v2", CG, proc_cgroup_path("proc-self-cgroup/v2-container-seen-from-other-cgroupns-docker", ""), CG,
    ),
}


def mountinfo(name: str) -> str:
    return sample_text(f"mountinfo/{name}")


def cgroup_lines(text: str) -> list[tuple[str, str, str, str]]:
    """(fstype, root, mount point, super options) of every cgroup/cgroup2 line, split here independently."""
    out = []
    for line in text.splitlines():
        pre, _, post = line.partition(" - ")
        post_f = post.split()
        if post_f and post_f[0] in ("cgroup", "cgroup2"):
            pre_f = pre.split()
            out.append((post_f[0], pre_f[3], pre_f[4], post_f[2]))
    return out


# ---- every mountinfo sample ------------------------------------------------------------------------------------


def test_every_mountinfo_sample_has_an_expectation():
    assert sorted(p.name for p in sample("mountinfo").iterdir()) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_layout_of_each_sample(name):
    kind, memory_mp, memory_root, unified_mp = EXPECTED[name]
    layout = layout_from_mountinfo(mountinfo(name))
    assert layout.kind == kind
    assert layout.memory is not None
    assert layout.memory.mount_point == memory_mp
    assert layout.memory.root == memory_root
    if unified_mp is None:
        assert layout.unified is None
    else:
        assert layout.unified is not None
        assert layout.unified.mount_point == unified_mp
    if kind == "v2":
        assert layout.memory is layout.unified
        assert layout.memory.version == 2 and layout.memory.controllers == ()
    else:
        assert layout.memory.version == 1 and layout.memory.controllers == ("memory",)
        assert layout.v1("memory") is layout.memory


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_parse_mountinfo_keeps_every_cgroup_mount_with_its_fields(name):
    text = mountinfo(name)
    lines = cgroup_lines(text)
    hierarchies = parse_mountinfo(text)
    # No sample mounts one hierarchy twice, so every cgroup line is one hierarchy, in file order.
    assert len(hierarchies) == len(lines)
    for h, (fstype, root, mount_point, super_opts) in zip(hierarchies, lines, strict=True):
        assert h.version == (2 if fstype == "cgroup2" else 1)
        assert h.root == root
        assert h.mount_point == mount_point
        if h.version == 2:
            assert h.controllers == ()
        else:
            opts = super_opts.split(",")
            assert set(h.controllers) <= set(opts)
            assert list(h.controllers) == sorted(h.controllers)
            # Mount flags are not controllers.
            for flag in ("rw", "xattr", "clone_children"):
                assert flag not in h.controllers
            assert not any(c.startswith("release_agent=") for c in h.controllers)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_layout_from_each_file_is_stable(name):
    assert layout_from_mountinfo(sample(f"mountinfo/{name}").read_text()) == layout_from_mountinfo(mountinfo(name))


def test_detect_layout_on_this_host_reads_mounts_controllers_and_namespace():
    if not Path("/sys/fs/cgroup/memory/memory.stat").exists():
        pytest.skip("not this project's hybrid test machine")
    layout = detect_layout()
    assert layout.kind == "hybrid"
    assert layout.memory.mount_point == "/sys/fs/cgroup/memory"
    assert layout.unified_controllers is not None and "memory" not in layout.unified_controllers
    assert layout.cgroup_namespace is False
    assert layout.describe().endswith("(memory accounted in v1)")


def test_detect_layout_refuses_an_unreadable_hierarchy(tmp_path):
    text = mountinfo("this-machine-hybrid").replace("/sys/fs/cgroup/memory", str(tmp_path / "missing"))
    (tmp_path / "mountinfo").write_text(text)
    with pytest.raises(LayoutError, match=f"cannot read the cgroup hierarchy at {tmp_path}/missing"):
        detect_layout(tmp_path / "mountinfo")


def test_memory_disabled_by_the_kernel_says_how_to_enable_it():
    text = "".join(ln + "\n" for ln in mountinfo("this-machine-hybrid").splitlines() if "rw,memory" not in ln)
    cgroups = sample("proc/this-machine-6.18/cgroups").read_text().replace("memory\t4\t32\t1", "memory\t0\t1\t0")
    with pytest.raises(LayoutError, match="boot with cgroup_enable=memory"):
        layout_from_mountinfo(text, proc_cgroups=cgroups)
    with pytest.raises(LayoutError, match="mount -t cgroup -o memory"):
        layout_from_mountinfo(text, proc_cgroups=sample("proc/this-machine-6.18/cgroups").read_text())


def test_hybrid_with_memory_in_cgroup2_accounts_memory_there():
    # A hybrid host booted with cgroup_no_v1=memory: no v1 memory mount, memory offered by cgroup2.
    text = "".join(ln + "\n" for ln in mountinfo("this-machine-hybrid").splitlines() if "rw,memory" not in ln)
    layout = layout_from_mountinfo(text, unified_controllers=("memory", "pids"))
    assert layout.kind == "hybrid"
    assert layout.memory is layout.unified
    assert "memory accounted in cgroup2" in layout.describe()


def test_pure_v2_without_the_memory_controller_is_an_error():
    with pytest.raises(LayoutError, match="cgroup2 offers no memory controller"):
        layout_from_mountinfo(mountinfo("v2-unified-host-opensuse-kubic"), unified_controllers=("cpu", "io"))


# ---- co-mounted controllers and named hierarchies ----------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["v1-legacy-amzn2-eks-node-arm64", "v1-docker-container-subpaths-ubuntu-aufs", "hybrid-ubuntu1804",
     "hybrid-systemd232-cgroup2-at-systemd-fedora", "hybrid-cgroup-lines-only-ubuntu-5.13plus"],
)
def test_co_mounted_cpu_cpuacct_and_net_cls_net_prio(name):
    layout = layout_from_mountinfo(mountinfo(name))
    cpu, net = layout.v1("cpu"), layout.v1("net_cls")
    assert cpu is not None and net is not None
    assert cpu is layout.v1("cpuacct")
    assert cpu.controllers == ("cpu", "cpuacct")
    assert cpu.mount_point == f"{CG}/cpu,cpuacct"
    assert net is layout.v1("net_prio")
    assert net.controllers == ("net_cls", "net_prio")
    assert net.mount_point == f"{CG}/net_cls,net_prio"
    assert layout.controller_map()["cpuacct"] == f"{CG}/cpu,cpuacct"


def test_fedora20_old_option_order_and_clone_children():
    # `rw,cpuacct,cpu,clone_children`: 3.x order, plus a mount flag among the options; net_cls is on its own.
    layout = layout_from_mountinfo(mountinfo("v1-legacy-fedora20-docker-host"))
    assert layout.v1("cpu").controllers == ("cpu", "cpuacct")
    assert layout.v1("memory").controllers == ("memory",)
    assert layout.v1("net_cls").controllers == ("net_cls",)
    assert layout.v1("net_prio") is None
    assert layout.v1("pids") is None  # not mounted on that host
    assert layout.v1("name=systemd").mount_point == f"{CG}/systemd"


def test_ubuntu1404_every_controller_on_its_own():
    layout = layout_from_mountinfo(mountinfo("v1-legacy-ubuntu1404-cgroup-lite"))
    assert layout.v1("cpu").mount_point == f"{CG}/cpu"
    assert layout.v1("cpuacct").mount_point == f"{CG}/cpuacct"
    assert layout.v1("cpu") is not layout.v1("cpuacct")
    assert layout.v1("name=systemd").controllers == ("name=systemd",)


def test_early_hybrid_cgroup2_at_systemd():
    # systemd 232: cgroup2 sits where the name=systemd hierarchy later went; there is no name=systemd v1 mount.
    layout = layout_from_mountinfo(mountinfo("hybrid-systemd232-cgroup2-at-systemd-fedora"))
    assert layout.unified.mount_point == f"{CG}/systemd"
    assert layout.v1("name=systemd") is None
    assert layout.memory.mount_point == f"{CG}/memory"
    assert "unified=/sys/fs/cgroup/systemd" in layout.describe().split()


def test_describe_this_machine():
    layout = layout_from_mountinfo(mountinfo("this-machine-hybrid"))
    mounts = {c: f"{CG}/{c}" for c in ("blkio", "cpu", "cpuacct", "cpuset", "devices", "freezer", "memory", "pids")}
    mounts |= {"name=systemd": f"{CG}/systemd", "unified": f"{CG}/unified"}
    assert layout.controller_map() == mounts
    assert layout.describe() == "cgroup layout hybrid: " + " ".join(
        f"{k}={v}" for k, v in sorted(mounts.items())) + " (memory accounted in v1)"


def test_describe_says_when_the_view_is_a_containers():
    layout = layout_from_mountinfo(mountinfo("v1-docker-container-subpaths-ubuntu-aufs"), cgroup_namespace=True)
    assert "inside a cgroup namespace" in layout.describe()
    assert "container view of /system.slice/docker-" in layout.describe()


def test_hybrid_1804_has_name_systemd_and_rdma():
    layout = layout_from_mountinfo(mountinfo("hybrid-ubuntu1804"))
    assert layout.v1("name=systemd").mount_point == f"{CG}/systemd"
    assert layout.v1("rdma").mount_point == f"{CG}/rdma"
    assert layout.v1("misc") is None


def test_docker_container_bind_mounts_keep_their_root():
    layout = layout_from_mountinfo(mountinfo("v1-docker-container-subpaths-ubuntu-aufs"))
    assert {h.root for h in layout.hierarchies} == {DOCKER_V1_SCOPE}
    perf = layout.v1("perf_event")
    assert perf.controllers == ("perf_event",)  # release_agent=/run/cgmanager/... is an option, not a controller
    assert layout.v1("cpuset").controllers == ("cpuset",)  # clone_children dropped


# ---- escapes, first mount wins, errors (inputs derived from real lines) ----------------------------------------


def _line_of(name: str, needle: str) -> str:
    (line,) = [ln for ln in sample_lines(f"mountinfo/{name}") if needle in ln]
    return line


def test_octal_escapes_in_root_and_mount_point():
    # The real memory line of this machine, with its mount point and root rewritten in the escaped form the
    # kernel prints for a space (\040), a tab (\011) and a backslash (\134).
    line = _line_of("this-machine-hybrid", " - cgroup cgroup rw,memory")
    assert line.split()[3:5] == ["/", f"{CG}/memory"]
    fields = line.split(" ")
    fields[3] = r"/my\040slice/a\011b\134c"
    fields[4] = r"/mnt/cgroup\040v1/memory"
    (h,) = parse_mountinfo(" ".join(fields) + "\n")
    assert h.mount_point == "/mnt/cgroup v1/memory"
    assert h.root == "/my slice/a\tb\\c"
    assert h.dir_of("/x") == Path("/mnt/cgroup v1/memory/x")


def test_a_second_mount_of_the_same_hierarchy_is_a_bind_mount_first_wins():
    text = mountinfo("this-machine-hybrid")
    memory = _line_of("this-machine-hybrid", " - cgroup cgroup rw,memory")
    unified = _line_of("this-machine-hybrid", " - cgroup2 ")
    # The same lines mounted again elsewhere (as a container runtime's bind mounts would appear later).
    again = memory.replace(f"{CG}/memory", "/var/lib/ctr/memory") + "\n"
    again += unified.replace(f"{CG}/unified", "/var/lib/ctr/unified") + "\n"
    layout = layout_from_mountinfo(text + again)
    assert layout.memory.mount_point == f"{CG}/memory"
    assert layout.unified.mount_point == f"{CG}/unified"
    assert len(layout.hierarchies) == len(cgroup_lines(text))


def test_no_cgroup_mount_is_a_layout_error():
    lines = sample_lines("mountinfo/v2-unified-host-opensuse-kubic")
    text = "".join(ln + "\n" for ln in lines if " - cgroup" not in ln)
    assert parse_mountinfo(text) == []
    with pytest.raises(LayoutError, match="no cgroup hierarchy"):
        layout_from_mountinfo(text)
    with pytest.raises(LayoutError):
        layout_from_mountinfo("")


@pytest.mark.parametrize("name", ["v1-legacy-amzn2-eks-node-arm64", "this-machine-hybrid", "hybrid-ubuntu1804"])
def test_no_memory_controller_is_a_layout_error(name):
    text = "".join(ln + "\n" for ln in sample_lines(f"mountinfo/{name}") if not ln.endswith(",memory"))
    assert len(cgroup_lines(text)) == len(cgroup_lines(mountinfo(name))) - 1
    with pytest.raises(LayoutError, match="memory"):
        layout_from_mountinfo(text)


def test_only_a_named_v1_hierarchy_is_a_layout_error():
    text = _line_of("this-machine-hybrid", "name=systemd") + "\n"
    assert parse_mountinfo(text)[0].controllers == ("name=systemd",)
    with pytest.raises(LayoutError):
        layout_from_mountinfo(text)


def test_hand_built_hierarchy_dir_of(tmp_path):
    h = Hierarchy(version=1, controllers=("memory",), mount_point=str(tmp_path / "memory"), root="/")
    assert h.dir_of("/") == tmp_path / "memory"
    assert h.dir_of("/a/b") == tmp_path / "memory" / "a" / "b"
    layout = Layout(kind="v1", hierarchies=(h,))
    assert layout.memory is h and layout.unified is None


# ---- path helpers ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "norm"),
    [("system.slice/x", "/system.slice/x"), ("/system.slice/x/", "/system.slice/x"), ("/", "/"), ("", "/"),
     ("//a//./b", "/a/b")],
)
def test_normalize(raw, norm):
    assert normalize(raw) == norm


def test_normalize_refuses_dotdot():
    with pytest.raises(CgroupPathError):
        normalize("/a/../b")


def test_is_under():
    assert is_under("/a/b", "/a") and is_under("/a", "/a") and is_under("/a", "/")
    assert not is_under("/ab", "/a") and not is_under("/a", "/a/b")


# ---- resolve -----------------------------------------------------------------------------------------------------


def test_resolve_v1_globs_per_component(tmp_path):
    fs = v1_host(tmp_path).fs()
    assert fs.resolve(["/"]) == ["/"]
    assert fs.resolve(["/*"]) == sorted(
        {"/" + p.split("/")[1] for p in (UBUNTU_SERVICE, EKS_CONTAINER, AWS_DOCKER, THIS_MACHINE_CHILD)}
    )
    assert fs.resolve(["system.slice/*"]) == [UBUNTU_SERVICE]
    assert fs.resolve(["/kubepods.slice/*/*/cri-containerd-*.scope"]) == [EKS_CONTAINER]
    # A '*' never crosses a '/'.
    assert fs.resolve(["/kubepods.slice/*"]) == ["/" + "/".join(EKS_CONTAINER.split("/")[1:3])]
    assert fs.resolve(["/docker/*", "/process_api/*", "/docker/*"]) == sorted([AWS_DOCKER, THIS_MACHINE_CHILD])
    assert fs.resolve(["/nonexistent/*", "/nope"]) == []


def test_resolve_only_directories(tmp_path):
    fs = v1_host(tmp_path).fs()
    # The sample directories are full of files (memory.stat, cgroup.procs, ...): none is a cgroup.
    assert fs.resolve([f"{UBUNTU_SERVICE}/*"]) == []
    assert fs.resolve([f"{UBUNTU_SERVICE}/memory.stat"]) == []
    assert fs.resolve(["/memory.*"]) == []
    # The amzn2 sample has a freezer/ subdirectory; it was not copied, so the container has no child either.
    assert fs.resolve([f"{EKS_CONTAINER}/*"]) == []


def test_resolve_refuses_dotdot(tmp_path):
    fs = v1_host(tmp_path).fs()
    with pytest.raises(CgroupPathError):
        fs.resolve(["/system.slice/../kubepods.slice"])


def test_resolve_hybrid_is_the_union_of_memory_and_unified(tmp_path):
    host = hybrid_host(tmp_path)
    host.add_cgroup("unified", "/only-in-unified/leaf", V2_HYBRID_CHILD)
    fs = host.fs()
    top = {"/process_api", "/system.slice", "/only-in-unified"}
    assert fs.resolve(["/*"]) == sorted(top)
    assert fs.resolve(["/*/*"]) == sorted([THIS_MACHINE_CHILD, UBUNTU_SERVICE, "/only-in-unified/leaf"])
    # UBUNTU_SERVICE exists in both hierarchies: listed once.
    assert fs.resolve(["/system.slice/*"]) == [UBUNTU_SERVICE]


@pytest.mark.parametrize(
    "mi", ["mountinfo/this-machine-hybrid", "mountinfo/hybrid-systemd232-cgroup2-at-systemd-fedora"]
)
def test_resolve_hybrid_each_mount_form(tmp_path, mi):
    host = hybrid_host(tmp_path, mi)
    host.add_cgroup("unified", "/u", V2_HYBRID_CHILD)
    assert host.fs().resolve(["/u", "/process_api/*"]) == sorted(["/u", THIS_MACHINE_CHILD])


def test_resolve_v2(tmp_path):
    fs = v2_host(tmp_path).fs()
    assert fs.resolve(["/*"]) == ["/init.scope", SYSTEM_SLICE, "/user.slice"]
    assert fs.resolve(["/user.slice/*/session-*.scope"]) == [SESSION_SCOPE]
    assert fs.resolve(["/*.slice"]) == [SYSTEM_SLICE, "/user.slice"]


# ---- identity, members ---------------------------------------------------------------------------------------------


def test_identity_is_the_primary_directory_inode(tmp_path):
    host = hybrid_host(tmp_path)
    host.add_cgroup("unified", "/only-in-unified", V2_HYBRID_CHILD)
    fs = host.fs()
    # In both hierarchies: the memory cgroup is the primary directory.
    assert fs.identity(UBUNTU_SERVICE) == os.stat(host.cgroup_dir("memory", UBUNTU_SERVICE)).st_ino
    assert fs.identity(UBUNTU_SERVICE) != os.stat(host.cgroup_dir("unified", UBUNTU_SERVICE)).st_ino
    assert fs.identity("/only-in-unified") == os.stat(host.cgroup_dir("unified", "/only-in-unified")).st_ino
    assert fs.identity("/gone") is None


def test_members_v1_from_the_samples_cgroup_procs(tmp_path):
    fs = v1_host(tmp_path).fs()
    assert fs.members(EKS_CONTAINER) == sample_pids(f"{V1_EKS}/cgroup.procs")
    assert len(fs.members(EKS_CONTAINER)) == 12
    assert fs.members(UBUNTU_SERVICE) == {UBUNTU_SERVICE_PID}
    assert fs.members(THIS_MACHINE_CHILD) == sample_pids(f"{V1_CHILD}/cgroup.procs")
    assert fs.members("/nonexistent") == set()


def test_members_are_recursive(tmp_path):
    fs = v1_host(tmp_path).fs()
    everyone = (
        sample_pids(f"{V1_EKS}/cgroup.procs") | sample_pids(f"{V1_CHILD}/cgroup.procs")
        | {UBUNTU_SERVICE_PID, AWS_DOCKER_PID}
    )
    # The root sample has no cgroup.procs (it was not captured): its members are its descendants'.
    assert fs.members("/") == everyone
    assert fs.members("/kubepods.slice") == sample_pids(f"{V1_EKS}/cgroup.procs")


def test_members_v2_session_scope(tmp_path):
    fs = v2_host(tmp_path).fs()
    assert fs.members(SESSION_SCOPE) == sample_pids(f"{V2_SESSION}/cgroup.procs")
    assert len(fs.members(SESSION_SCOPE)) == 14
    assert fs.members("/user.slice") == fs.members(SESSION_SCOPE)
    assert fs.members(SYSTEM_SLICE) == set()  # the 5.12 sample has no cgroup.procs


def test_members_hybrid_come_from_the_memory_hierarchy(tmp_path):
    host = hybrid_host(tmp_path)
    host.add_cgroup("unified", THIS_MACHINE_CHILD, V2_HYBRID_CHILD, procs=[1])  # a twin holding another process
    assert host.fs().members(THIS_MACHINE_CHILD) == sample_pids(f"{V1_CHILD}/cgroup.procs")


# ---- pid_in, own_paths -------------------------------------------------------------------------------------------


def test_pid_in_v1_uses_the_memory_line(tmp_path):
    fs = v1_host(tmp_path).fs()
    assert fs.pid_in(EKS_PID, EKS_CONTAINER)
    assert fs.pid_in(EKS_PID, "/kubepods.slice")
    assert fs.pid_in(EKS_PID, "/")
    assert not fs.pid_in(EKS_PID, UBUNTU_SERVICE)
    assert fs.pid_in(AWS_DOCKER_PID, AWS_DOCKER)
    assert fs.pid_in(UBUNTU_SERVICE_PID, UBUNTU_SERVICE)
    assert not fs.pid_in(UBUNTU_SERVICE_PID, "/system.slice/other.service")
    assert not fs.pid_in(EKS_PID, "/nonexistent")  # no such cgroup
    assert not fs.pid_in(4242424, EKS_CONTAINER)  # no /proc entry: gone


def test_pid_in_hybrid_unified_only_path_uses_the_cgroup2_line(tmp_path):
    # hybrid-desktop-gnome-terminal: memory:/ but 0::/user.slice/.../gnome-terminal-server.service.
    host = hybrid_host(tmp_path)
    rel = "proc-self-cgroup/hybrid-desktop-gnome-terminal"
    unit = proc_cgroup_path(rel, "")
    assert proc_cgroup_path(rel, "memory") == "/"
    host.add_cgroup("unified", unit, V2_HYBRID_CHILD, procs=[4321])
    host.add_process(4321, rel)
    fs = host.fs()
    assert fs.pid_in(4321, unit)
    assert fs.pid_in(4321, "/user.slice")
    # UBUNTU_SERVICE exists in memory: there the memory line counts, and it says "/".
    assert not fs.pid_in(4321, UBUNTU_SERVICE)


def test_pid_in_v2_host(tmp_path):
    fs = v2_host(tmp_path).fs()
    assert fs.pid_in(1, "/init.scope")
    assert not fs.pid_in(1, SYSTEM_SLICE)


def test_own_paths_every_hierarchy_with_ancestors(tmp_path):
    fs = v1_host(tmp_path).fs()
    assert fs.own_paths(UBUNTU_SERVICE_PID) == {"/", "/system.slice", UBUNTU_SERVICE}
    parts = EKS_CONTAINER.split("/")
    assert fs.own_paths(EKS_PID) == {"/"} | {"/".join(parts[:i]) for i in range(2, len(parts) + 1)}
    assert fs.own_paths(4242424) == {"/"}


def test_own_paths_this_machine_and_gnome_terminal(tmp_path):
    host = hybrid_host(tmp_path)
    host.add_process(11, "proc-self-cgroup/this-machine-hybrid")
    host.add_process(12, "proc-self-cgroup/hybrid-desktop-gnome-terminal")
    fs = host.fs()
    assert fs.own_paths(11) == {"/", "/process_api", THIS_MACHINE_CHILD}
    term = proc_cgroup_path("proc-self-cgroup/hybrid-desktop-gnome-terminal", "")
    user = "/user.slice/user-1000.slice"
    assert fs.own_paths(12) == {"/", "/user.slice", user, f"{user}/user@1000.service", term}


# ---- the mount's root field is not applied to /proc/PID/cgroup paths ------------------------------------------


def _tumbleweed_host(tmp_path):
    """A pure v2 host's mountinfo as read inside a container's cgroup namespace (root field `/../..`), and the
    host's PID 1 as that same reader sees it (`0::/../../init.scope`): the paired samples."""
    host = v2_host(tmp_path, "mountinfo/v2-unified-host-seen-from-container-cgroupns-opensuse-tumbleweed", cgroups={})
    host.add_process(1, "proc-self-cgroup/v2-host-pid1-seen-from-container-cgroupns-opensuse-tumbleweed")
    return host


def test_tumbleweed_pair_as_read():
    assert layout_from_mountinfo(
        mountinfo("v2-unified-host-seen-from-container-cgroupns-opensuse-tumbleweed")
    ).unified.root == "/../.."
    path = proc_cgroup_path("proc-self-cgroup/v2-host-pid1-seen-from-container-cgroupns-opensuse-tumbleweed", "")
    assert path == "/../../init.scope"


def test_cgroupns_mount_pid1_is_a_member_of_init_scope(tmp_path):
    fs = _tumbleweed_host(tmp_path).fs()
    # The mount shows the host's root at its mount point, so init.scope is "/init.scope" there.
    assert fs.members("/init.scope") == {1}


def test_cgroupns_mount_pid_in_applies_the_mount_root(tmp_path):
    fs = _tumbleweed_host(tmp_path).fs()
    assert fs.pid_in(1, "/init.scope")


def test_cgroupns_mount_own_paths_applies_the_mount_root(tmp_path):
    fs = _tumbleweed_host(tmp_path).fs()
    assert fs.own_paths(1) == {"/", "/init.scope"}


def test_bind_mounted_container_own_paths_are_mount_relative(tmp_path):
    host = v2_host(tmp_path, "mountinfo/v2-container-no-cgroupns-crio-opensuse-kubic", cgroups={}, init_scope=False)
    rel = "proc-self-cgroup/v2-container-no-cgroupns-crio"
    assert host.layout.unified.root == proc_cgroup_path(rel, "")
    host.add_cgroup("unified", "/", procs=[77])
    host.add_process(77, rel)
    fs = host.fs()
    assert fs.members("/") == {77}
    assert fs.own_paths(77) == {"/"}


def test_bind_mounted_container_pid_in_root(tmp_path):
    host = v2_host(tmp_path, "mountinfo/v2-container-no-cgroupns-crio-opensuse-kubic", cgroups={}, init_scope=False)
    host.add_process(77, "proc-self-cgroup/v2-container-no-cgroupns-crio")
    assert host.fs().pid_in(77, "/")


def test_cgroupfs_accepts_a_hand_built_layout(tmp_path):
    mem = Hierarchy(version=1, controllers=("memory",), mount_point=str(tmp_path / "m"), root="/")
    uni = Hierarchy(version=2, controllers=(), mount_point=str(tmp_path / "u"), root="/")
    (tmp_path / "m" / "a").mkdir(parents=True)
    (tmp_path / "u" / "b").mkdir(parents=True)
    fs = CgroupFS(Layout(kind="hybrid", hierarchies=(mem, uni)), proc=tmp_path / "proc")
    assert fs.resolve(["/*"]) == ["/a", "/b"]
    assert fs.locate("/a") == (mem, tmp_path / "m" / "a")
    assert fs.locate("/b") == (uni, tmp_path / "u" / "b")
    assert fs.locate("/c") is None
    assert FIXTURES.is_dir()
