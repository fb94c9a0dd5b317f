"""pyoomd's own D-Bus interface, io.github.pyoomd1, on a private bus that behaves as the system bus with the
shipped policy file, driven by the real busctl (as root and as `nobody`) and the `pyoomd` commands."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time

import pytest

from tests.daemon import REPO, Daemon
from tests.private_bus import PrivateBus, SignalRecorder, private_bus
from tests.realhost import require_real_host, wait_for
from tests.test_e2e_kill import policy_for, start_workloads
from tests.test_supervisor import POLICY

pytestmark = pytest.mark.real

NAME, PATH, IFACE = "io.github.pyoomd1", "/io/github/pyoomd1", "io.github.pyoomd1.Manager"

# The interface as issue 6 names it: (member, kind, signature, result, flags). A property's flags say whether it
# emits PropertiesChanged and whether it is writable.
EXPECTED = {
    ("Reload", "method", "-", "(bas)", "-"),
    ("GetSnapshot", "method", "-", "s", "-"),
    ("Explain", "method", "-", "s", "-"),
    ("ListActions", "method", "u", "s", "-"),
    ("SetDryRun", "method", "b", "-", "-"),
    ("PauseRuleset", "method", "su", "-", "-"),
    ("Version", "property", "s", "", "emits-change"),
    ("Layout", "property", "s", "", "emits-change"),
    ("Hierarchies", "property", "a{ss}", "", "emits-change"),
    ("PolicyPath", "property", "s", "", "emits-change"),
    ("PolicyGeneration", "property", "t", "", "emits-change"),
    ("PolicyLoadedAt", "property", "t", "", "emits-change"),
    ("LastReloadResult", "property", "(bas)", "", "emits-change"),
    ("DryRun", "property", "b", "", "emits-change writable"),
    ("DryRunSource", "property", "s", "", "emits-change"),
    ("Rulesets", "property", "a(sbtt)", "", "emits-change"),
    ("Workers", "property", "a(susut)", "", "-"),
    ("ActionsTaken", "property", "t", "", "emits-change"),
    ("ActionTaken", "signal", "ssssaubs", "-", "-"),
    ("RulesetFired", "signal", "ss", "-", "-"),
    ("PolicyReloaded", "signal", "b", "-", "-"),
}


def pyoomd(*args: str, user: str | None = None) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "supervisor", *args]
    return subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=60)


def prop(bus: PrivateBus, name: str, user: str | None = None) -> str:
    out = bus.busctl("get-property", NAME, PATH, IFACE, name, user=user)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def call(bus: PrivateBus, method: str, *args: str, user: str | None = None) -> subprocess.CompletedProcess[str]:
    return bus.busctl("call", NAME, PATH, IFACE, method, *args, user=user)


def answer(bus: PrivateBus, method: str, *args: str, user: str | None = None):
    """A method's JSON answer (a JSON string inside busctl's own JSON output); None when the call failed."""
    out = bus.busctl("--json=short", "call", NAME, PATH, IFACE, method, *args, user=user)
    return json.loads(json.loads(out.stdout)["data"][0]) if out.returncode == 0 else None


def served(bus: PrivateBus, daemon: Daemon) -> None:
    wait_for(lambda: bus.busctl("status", NAME).returncode == 0, 30, f"{NAME} on the bus\n{daemon.log}")
    daemon.wait_log("first snapshot evaluated")


@pytest.fixture
def bus():
    require_real_host()
    with private_bus() as b:
        yield b


@pytest.fixture
def idle_daemon(bus, tmp_path):
    daemon = Daemon(tmp_path, POLICY, "--bus", bus.address).start()
    try:
        served(bus, daemon)
        yield daemon
    finally:
        assert daemon.stop() == 0


def members(bus: PrivateBus, user: str | None = None) -> set[tuple[str, str, str, str, str]]:
    out = bus.busctl("introspect", "--no-pager", NAME, PATH, IFACE, user=user)
    assert out.returncode == 0, out.stderr
    found = set()
    for line in out.stdout.splitlines()[1:]:
        fields = line.split()
        if not fields[0].startswith("."):
            continue
        name, kind, signature = fields[0][1:], fields[1], fields[2]
        if kind == "property":  # its value (which has spaces) is between the signature and the flags
            flags = " ".join(f for f in fields[3:] if f in ("emits-change", "emits-invalidation", "writable",
                                                            "const")) or "-"
            found.add((name, kind, signature, "", flags))
        else:
            found.add((name, kind, signature, fields[3], fields[4]))
    return found


def test_busctl_introspect_lists_exactly_the_interface_with_its_documentation(bus, idle_daemon):
    assert members(bus, user="nobody") == EXPECTED  # anyone may introspect
    xml = bus.busctl("--xml-interface", "introspect", NAME, PATH).stdout
    for member, kind, *_ in EXPECTED:
        block = re.search(rf'<{kind} name="{member}"[^>]*>(.*?)</{kind}>', xml, re.S)
        assert block and 'name="org.gtk.GDBus.DocString"' in block.group(1), member
    assert '<annotation name="org.freedesktop.DBus.Property.EmitsChangedSignal" value="false"' in xml
    tree = bus.busctl("tree", "--list", NAME).stdout.split()
    assert PATH in tree


def test_properties_and_signals_follow_a_real_kill(bus, cgroups, tmp_path):
    thrasher, sleeper = start_workloads(cgroups)
    target = f"{cgroups.path}/thrasher"
    recorder = SignalRecorder(bus.address)
    daemon = Daemon(tmp_path, policy_for(cgroups.path), "--bus", bus.address).start()
    try:
        served(bus, daemon)
        assert prop(bus, "Layout") == 's "hybrid"'

        # Before the kill, Explain already names the thrasher first, with the figures that put it there.
        def first_candidate() -> str | None:
            explained = answer(bus, "Explain")
            if explained is None:
                return None
            candidates = explained["rulesets"][0]["actions"][0].get("candidates") or []
            return candidates[0]["cgroup"] + ": " + candidates[0]["why"] if candidates else None

        picked = wait_for(first_candidate, 30, "Explain to rank a candidate")
        assert picked.startswith(target + ": ") and "MB" in picked

        thrasher.wait(timeout=90)
        taken = wait_for(lambda: [s for s in recorder.of("ActionTaken") if s[1] == target], 20, "ActionTaken")
        ruleset, cgroup, unit, action, pids, dry_run, result = taken[0]
        assert (ruleset, cgroup, unit, action, dry_run, result) == ("test thrash", target, "",
                                                                   "kill_by_memory_size_or_growth", False, "killed")
        assert thrasher.pid in pids
        assert sleeper.poll() is None
        assert int(prop(bus, "ActionsTaken").split()[1]) >= 1
        fired = recorder.of("RulesetFired")
        assert ["test thrash", "parent under memory pressure"] in fired
        changed = [body[1] for body in recorder.of("PropertiesChanged")]
        assert any("ActionsTaken" in c for c in changed) and not any("Workers" in c for c in changed)

        rulesets = prop(bus, "Rulesets").split()  # a(sbtt) 1 "test thrash" true PAUSED FIRED
        paused, last_fired = int(rulesets[-2]), int(rulesets[-1])
        assert last_fired > 0 and paused > time.time() * 1e6  # post_action_delay holds its actions now

        listed = answer(bus, "ListActions", "u", "10", user="nobody")
        assert [r["target"] for r in listed if r["result"] == "killed"] == [target]

        status = pyoomd("status", "--bus", bus.address)
        assert status.returncode == 0, status.stderr
        assert "pyoomd 0.1.0 on a hybrid host" in status.stdout
        assert re.search(rf"test thrash\s+kill_by_memory_size_or_growth\s+{re.escape(target)}\s+-\s+killed",
                         status.stdout), status.stdout
        dump = pyoomd("dump", "--bus", bus.address)
        assert dump.returncode == 0 and re.search(rf"^{re.escape(cgroups.path)}/sleeper\s+1\s", dump.stdout, re.M)
        explain = pyoomd("explain", "--bus", bus.address)
        assert "ruleset 'test thrash'" in explain.stdout and "actions paused for" in explain.stdout
        top = pyoomd("top", "--once", "--bus", bus.address)
        assert top.returncode == 0, top.stderr
        assert re.search(rf"^{re.escape(cgroups.path)}/sleeper\s+1\s", top.stdout, re.M), top.stdout
        # Resting after its kill (firing still, while the parent's pressure decays, or quiet again).
        assert re.search(r"^test thrash \[(FIRING|quiet), resting \d+s\]  parent under memory pressure: \d/1 hold",
                         top.stdout, re.M), top.stdout
    finally:
        recorder.close()
        assert daemon.stop() == 0


def test_unprivileged_callers_read_but_may_not_change_anything(bus, idle_daemon):
    assert prop(bus, "Layout", user="nobody") == 's "hybrid"'
    assert prop(bus, "Workers", user="nobody").startswith('a(susut) 3 "actuator"')
    for method in ("GetSnapshot", "Explain"):
        out = call(bus, method, user="nobody")
        assert out.returncode == 0 and out.stdout.startswith("s "), out.stderr
    for method, args in (("Reload", ()), ("SetDryRun", ("b", "true")), ("PauseRuleset", ("su", "idle", "60"))):
        out = call(bus, method, *args, user="nobody")
        assert out.returncode != 0 and "Access denied" in out.stderr, (method, out.stdout, out.stderr)
    out = bus.busctl("set-property", NAME, PATH, IFACE, "DryRun", "b", "true", user="nobody")
    assert out.returncode != 0 and "Access denied" in out.stderr
    assert prop(bus, "DryRun") == "b false"
    assert prop(bus, "PolicyGeneration") == "t 1"
    assert "reload asked for" not in idle_daemon.log


def test_the_daemon_refuses_by_itself_and_limits_unprivileged_callers(tmp_path):
    """On a bus whose policy lets anybody call anything, the daemon's own checks are what is left."""
    require_real_host()
    with private_bus(open_policy=True) as bus:
        daemon = Daemon(tmp_path, POLICY, "--bus", bus.address).start()
        try:
            served(bus, daemon)
            out = call(bus, "Reload", user="nobody")
            assert out.returncode != 0 and "Reload needs root or the admin group" in out.stderr, out.stderr
            out = bus.busctl("set-property", NAME, PATH, IFACE, "DryRun", "b", "true", user="nobody")
            assert "setting DryRun needs root or the admin group" in out.stderr
            assert prop(bus, "DryRun") == "b false"

            # A burst of reads from one unprivileged user, all at once: some are turned away, root never is.
            argv = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "busctl",
                    f"--address={bus.address}", "call", NAME, PATH, IFACE, "GetSnapshot"]
            burst = [subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                     for _ in range(60)]
            errors = [p.communicate(timeout=60)[1] for p in burst]
            limited = [e for e in errors if "too many calls from uid" in e]
            assert limited and len(limited) < len(errors), errors[:3]
            assert call(bus, "GetSnapshot").returncode == 0
        finally:
            assert daemon.stop() == 0


