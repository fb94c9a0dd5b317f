"""The YAML policy: what loads, and the exact position of every error."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from policy.loader import PolicyInvalid, load_drop_in, load_drop_in_text, load_policy, load_policy_text
from policy.units import parse_duration, parse_size

REPO = Path(__file__).resolve().parent.parent

GOOD = """\
interval: 500ms
dry_run: true
rulesets:
  - name: protect
    post_action_delay: 2m
    detectors:
      - name: pressure
        all:
          - pressure_above: {cgroup: "system.slice", resource: memory, threshold: 60, duration: 30}
          - memory_above: {cgroup: "system.slice", threshold: "80%", duration: 10s}
      - name: size
        all:
          - memory_above: {cgroup: "a,b/c", threshold: 1.5G, duration: 0}
    actions:
      - kill_by_memory_size_or_growth: {cgroup: "system.slice/*", size_threshold: 40}
"""


def errors_of(text: str) -> list[str]:
    with pytest.raises(PolicyInvalid) as e:
        load_policy_text(text, "p.yaml")
    return [str(err) for err in e.value.errors]


def test_good_policy_loads_with_units():
    policy = load_policy_text(GOOD, "p.yaml")
    assert policy.interval == 0.5
    assert policy.dry_run is True
    (rs,) = policy.rulesets
    assert rs.post_action_delay == 120
    assert [g.name for g in rs.detector_groups] == ["pressure", "size"]
    assert rs.detector_groups[0].detectors[0].name == "pressure_above"
    assert rs.actions[0].args == {"cgroup": "system.slice/*", "size_threshold": 40}


def test_defaults():
    policy = load_policy_text(GOOD.replace("interval: 500ms\ndry_run: true\n", "").replace(
        "    post_action_delay: 2m\n", ""), "p.yaml")
    assert policy.interval == 1.0
    assert policy.dry_run is False
    assert policy.rulesets[0].post_action_delay == 15.0


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (("interval: 500ms", "intervl: 500ms"), "p.yaml:1:1: unknown key 'intervl' in the policy"),
        (("interval: 500ms", "interval: soon"), "p.yaml:1:11: 'interval': invalid duration 'soon'"),
        (("interval: 500ms", "interval: 0"), "p.yaml:1:11: 'interval': must be greater than zero"),
        (("dry_run: true", "dry_run: 3"), "p.yaml:2:10: 'dry_run': expected true or false"),
        (("  - name: protect\n", "  - name: protect\n    colour: red\n"), "p.yaml:5:5: unknown key 'colour' in a ruleset"),
        (("threshold: 60,", "threshold: lots,"), "p.yaml:9:83: pressure_above: argument 'threshold': expected a number, got 'lots'"),
        (("resource: memory, threshold: 60", "threshold: 60"), "p.yaml:9:13: pressure_above: missing required argument 'resource'"),
        (("size_threshold: 40", "size_threshhold: 40"), "p.yaml:15:67: kill_by_memory_size_or_growth: unknown argument 'size_threshhold'"),
        (("- kill_by_memory_size_or_growth", "- kill_by_memory_size"), "p.yaml:15:9: kill_by_memory_size: unknown action plugin"),
        (("- pressure_above:", "- kill_by_memory_size_or_growth:"), "p.yaml:9:13: kill_by_memory_size_or_growth: 'kill_by_memory_size_or_growth' is not a detector plugin"),
        (("threshold: 1.5G", "threshold: 1.5Q"), "p.yaml:13:56: memory_above: argument 'threshold': invalid size '1.5Q'"),
        (("duration: 10s", "duration: -1"), "p.yaml:10:80: memory_above: argument 'duration': duration -1 is negative"),
        (("cgroup: \"a,b/c\"", "cgroup: \"a/../b\""), "p.yaml:13:36: memory_above: argument 'cgroup': cgroup path 'a/../b' may not contain '..'"),
    ],
)
def test_error_points_at_line_and_column(change, expected):
    old, new = change
    assert old in GOOD
    errors = errors_of(GOOD.replace(old, new))
    assert any(e.startswith(expected) for e in errors), errors


def test_every_error_is_reported_not_just_the_first():
    text = GOOD.replace("interval: 500ms", "interval: x").replace("threshold: 60,", "threshold: y,")
    errors = errors_of(text)
    assert len(errors) == 2
    assert errors[0].startswith("p.yaml:1:")
    assert errors[1].startswith("p.yaml:9:")


def test_yaml_syntax_error_has_position():
    errors = errors_of("rulesets:\n  - name: [unclosed\n")
    assert len(errors) == 1 and errors[0].startswith("p.yaml:3:1: YAML:")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[]", "p.yaml:1:1: the policy must be a mapping"),
        ("interval: 1\n", "p.yaml:1:1: missing 'rulesets'"),
        ("rulesets: []\n", "p.yaml:1:11: 'rulesets' is empty"),
        ("rulesets:\n  - name: a\n", "p.yaml:2:5: ruleset is missing 'detectors'"),
        ("rulesets:\n  - name: a\n    detectors: []\n    actions: [continue: {}]\n",
         "p.yaml:3:16: 'detectors' is empty"),
        ("rulesets:\n  - name: a\n    detectors: [{name: g, all: []}]\n    actions: [continue: {}]\n",
         "p.yaml:3:32: 'all' is empty"),
    ],
)
def test_structure_errors(text, expected):
    errors = errors_of(text)
    assert any(e.startswith(expected) for e in errors), errors


def test_duplicate_ruleset_names():
    text = GOOD + GOOD.split("rulesets:\n", 1)[1]
    errors = errors_of(text)
    assert any("duplicate ruleset name 'protect'" in e and e.startswith("p.yaml:16:") for e in errors), errors


def test_units():
    assert parse_duration(5) == 5.0
    assert parse_duration("500ms") == 0.5
    assert parse_duration("2m") == 120
    assert parse_duration("1.5s") == 1.5
    with pytest.raises(ValueError):
        parse_duration(True)
    assert parse_size("1.5G") == int(1.5 * (1 << 30))
    assert parse_size("512M") == 512 << 20
    assert parse_size(100) == 100 << 20  # oomd: a bare number is MB
    assert parse_size("100") == 100 << 20


def test_shipped_config_is_valid_and_names_only_systemd_slices():
    policy = load_policy(REPO / "config.yaml")
    patterns = [
        p
        for rs in policy.rulesets
        for spec in [*(d for g in rs.detector_groups for d in g.detectors), *rs.actions]
        for p in str(spec.args.get("cgroup", "")).split(",")
    ]
    assert patterns and all(p.startswith(("system.slice", "user.slice")) for p in patterns), patterns


def test_check_command_exit_codes(tmp_path):
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text(GOOD)
    bad.write_text(GOOD.replace("threshold: 60,", "threshold: lots,"))
    ok = subprocess.run([sys.executable, "-m", "supervisor", "check", str(good)], cwd=REPO, capture_output=True,
                        text=True)
    assert ok.returncode == 0, ok.stderr
    ko = subprocess.run([sys.executable, "-m", "supervisor", "check", str(bad)], cwd=REPO, capture_output=True,
                        text=True)
    assert ko.returncode == 1
    assert ko.stderr.startswith(f"{bad}:9:83: pressure_above: argument 'threshold': expected a number")


# ---- the ruleset keys beyond oomd's core, version, suggestions --------------------------------------------------

FULL = """\
version: 1
rulesets:
  - name: per service
    cgroup: "system.slice/*.service, workload.slice"
    xattr_filter: trusted.pyoomd
    prekill_hook_timeout: 2s
    silence_logs: engine,plugins
    drop_in: {detectors: true, actions: false, disable_on_drop_in: true}
    detectors:
      - name: big
        all:
          - memory_above: {ruleset_cgroup: /, threshold: 1G, duration: 5}
    actions:
      - kill_by_memory_size_or_growth: {ruleset_cgroup: /}
