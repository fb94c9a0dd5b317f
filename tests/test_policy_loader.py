"""The YAML policy: what loads, and the exact position of every error."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from policy.loader import PolicyInvalid, load_policy, load_policy_text
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