def test_reload_over_dbus_returns_the_errors_and_a_broken_policy_changes_nothing(bus, idle_daemon):
    recorder = SignalRecorder(bus.address)
    try:
        broken = POLICY.replace("threshold: 99", "threshold: lots")
        idle_daemon.config.write_text(broken)
        line_no, line = next((i, ln) for i, ln in enumerate(broken.splitlines(), 1) if "lots" in ln)
        out = call(bus, "Reload")
        assert out.returncode == 0, out.stderr
        assert out.stdout.startswith('(bas) false 1 "' + f"{idle_daemon.config}:{line_no}:{line.index('lots') + 1}: ")
        assert prop(bus, "PolicyGeneration") == "t 1"
        assert prop(bus, "LastReloadResult").startswith("(bas) false 1")
        refused = pyoomd("reload", "--bus", bus.address)
        assert refused.returncode == 1 and f"{idle_daemon.config}:{line_no}:" in refused.stderr

        idle_daemon.config.write_text(POLICY.replace("threshold: 99", "threshold: 98"))
        assert call(bus, "Reload").stdout.strip() == "(bas) true 0"
        assert prop(bus, "PolicyGeneration") == "t 2"
        done = pyoomd("reload", "--bus", bus.address)
        assert done.returncode == 0 and done.stdout.strip() == "policy reloaded: generation 3 in force"
        wait_for(lambda: recorder.of("PolicyReloaded") == [[False], [False], [True], [True]], 10,
                 f"PolicyReloaded signals, got {recorder.of('PolicyReloaded')}")
    finally:
        recorder.close()