"""


def test_full_ruleset_keys_load():
    (rs,) = load_policy_text(FULL, "p.yaml").rulesets
    assert rs.cgroup == ["/system.slice/*.service", "/workload.slice"]  # normalised as plugin cgroup args
    assert rs.xattr_filter == "trusted.pyoomd"
    assert rs.prekill_hook_timeout == 2.0
    assert rs.silence_logs == ["engine", "plugins"]
    assert (rs.drop_in.detectors, rs.drop_in.actions, rs.drop_in.disable_on_drop_in) == (True, False, True)


def test_ruleset_key_defaults():
    (rs,) = load_policy_text(GOOD, "p.yaml").rulesets
    assert rs.cgroup == [] and rs.xattr_filter == "" and rs.prekill_hook_timeout is None
    assert rs.silence_logs == [] and not (rs.drop_in.detectors or rs.drop_in.actions or rs.drop_in.disable_on_drop_in)


def test_silence_logs_as_a_list():
    text = FULL.replace("silence_logs: engine,plugins", "silence_logs: [plugins, plugins]")
    assert load_policy_text(text, "p.yaml").rulesets[0].silence_logs == ["plugins"]


def test_ruleset_options_reach_the_plugins(monkeypatch):
    import policy.loader as loader

    seen = []
    real = loader.build_plugin

    def spy(spec, kind, opts):
        seen.append(opts)
        return real(spec, kind, opts)

    monkeypatch.setattr(loader, "build_plugin", spy)
    load_policy_text(FULL, "p.yaml")
    assert seen and all(o.cgroup == ("/system.slice/*.service", "/workload.slice") for o in seen)
    assert all(o.prekill_hook_timeout == 2.0 and o.name == "per service" for o in seen)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (("version: 1", "version: 2"), "p.yaml:1:10: unsupported policy version 2: this pyoomd reads version 1"),
        (("version: 1", "version: '1'"), "p.yaml:1:10: unsupported policy version '1'"),
        (("version: 1", "verison: 1"), "p.yaml:1:1: unknown key 'verison' in the policy (did you mean 'version'?)"),
        (("  - name: per service\n", "  - name: per service\n    post_action_dealy: 10s\n"),
         "p.yaml:4:5: unknown key 'post_action_dealy' in a ruleset (did you mean 'post_action_delay'?)"),
        (("xattr_filter:", "xattr_filtre:"), "p.yaml:5:5: unknown key 'xattr_filtre' in a ruleset (did you mean 'xattr_filter'?)"),
        (("silence_logs:", "silence_log:"), "p.yaml:7:5: unknown key 'silence_log' in a ruleset (did you mean 'silence_logs'?)"),
        (("drop_in: {", "dropin: {"), "p.yaml:8:5: unknown key 'dropin' in a ruleset (did you mean 'drop_in'?)"),
        (("disable_on_drop_in:", "disable_on_dropin:"),
         "p.yaml:8:48: unknown key 'disable_on_dropin' in 'drop_in' (did you mean 'disable_on_drop_in'?)"),
        (("actions: false", "actions: no"), "p.yaml:8:41: 'actions': expected true or false, got 'no'"),
        (("drop_in: {detectors: true, actions: false, disable_on_drop_in: true}", "drop_in: true"),
         "p.yaml:8:14: 'drop_in' must be a mapping"),
        (("      - name: big\n", "      - nmae: big\n"), "p.yaml:10:9: unknown key 'nmae' in a detector group (did you mean 'name'?)"),
        (("        all:", "        alll:"), "p.yaml:11:9: unknown key 'alll' in a detector group (did you mean 'all'?)"),
        (("silence_logs: engine,plugins", "silence_logs: engine,plugin"),
         "p.yaml:7:19: 'silence_logs': unknown log entity 'plugin' (did you mean 'plugins'?)"),
        (("silence_logs: engine,plugins", "silence_logs: [engine, 3]"), "p.yaml:7:19: 'silence_logs': expected a list of engine, plugins"),
        (("prekill_hook_timeout: 2s", "prekill_hook_timeout: 0"), "p.yaml:6:27: 'prekill_hook_timeout': must be greater than zero"),
        (("prekill_hook_timeout: 2s", "prekill_hook_timeout: later"), "p.yaml:6:27: 'prekill_hook_timeout': invalid duration 'later'"),
        (('cgroup: "system.slice/*.service, workload.slice"', 'cgroup: "a/../b"'),
         "p.yaml:4:13: 'cgroup': cgroup path 'a/../b' may not contain '..'"),
        (('cgroup: "system.slice/*.service, workload.slice"', 'cgroup: ""'), "p.yaml:4:13: 'cgroup': expected one or more cgroup paths"),
        (("xattr_filter: trusted.pyoomd", "xattr_filter: [a]"), "p.yaml:5:19: 'xattr_filter': expected a string"),
        (('    cgroup: "system.slice/*.service, workload.slice"\n', ""),
         "p.yaml:4:5: 'xattr_filter' filters the matches of the ruleset's 'cgroup': give 'cgroup' too"),
        (("{ruleset_cgroup: /, threshold: 1G", "{ruleset_cgroup: /, threshold: 1G, treshold_anon: 1G"),
         "p.yaml:12:62: memory_above: unknown argument 'treshold_anon' (did you mean 'threshold_anon'?)"),
    ],
)
def test_new_key_errors_point_at_line_and_column(change, expected):
    old, new = change
    assert old in FULL
    errors = errors_of(FULL.replace(old, new))
    assert any(e.startswith(expected) for e in errors), errors


def test_wrong_version_is_the_only_error():
    # A file in another policy language would otherwise drown the one error that matters in unknown keys.
    errors = errors_of(FULL.replace("version: 1", "version: 2").replace("silence_logs:", "colour: red\n    x:"))
    assert errors == ["p.yaml:1:10: unsupported policy version 2: this pyoomd reads version 1"]


def test_unknown_key_without_a_near_one_lists_the_allowed():
    errors = errors_of(GOOD.replace("  - name: protect\n", "  - name: protect\n    colour: red\n"))
    assert any(e.startswith("p.yaml:5:5: unknown key 'colour' in a ruleset (allowed: name, detectors, actions,")
               for e in errors), errors


def test_ruleset_cgroup_needs_the_rulesets_cgroup():
    text = FULL.replace('    cgroup: "system.slice/*.service, workload.slice"\n    xattr_filter: trusted.pyoomd\n', "")
    errors = errors_of(text)
    assert errors == [
        "p.yaml:10:28: memory_above: 'ruleset_cgroup' is relative to the ruleset's 'cgroup', which this ruleset does not set",
        "p.yaml:12:41: kill_by_memory_size_or_growth: 'ruleset_cgroup' is relative to the ruleset's 'cgroup', which this ruleset does not set",
    ]


def test_glob_list_arguments_may_be_yaml_lists():
    text = GOOD.replace('{cgroup: "system.slice/*", size_threshold: 40}',
                        '{cgroup: [system.slice/*, "user.slice/*"], size_threshold: 40}')
    (rs,) = load_policy_text(text, "p.yaml").rulesets
    # Joined as oomd writes them, so the wire carries scalars and the plugin parses "a,b" as it always does.
    assert rs.actions[0].args == {"cgroup": "system.slice/*,user.slice/*", "size_threshold": 40}


@pytest.mark.parametrize(
    ("new", "expected"),
    [
        ("{cgroup: system.slice/*, size_threshold: [40, 50]}",
         "p.yaml:15:81: kill_by_memory_size_or_growth: argument 'size_threshold' takes one value, not a list"),
        ("{cgroup: [], size_threshold: 40}",
         "p.yaml:15:49: kill_by_memory_size_or_growth: argument 'cgroup' must be a list of cgroup patterns"),
        ("{cgroup: [a, [b]], size_threshold: 40}",
         "p.yaml:15:49: kill_by_memory_size_or_growth: argument 'cgroup' must be a list of cgroup patterns"),
        ("{cgroup: {a: b}, size_threshold: 40}",
         "p.yaml:15:49: argument 'cgroup' of 'kill_by_memory_size_or_growth' must be a scalar"),
        ("{cgroup: [a/../b], size_threshold: 40}",
         "p.yaml:15:49: kill_by_memory_size_or_growth: argument 'cgroup': cgroup path 'a/../b' may not contain '..'"),
    ],
)
def test_list_argument_errors(new, expected):
    text = GOOD.replace('{cgroup: "system.slice/*", size_threshold: 40}', new)
    errors = errors_of(text)
    assert any(e.startswith(expected) for e in errors), errors


def test_yaml_control_character_has_a_position():
    errors = errors_of("rulesets:\n  - name: \"a\x01\"\n")
    assert len(errors) == 1 and errors[0].startswith("p.yaml:2:13: special characters are not allowed (#x0001)"), errors


def test_errors_come_in_file_order():
    text = FULL.replace("silence_logs: engine,plugins", "silence_logs: x").replace("version: 1\n", "version: 1\nintervl: 1\n")
    errors = errors_of(text)
    assert [e.split(":")[1] for e in errors] == ["2", "8"], errors


# ---- drop-ins --------------------------------------------------------------------------------------------------

DROP_IN = """\
version: 1
rulesets:
  - name: per service
    detectors:
      - name: bigger
        all:
          - memory_above: {cgroup: system.slice, threshold: 2G, duration: 5}
  - name: protect
    actions:
      - kill_by_memory_size_or_growth: {cgroup: "system.slice/*"}
  - name: neither
