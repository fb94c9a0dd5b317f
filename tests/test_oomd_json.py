"""oomd's JSON policy: loads as oomd writes it (comments, kebab keys, string arguments), errors at file:line:col."""

from __future__ import annotations

from pathlib import Path

import pytest

from policy.loader import PolicyInvalid, load_drop_in, load_drop_in_text, load_policy, load_policy_text
from policy.oomd_json import blank_comments, is_oomd_json

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "oomd" / "desktop.json"

BASE = """\
// pyoomd test policy in oomd's format
{
    "rulesets": [
        {
            "name": "user session protection",
            "drop-in": {"detectors": true, "actions": true, "disable-on-drop-in": true},
            "silence-logs": "engine",
            "post_action_delay": 20,
            /* a comment
               over "two" lines // with a line comment inside */
            "detectors": [
                [
                    "user pressure above 60 for 30s",
                    {
                        "name": "pressure_above",
                        "args": {"cgroup": "user.slice", "resource": "memory", "threshold": "60", "duration": "30"}
                    }
                ]
            ],
            "actions": [
                {"name": "kill_by_memory_size_or_growth", "args": {"cgroup": "user.slice/*", "size_threshold": "40"}}
            ]
        }
    ]
}
"""


def pos_of(text: str, needle: str, nth: int = 0) -> str:
    """'LINE:COL' (1-based) of the nth occurrence of needle: where an error must point."""
    offset = -1
    for _ in range(nth + 1):
        offset = text.index(needle, offset + 1)
    line = text.count("\n", 0, offset) + 1
    return f"{line}:{offset - (text.rfind(chr(10), 0, offset) + 1) + 1}"


def errors_of(text: str, source: str = "p.json") -> list[str]:
    with pytest.raises(PolicyInvalid) as e:
        load_policy_text(text, source)
    return [str(err) for err in e.value.errors]


def test_base_loads_with_oomd_spellings():
    policy = load_policy_text(BASE, "p.json")
    (rs,) = policy.rulesets
    assert rs.name == "user session protection"
    assert (rs.drop_in.detectors, rs.drop_in.actions, rs.drop_in.disable_on_drop_in) == (True, True, True)
    assert rs.silence_logs == ["engine"]
    assert rs.post_action_delay == 20.0
    (group,) = rs.detector_groups
    assert group.name == "user pressure above 60 for 30s"
    # oomd's arguments are strings; they stay strings (the plugin declarations parse them).
    assert group.detectors[0].args == {"cgroup": "user.slice", "resource": "memory", "threshold": "60", "duration": "30"}
    assert rs.actions[0].args == {"cgroup": "user.slice/*", "size_threshold": "40"}
    assert type(rs.name) is str and all(type(v) is str for v in group.detectors[0].args.values())
    assert policy.interval == 1.0 and policy.dry_run is False and policy.version == 1


def test_fixture_loads():
    policy = load_policy(FIXTURE)
    assert policy.source == str(FIXTURE)
    overview, user, per_service = policy.rulesets
    assert overview.silence_logs == ["engine"] and overview.actions[0].name == "continue"
    assert [g.name for g in user.detector_groups] == ["user pressure above 60 for 30s",
                                                      "system pressure above 80 for 60s and big"]
    assert user.drop_in.detectors and user.drop_in.actions and not user.drop_in.disable_on_drop_in
    assert user.post_action_delay == 20.0
    # Numbers and booleans in args are kept as given (oomd turns them into strings; our parsers take both).
    assert user.actions[0].args["size_threshold"] == 40 and user.actions[0].args["dry"] is False
    assert per_service.cgroup == ["/system.slice/*.service"]
    assert per_service.xattr_filter == "trusted.oomd_protect"
    assert per_service.prekill_hook_timeout == 5.0
    assert per_service.silence_logs == ["engine", "plugins"]


def test_snake_spellings_load_the_same_policy():
    snake = (BASE.replace('"drop-in"', '"drop_in"').replace('"silence-logs"', '"silence_logs"')
             .replace('"disable-on-drop-in"', '"disable_on_drop_in"'))
    assert snake != BASE
    assert load_policy_text(snake, "p.json") == load_policy_text(BASE, "p.json")