def test_runtime_dry_run_and_pause_survive_reloads_until_cleared(bus, idle_daemon):
    assert call(bus, "SetDryRun", "b", "true").returncode == 0
    assert prop(bus, "DryRun") == "b true" and prop(bus, "DryRunSource") == 's "runtime (uid 0)"'
    out = call(bus, "PauseRuleset", "su", "nope", "60")
    assert "NoSuchRuleset" in out.stderr or "no ruleset 'nope'" in out.stderr
    assert call(bus, "PauseRuleset", "su", "idle", "600").returncode == 0
    wait_for(lambda: int(prop(bus, "Rulesets").split()[-2]) > time.time() * 1e6, 10, "the pause in Rulesets")

    assert call(bus, "Reload").stdout.strip() == "(bas) true 0"
    time.sleep(1)  # the detector reports its rulesets after applying the new generation
    assert prop(bus, "DryRun") == "b true"
    wait_for(lambda: int(prop(bus, "Rulesets").split()[-2]) > time.time() * 1e6, 10, "the pause after the reload")

    off = pyoomd("dry-run", "off", "--bus", bus.address)
    assert off.returncode == 0 and off.stdout.strip() == "dry-run off (default)"
    assert call(bus, "PauseRuleset", "su", "idle", "0").returncode == 0
    wait_for(lambda: prop(bus, "Rulesets").split()[-2] == "0", 10, "the pause to end")
    assert bus.busctl("set-property", NAME, PATH, IFACE, "DryRun", "b", "true").returncode == 0
    assert prop(bus, "DryRunSource") == 's "runtime (uid 0)"'