"""


def test_drop_in_may_leave_out_detectors_or_actions(tmp_path):
    path = tmp_path / "10-bigger.yaml"
    path.write_text(DROP_IN)
    drop_in = load_drop_in(path)
    assert drop_in.source == str(path)
    assert drop_in.mtime_ns == path.stat().st_mtime_ns
    a, b, c = drop_in.rulesets
    assert a.name == "per service" and a.actions is None and a.detector_groups[0].detectors[0].name == "memory_above"
    assert b.detector_groups is None and b.actions[0].args == {"cgroup": "system.slice/*"}
    assert c.detector_groups is None and c.actions is None


def drop_in_errors(text: str) -> list[str]:
    with pytest.raises(PolicyInvalid) as e:
        load_drop_in_text(text, "d.yaml")
    return [str(err) for err in e.value.errors]


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (("threshold: 2G", "threshold: 2Q"), "d.yaml:7:61: memory_above: argument 'threshold': invalid size '2Q'"),
        (("- memory_above:", "- memory_abov:"), "d.yaml:7:13: memory_abov: unknown detector plugin 'memory_abov' (did you mean 'memory_above'?)"),
        (("  - name: neither\n", "  - name: neither\n    post_action_delay: 5s\n"),
         "d.yaml:12:5: 'post_action_delay' cannot be set by a drop-in: it replaces only a base ruleset's detectors and actions"),
        (("version: 1\n", "version: 1\ninterval: 2s\n"), "d.yaml:2:1: 'interval' cannot be set by a drop-in: it belongs in the base policy"),
        (("    actions:\n", "    actoins:\n"), "d.yaml:9:5: unknown key 'actoins' in a ruleset (did you mean 'actions'?)"),
        (("  - name: neither\n", "  - name: protect\n"), "d.yaml:11:11: duplicate ruleset name 'protect'"),
        (("  - name: neither\n", "  - detectors: []\n"), "d.yaml:11:5: ruleset is missing 'name'"),
    ],
)
def test_drop_in_errors_have_positions(change, expected):
    old, new = change
    assert old in DROP_IN
    errors = drop_in_errors(DROP_IN.replace(old, new))
    assert any(e.startswith(expected) for e in errors), errors


def test_drop_in_plugins_may_use_ruleset_cgroup():
    # The base ruleset's cgroup applies, which the drop-in cannot know: no error here.
    text = DROP_IN.replace("{cgroup: system.slice, threshold", "{ruleset_cgroup: /, threshold")
    assert load_drop_in_text(text, "d.yaml").rulesets[0].detector_groups[0].detectors[0].args["ruleset_cgroup"] == "/"


def test_missing_drop_in_file(tmp_path):
    with pytest.raises(PolicyInvalid) as e:
        load_drop_in(tmp_path / "gone.yaml")
    assert str(e.value.errors[0]).startswith(f"{tmp_path / 'gone.yaml'}:1:1: cannot read the drop-in")


def test_an_invalid_ruleset_cgroup_is_one_error():
    # Not also "ruleset_cgroup ... does not set 'cgroup'" for every plugin that uses it.
    errors = errors_of(FULL.replace('cgroup: "system.slice/*.service, workload.slice"', 'cgroup: "a/../b"'))
    assert errors == ["p.yaml:4:13: 'cgroup': cgroup path 'a/../b' may not contain '..'"]


def test_ruleset_cgroup_as_a_yaml_list():
    text = FULL.replace('cgroup: "system.slice/*.service, workload.slice"', "cgroup: [system.slice/*.service, workload.slice]")
    assert load_policy_text(text, "p.yaml").rulesets[0].cgroup == ["/system.slice/*.service", "/workload.slice"]