def test_both_spellings_of_a_key_is_an_error():
    text = BASE.replace('"silence-logs": "engine",', '"silence-logs": "engine", "silence_logs": "plugins",')
    at = pos_of(text, '"silence_logs"')
    assert errors_of(text) == [f"p.json:{at}: 'silence_logs' and 'silence-logs' are the same key: give it once"]


def test_comments_are_blanked_keeping_lines_and_columns():
    text = '{"a": "x // not a comment /* nor this */"}// c\n/* d\n e */ "b"'
    blanked, problems = blank_comments(text)
    assert problems == []
    assert blanked == '{"a": "x // not a comment /* nor this */"}    \n    \n      "b"'
    assert len(blanked) == len(text)


def test_escaped_quote_does_not_end_a_string():
    blanked, _ = blank_comments('{"a": "q\\" // still the string"} // gone')
    assert blanked == '{"a": "q\\" // still the string"}        '


def test_error_after_a_multiline_comment_points_at_the_right_line():
    text = BASE.replace('"post_action_delay": 20', '"post_action_delay": "soon"')
    at = pos_of(text, '"soon"')
    assert errors_of(text) == [f"p.json:{at}: 'post_action_delay': invalid duration 'soon': "
                               "use seconds or a string like '500ms', '30s', '2m'"]


@pytest.mark.parametrize(
    ("old", "new", "at", "message"),
    [
        ('"silence-logs"', '"silence-log"', '"silence-log"',
         "unknown key 'silence-log' in a ruleset (did you mean 'silence-logs'?)"),
        ('"post_action_delay"', '"post_action_dealy"', '"post_action_dealy"',
         "unknown key 'post_action_dealy' in a ruleset (did you mean 'post_action_delay'?)"),
        ('"disable-on-drop-in"', '"disable-on-dropin"', '"disable-on-dropin"',
         "unknown key 'disable-on-dropin' in 'drop-in' (did you mean 'disable-on-drop-in'?)"),
        ('"actions": true', '"actions": "yes"', '"yes"', "'actions': expected true or false, got 'yes'"),
        ('"silence-logs": "engine"', '"silence-logs": "engine,plugin"', '"engine,plugin"',
         "'silence-logs': unknown log entity 'plugin' (did you mean 'plugins'?)"),
        ('"threshold": "60"', '"threshold": "lots"', '"lots"',
         "pressure_above: argument 'threshold': expected a number, got 'lots'"),
        ('"name": "pressure_above"', '"name": "pressure_abov"', '"pressure_abov"',
         "pressure_abov: unknown detector plugin 'pressure_abov' (did you mean 'pressure_above'?)"),
        ('"size_threshold": "40"', '"size_treshold": "40"', '"size_treshold"',
         "kill_by_memory_size_or_growth: unknown argument 'size_treshold' (did you mean 'size_threshold'?)"),
        ('"args": {"cgroup": "user.slice/*"', '"arg": {"cgroup": "user.slice/*"', '"arg"',
         "unknown key 'arg' in an action (did you mean 'args'?)"),
        ('{"name": "kill_by_memory_size_or_growth", ', '{', '{"args"', 'each action needs "name", the plugin\'s name'),
        ('"user pressure above 60 for 30s",', "", '{\n                        "name": "pressure_above"',
         "a detector group is [NAME, DETECTOR, ...]: its first element must be its name"),
        ('"args": {"cgroup": "user.slice", "resource"', '"args": {"cgroup": ["user.slice"], "resource"', '["user.slice"]',
         None),  # a list for a glob argument is fine in JSON too
        ('"rulesets": [', '"rulesets": [], "prekill_hooks": [{"name": "dump"}], "x": [', '{"name": "dump"}',
         "pyoomd does not run prekill hooks yet: remove them (an empty 'prekill_hooks' is fine)"),
        ('"rulesets": [', '"interval": 2, "rulesets": [', '"interval"',
         "'interval' is a key of pyoomd's YAML policy; with oomd's JSON, use `pyoomd run --interval`"),
        ('"name": "user session protection"', "\"name\": 'user session protection'", "'user",
         "not JSON: write the string 'user session protection' in double quotes"),
        ('"name": "user session protection"', 'name: "user session protection"', "name:",
         "not JSON: write the key 'name' in double quotes"),
        ('"post_action_delay": 20,', '"post_action_delay": 20, # seconds', "# seconds",
         "not JSON: '#' does not start a comment; use // or /* */"),
        ("    ]\n}\n", "    ]\n}\n/* dangling\n", "/* dangling", "unterminated /* comment"),
    ],
)
def test_errors_point_into_the_json(old, new, at, message):
    assert old in BASE
    text = BASE.replace(old, new, 1)
    if message is None:
        load_policy_text(text, "p.json")
        return
    errors = errors_of(text)
    want = f"p.json:{pos_of(text, at)}: {message}"
    assert any(e.startswith(want) for e in errors), (want, errors)


