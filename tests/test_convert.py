"""`pyoomd convert`: the YAML it writes loads to the same policy as its input."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest

from policy.convert import drop_in_to_yaml, duration, policy_to_yaml
from policy.loader import load_drop_in_text, load_policy, load_policy_text
from policy.model import DetectorGroup, DropInOptions, PluginSpec, Policy, Ruleset
from policy.units import parse_duration
from tests.test_oomd_json import DROP_IN as JSON_DROP_IN
from tests.test_policy_loader import DROP_IN as YAML_DROP_IN
from tests.test_policy_loader import FULL, GOOD

REPO = Path(__file__).resolve().parent.parent
FIXTURE = REPO / "tests" / "fixtures" / "oomd" / "desktop.json"


def same_but_source(a: Policy, b: Policy) -> bool:
    return msgspec.structs.replace(a, source="") == msgspec.structs.replace(b, source="")


def round_trip(policy: Policy) -> Policy:
    return load_policy_text(policy_to_yaml(policy), "converted.yaml")


@pytest.mark.parametrize("path", [FIXTURE, REPO / "config.yaml"], ids=lambda p: p.name)
def test_files_round_trip(path):
    policy = load_policy(path)
    assert same_but_source(round_trip(policy), policy)


@pytest.mark.parametrize("text", [GOOD, FULL], ids=["GOOD", "FULL"])
def test_yaml_examples_round_trip(text):
    policy = load_policy_text(text, "p.yaml")
    assert same_but_source(round_trip(policy), policy)


def test_output_is_pyoomd_yaml():
    text = policy_to_yaml(load_policy(FIXTURE))
    assert text.startswith(f"# pyoomd policy, converted from {FIXTURE}")
    assert "\nversion: 1\n" in text
    assert "silence_logs: [engine, plugins]" in text
    assert "drop_in: {detectors: true, actions: true, disable_on_drop_in: false}" in text
    assert "post_action_delay: 20s" in text and "prekill_hook_timeout: 5s" in text
    assert "      - name: user pressure above 60 for 30s\n        all:\n          - pressure_above: {" in text
    assert "threshold: '60'" in text  # oomd's string stays a string: the same PluginSpec
    assert "silence-logs" not in text and "drop-in" not in text


def test_defaults_are_left_out():
    text = policy_to_yaml(load_policy_text(GOOD.replace("    post_action_delay: 2m\n", ""), "p.yaml"))
    assert "post_action_delay" not in text and "cgroup: " in text and "xattr_filter" not in text
    assert "interval: 500ms" in text and "dry_run: true" in text


def test_awkward_strings_round_trip():
    names = ["true", "123", "null", "~", "- x", "a: b", "#x", "'q'", '"dq"', "x\ny", "1e3", "0x1F", "2001-01-01",
             "*x", "&a", "!t", "%p", "@a", "`b", "yes", "12:30", ".inf", " lead", "trail ", "é ☃", "{a}", "[b]",
             "x,y", "+1", "NO", "a\\b", "tab\there"]
    rulesets = [
        Ruleset(name=n, detector_groups=[DetectorGroup(name=n, detectors=[PluginSpec("continue")])],
                actions=[PluginSpec("continue")], cgroup=["/a/*", "/b"], xattr_filter=n,
                drop_in=DropInOptions(actions=True), prekill_hook_timeout=0.25, post_action_delay=0.3)
        for n in names
    ]
    policy = Policy(rulesets=rulesets, interval=2.5, dry_run=True, source="p.yaml")
    assert round_trip(policy) == msgspec.structs.replace(policy, source="converted.yaml")


@pytest.mark.parametrize("seconds", [0, 0.001, 0.1, 0.3, 0.5, 1, 1.5, 2.675, 15, 59, 60, 90, 120, 3600, 5400, 7200.5])
def test_duration_parses_back_exactly(seconds):
    assert parse_duration(duration(seconds)) == seconds


def test_duration_picks_readable_units():
    assert [duration(s) for s in (0, 0.5, 1.5, 15, 120, 3600)] == ["0s", "500ms", "1.5s", "15s", "2m", "1h"]


@pytest.mark.parametrize("text", [YAML_DROP_IN, JSON_DROP_IN], ids=["yaml", "json"])
def test_drop_ins_round_trip(text):
    source = "d.json" if text is JSON_DROP_IN else "d.yaml"
    drop_in = load_drop_in_text(text, source, mtime_ns=7)
    again = load_drop_in_text(drop_in_to_yaml(drop_in), "converted.yaml", mtime_ns=7)
    assert again.rulesets == drop_in.rulesets


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "supervisor", *args], cwd=REPO, capture_output=True, text=True,
                          env=env)


def test_convert_command(tmp_path):
    done = run_cli("convert", str(FIXTURE))
    assert done.returncode == 0, done.stderr
    converted = tmp_path / "desktop.yaml"
    converted.write_text(done.stdout)
    assert same_but_source(load_policy(converted), load_policy(FIXTURE))
    checked = run_cli("check", str(converted))
    assert checked.returncode == 0, checked.stderr


def test_convert_command_drop_in(tmp_path):
    path = tmp_path / "10-system.json"
    path.write_text(JSON_DROP_IN)
    done = run_cli("convert", "--drop-in", str(path))
    assert done.returncode == 0, done.stderr
    assert load_drop_in_text(done.stdout, "x.yaml").rulesets == load_drop_in_text(JSON_DROP_IN, "d.json").rulesets


def test_convert_command_reports_errors(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(FIXTURE.read_text().replace('"threshold": "60"', '"threshold": "lots"'))
    done = run_cli("convert", str(bad))
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.startswith(f"{bad}:34:42: pressure_above: argument 'threshold': expected a number")


def test_docs_yaml_examples_load_and_round_trip():
    text = (REPO / "docs" / "policy.md").read_text()
    blocks = [b.split("```", 1)[0] for b in text.split("```yaml\n")[1:]]
    assert blocks
    for block in blocks:
        policy = load_policy_text(block, "policy.md.yaml")
        assert same_but_source(round_trip(policy), policy)
