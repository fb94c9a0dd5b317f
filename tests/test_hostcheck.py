"""`pyoomd check --host`: capabilities from the layout, what each pattern matches, and plugins a host can't serve."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cgroupfs import CgroupFS, detect_layout
from policy.hostcheck import CAPABILITIES, check_host, describe_host, host_capabilities
from policy.loader import Spots, load_policy_text
from policy.plugins.base import CGROUP_ARGS, REGISTRY, Plugin
from tests.fixture_trees import THIS_MACHINE_CHILD, UBUNTU_SERVICE, hybrid_host, v1_host, v2_host

REPO = Path(__file__).resolve().parent.parent


class NeedsMuch(Plugin):
    """A detector that asks for what the fixture hosts lack (registered only within a test)."""

    name = "test_needs_much"
    kinds = frozenset({"detector"})
    args = CGROUP_ARGS
    requires = frozenset({"v2", "systemd", "io.stat", "a-made-up-thing"})


@pytest.fixture
def needs_much(monkeypatch):
    monkeypatch.setitem(REGISTRY, NeedsMuch.name, NeedsMuch)


def systemd_run(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    (run / "systemd" / "system").mkdir(parents=True)
    return run


def test_capabilities_of_a_v2_host(tmp_path):
    host = v2_host(tmp_path)
    caps = host_capabilities(host.layout, host.proc, systemd_run(tmp_path))
    assert list(caps.missing) == ["v1"]
    assert caps.present == ["v2", "psi", "per-cgroup psi", "systemd", "io.stat"]


def test_capabilities_of_a_hybrid_host(tmp_path):
    host = hybrid_host(tmp_path)
    caps = host_capabilities(host.layout, host.proc, tmp_path / "run")
    assert set(caps.missing) == {"v2", "systemd", "io.stat"}
    assert caps.missing["v2"] == "memory is accounted in the v1 memory controller"
    assert caps.missing["io.stat"].startswith("cgroup2 does not have the io controller")


def test_capabilities_of_a_v1_host_without_psi(tmp_path):
    host = v1_host(tmp_path)  # a kernel from before PSI
    caps = host_capabilities(host.layout, host.proc, tmp_path / "run")
    assert set(caps.missing) == {"v2", "psi", "per-cgroup psi", "systemd", "io.stat"}
    assert caps.missing["per-cgroup psi"] == "the kernel has no PSI"
    assert caps.missing["io.stat"] == "no cgroup2 mount"


def test_describe_host_lists_what_is_missing_and_why(tmp_path):
    host = hybrid_host(tmp_path)
    lines = describe_host(host_capabilities(host.layout, host.proc, tmp_path / "run"))
    assert lines[0].startswith("cgroup layout hybrid")
    assert lines[1] == "offers: v1, psi, per-cgroup psi"
    assert "lacks v2: memory is accounted in the v1 memory controller" in lines


HYBRID_POLICY = f"""\
rulesets:
  - name: watch
    detectors:
      - name: g
        all:
          - pressure_above: {{cgroup: "/,{UBUNTU_SERVICE},{THIS_MACHINE_CHILD}", resource: memory, threshold: 60, duration: 30}}
          - test_needs_much: {{cgroup: nowhere/*}}
    actions:
      - kill_by_memory_size_or_growth: {{cgroup: "{THIS_MACHINE_CHILD}"}}
  - name: per cgroup
    cgroup: "{THIS_MACHINE_CHILD},gone/*"
    detectors:
      - name: g
        all:
          - continue: {{}}
    actions:
      - kill_by_memory_size_or_growth: {{ruleset_cgroup: /}}
"""


def test_findings_on_a_hybrid_fixture(tmp_path, needs_much):
    host = hybrid_host(tmp_path)
    spots: Spots = {}
    policy = load_policy_text(HYBRID_POLICY, "p.yaml", spots)
    caps = host_capabilities(host.layout, host.proc, tmp_path / "run")
    findings = [f.render("p.yaml") for f in check_host(policy, host.fs(), caps, spots)]
    assert findings == [
        "p.yaml:6:38: note: pressure_above cgroup: '/' matches 1 cgroup(s) now: /",
        f"p.yaml:6:38: note: pressure_above cgroup: '{UBUNTU_SERVICE}' matches 1 cgroup(s) now: {UBUNTU_SERVICE}",
        # its cgroup2 twin is from a 4.15 kernel: no memory.pressure
        f"p.yaml:6:38: warning: pressure_above: no memory PSI of their own here for {UBUNTU_SERVICE}: "
        "it cannot see their pressure",
        f"p.yaml:6:38: note: pressure_above cgroup: '{THIS_MACHINE_CHILD}' matches 1 cgroup(s) now: "
        f"{THIS_MACHINE_CHILD}",
        # no cgroup2 twin at all
        f"p.yaml:6:38: warning: pressure_above: no memory PSI of their own here for {THIS_MACHINE_CHILD}: "
        "it cannot see their pressure",
        "p.yaml:7:13: note: test_needs_much requires 'a-made-up-thing', which pyoomd check cannot judge",
        "p.yaml:7:13: warning: test_needs_much needs io.stat, which this host lacks: cgroup2 does not have the io "
        "controller (v1 blkio holds it)",
        "p.yaml:7:13: warning: test_needs_much needs systemd, which this host lacks: no "
        f"{tmp_path / 'run'}/systemd/system: systemd is not the init system here",
        "p.yaml:7:13: warning: test_needs_much needs v2, which this host lacks: memory is accounted in the v1 "
        "memory controller",
        "p.yaml:7:39: warning: test_needs_much cgroup: '/nowhere/*' matches nothing on this host now",
        f"p.yaml:9:49: note: kill_by_memory_size_or_growth cgroup: '{THIS_MACHINE_CHILD}' matches 1 cgroup(s) "
        f"now: {THIS_MACHINE_CHILD}",
        f"p.yaml:11:13: note: ruleset 'per cgroup': cgroup '{THIS_MACHINE_CHILD}' matches 1 cgroup(s) now: "
        f"{THIS_MACHINE_CHILD}",
        "p.yaml:11:13: warning: ruleset 'per cgroup': cgroup '/gone/*' matches nothing on this host now: the "
        "ruleset does not run",
        # ruleset_cgroup "/" under each of the ruleset's patterns
        f"p.yaml:17:57: note: kill_by_memory_size_or_growth ruleset_cgroup: '{THIS_MACHINE_CHILD}' matches 1 "
        f"cgroup(s) now: {THIS_MACHINE_CHILD}",
        "p.yaml:17:57: warning: kill_by_memory_size_or_growth ruleset_cgroup: '/gone/*' matches nothing on this "
        "host now",
    ]


def test_pressure_with_psi_of_its_own_on_v2(tmp_path):
    host = v2_host(tmp_path)
    text = HYBRID_POLICY.split("          - test_needs_much")[0].replace(
        f"/,{UBUNTU_SERVICE},{THIS_MACHINE_CHILD}", "system.slice") + "    actions: [continue: {}]\n"
    policy = load_policy_text(text, "p.yaml")
    caps = host_capabilities(host.layout, host.proc, systemd_run(tmp_path))
    findings = [f.render("p.yaml") for f in check_host(policy, host.fs(), caps)]
    # Without spots, findings name the file only; the v2 slice has its own memory.pressure: no warning.
    assert findings == ["p.yaml: note: pressure_above cgroup: '/system.slice' matches 1 cgroup(s) now: /system.slice"]


def test_long_match_lists_are_shortened(tmp_path):
    host = v2_host(tmp_path)
    for i in range(8):
        host.add_cgroup("unified", f"/system.slice/s{i}.service")
    policy = load_policy_text("rulesets: [{name: r, detectors: [{name: g, all: [continue: {}]}], actions: "
                              "[kill_by_memory_size_or_growth: {cgroup: system.slice/*}]}]", "p.yaml")
    caps = host_capabilities(host.layout, host.proc, systemd_run(tmp_path))
    (finding,) = check_host(policy, host.fs(), caps)
    assert finding.message.endswith("matches 8 cgroup(s) now: /system.slice/s0.service, /system.slice/s1.service, "
                                    "/system.slice/s2.service, /system.slice/s3.service, /system.slice/s4.service "
                                    "and 3 more")


def test_every_declared_requirement_is_known():
    from policy.plugins.registry import load_entry_points

    load_entry_points()
    unknown = {(name, need) for name, cls in REGISTRY.items() if cls.__module__.startswith("policy.")
               for need in cls.requires if need not in CAPABILITIES}
    assert not unknown


# ---- the command, on this host -------------------------------------------------------------------------------


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "supervisor", *args], cwd=REPO, capture_output=True, text=True,
                          env=env)


def test_check_host_on_this_host(cgroups, tmp_path):
    """Real cgroups: /NAME/a in the memory and cgroup2 hierarchies (a cgroup2 twin: PSI of its own), /NAME/b
    in the memory hierarchy only (no PSI of its own on a hybrid host)."""
    cgroups.mkdir()
    cgroups.mkdir("a")
    cgroups.mkdir("b", hierarchies=("memory",))
    cgroups.sleeper("a")
    cgroups.spawn("b", ["sleep", "1000"], hierarchies=("memory",))
    name = cgroups.name
    policy = tmp_path / "policy.yaml"
    policy.write_text(f"""\
version: 1
rulesets:
  - name: sandbox
    detectors:
      - name: pressure
        all:
          - pressure_above: {{cgroup: "{name}/*", resource: memory, threshold: 60, duration: 30}}
    actions:
      - kill_by_memory_size_or_growth: {{cgroup: "{name}/*,{name}/nothing-here-*"}}
""")
    done = run_cli("check", "--host", str(policy))
    assert done.returncode == 0, done.stderr
    out = done.stdout.splitlines()
    layout = detect_layout()
    caps = host_capabilities(layout)
    assert out[0] == f"host: {layout.describe()}"
    assert out[1] == f"host: offers: {', '.join(caps.present)}"
    assert [line for line in out if line.startswith("host: lacks")] == [
        f"host: lacks {need}: {why}" for need, why in caps.missing.items()]
    if layout.kind == "hybrid":
        assert "v2" in caps.missing and "v1" not in caps.missing
    assert f"{policy}:7:38: note: pressure_above cgroup: '/{name}/*' matches 2 cgroup(s) now: /{name}/a, /{name}/b" in out
    fs = CgroupFS(layout)
    if layout.kind == "hybrid" and "per-cgroup psi" not in caps.missing:
        assert fs.pressure_file(f"/{name}/a") is not None  # its cgroup2 twin speaks for it
        # /a has PSI through its twin, so only /b is named
        assert f"{policy}:7:38: warning: pressure_above: no memory PSI of their own here for /{name}/b: it cannot see their pressure" in out
    assert f"{policy}:9:49: warning: kill_by_memory_size_or_growth cgroup: '/{name}/nothing-here-*' matches nothing on this host now" in out
    assert out[-1] == f"{policy}: ok (1 rulesets)"


def test_check_exit_codes_for_json_drop_ins_and_host(tmp_path):
    fixture = REPO / "tests" / "fixtures" / "oomd" / "desktop.json"
    ok = run_cli("check", str(fixture))
    assert ok.returncode == 0 and ok.stdout == f"{fixture}: ok (3 rulesets)\n", ok.stderr
    bad = tmp_path / "bad.json"
    bad.write_text(fixture.read_text().replace('"silence-logs": "engine",', '"silence-log": "engine",'))
    ko = run_cli("check", "--host", str(bad))
    assert ko.returncode == 1 and ko.stdout == ""  # an invalid policy gets no host report
    assert ko.stderr == f"{bad}:7:13: unknown key 'silence-log' in a ruleset (did you mean 'silence-logs'?)\n"
    drop_in = tmp_path / "10-d.yaml"
    drop_in.write_text("rulesets:\n  - name: x\n    actions: [continue: {}]\n")
    assert run_cli("check", "--drop-in", str(drop_in)).returncode == 0
    assert run_cli("check", str(drop_in)).returncode == 1  # as a policy it lacks detectors
    assert run_cli("check", "--drop-in", "--host", str(drop_in)).returncode == 2  # argparse: not together