def test_json_syntax_error_has_a_position():
    text = BASE.replace('"silence-logs": "engine",', '"silence-logs": "engine"')
    errors = errors_of(text)
    at = pos_of(text, '"post_action_delay"')
    assert len(errors) == 1 and errors[0].startswith(f"p.json:{at}: JSON: "), errors


def test_empty_prekill_hooks_are_fine():
    text = BASE.replace('"rulesets": [', '"prekill_hooks": [], "rulesets": [')
    assert load_policy_text(text, "p.json") == load_policy_text(BASE, "p.json")


def test_empty_and_non_object_files():
    assert errors_of("") == ["p.json:1:1: the policy must be an object"]
    assert errors_of("[]") == ["p.json:1:1: the policy must be an object"]
    assert errors_of("{}") == ["p.json:1:1: missing 'rulesets': a policy needs at least one ruleset"]


@pytest.mark.parametrize(
    ("text", "source", "expected"),
    [
        ("rulesets: []", "policy.json", True),  # the extension decides
        ("{}", "policy.yaml", False),
        ("{}", "policy.yml", False),
        ("  \n{}", "policy", True),
        ("// oomd\n/* x */ {}", "/etc/oomd/oomd", True),
        ("rulesets: []", "policy", False),
        ("# a YAML comment\n{a: 1}", "policy", False),
        ("", "policy", False),
    ],
)
def test_format_is_told_by_extension_then_content(text, source, expected):
    assert is_oomd_json(text, source) is expected


def test_json_without_extension_loads_by_content(tmp_path):
    path = tmp_path / "oomd-config"
    path.write_text(FIXTURE.read_text())
    assert load_policy(path).rulesets == load_policy(FIXTURE).rulesets


# ---- drop-ins --------------------------------------------------------------------------------------------------

DROP_IN = """\
{
    // replaces the detectors of the base ruleset of that name
    "rulesets": [
        {
            "name": "user session protection",
            "detectors": [
                [
                    "system pressure above 80 for 60s",
                    {
                        "name": "pressure_above",
                        "args": {"cgroup": "system.slice", "resource": "memory", "threshold": "80", "duration": "60"}
                    }
                ]
            ]
        }
    ]
}
"""


def test_json_drop_in_loads(tmp_path):
    path = tmp_path / "10-system.json"
    path.write_text(DROP_IN)
    drop_in = load_drop_in(path)
    (rs,) = drop_in.rulesets
    assert rs.actions is None and rs.detector_groups[0].detectors[0].args["threshold"] == "80"
    assert drop_in.mtime_ns == path.stat().st_mtime_ns


@pytest.mark.parametrize(
    ("old", "new", "at", "message"),
    [
        ('"name": "user session protection",', '"name": "user session protection", "silence-logs": "engine",',
         '"silence-logs"',
         "'silence-logs' cannot be set by a drop-in: it replaces only a base ruleset's detectors and actions"),
        ('"threshold": "80"', '"threshold": "x"', '"x"', "pressure_above: argument 'threshold': expected a number"),
        ('"rulesets": [', '"prekill_hooks": [{"name": "h"}], "rulesets": [', '{"name": "h"}',
         "pyoomd does not run prekill hooks yet"),
    ],
)
def test_json_drop_in_errors(old, new, at, message):
    text = DROP_IN.replace(old, new, 1)
    with pytest.raises(PolicyInvalid) as e:
        load_drop_in_text(text, "d.json")
    errors = [str(err) for err in e.value.errors]
    want = f"d.json:{pos_of(text, at)}: {message}"
    assert any(e.startswith(want) for e in errors), (want, errors)