def test_a_runtime_dry_run_holds_a_real_kill(bus, cgroups, tmp_path):
    daemon = Daemon(tmp_path, POLICY, "--bus", bus.address).start()
    try:
        served(bus, daemon)
        assert call(bus, "SetDryRun", "b", "true").returncode == 0
        thrasher, _ = start_workloads(cgroups)
        daemon.config.write_text(policy_for(cgroups.path))
        assert call(bus, "Reload").stdout.strip() == "(bas) true 0"
        record = wait_for(daemon.actions, 90, "the dry-run record")[0]
        assert (record["result"], record["dry_run"], record["dry_run_source"]) == ("dry-run", True,
                                                                                   "runtime (uid 0)")
        assert thrasher.poll() is None
    finally:
        assert daemon.stop() == 0


def test_commands_say_clearly_when_no_daemon_is_on_the_bus(bus, tmp_path, cgroups):
    for command in (["status"], ["dump"], ["explain"], ["reload"], ["dry-run", "on"]):
        out = pyoomd(*command, "--bus", bus.address)
        assert out.returncode == 2, (command, out.stdout, out.stderr)
        assert "no pyoomd daemon on the" in out.stderr and "io.github.pyoomd1 has no owner" in out.stderr
    cgroups.mkdir("sleeper")
    cgroups.sleeper("sleeper")
    policy = tmp_path / "policy.yaml"
    policy.write_text(policy_for(cgroups.path))
    local = pyoomd("dump", "--local", "--config", str(policy))
    assert local.returncode == 0, local.stderr
    assert re.search(rf"^{re.escape(cgroups.path)}/sleeper\s+1\s", local.stdout, re.M), local.stdout
    as_json = json.loads(pyoomd("dump", "--local", "--json", "--config", str(policy)).stdout)
    # The policy's cgroups: the parent its detector watches, and the children its action ranks.
    assert [c["path"] for c in as_json["cgroups"]] == [cgroups.path, f"{cgroups.path}/sleeper"]


def test_a_bus_that_is_not_there_never_stops_the_daemon(tmp_path):
    require_real_host()
    daemon = Daemon(tmp_path, POLICY, "--bus", f"unix:path={tmp_path}/no-bus-here").start()
    try:
        daemon.wait_log("first snapshot evaluated")
        assert daemon.log.count("pyoomd goes on without its D-Bus interface") == 1
        assert daemon.proc.poll() is None
    finally:
        assert daemon.stop() == 0
