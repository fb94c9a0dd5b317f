"""Bad policies (issue 7): whatever the file holds, loading it gives a Policy or PolicyInvalid with every error at
FILE:LINE:COL, never another exception, and never a hang. The property tests throw mutated real policies, alias
bombs, deep nesting and garbage at the YAML and oomd JSON loaders (tests/fuzz_targets.py); the tests after them
pin each bug the fuzzing found, with the input that found it."""

from __future__ import annotations

import time

import pytest
from hypothesis import given

from policy.loader import MAX_DEPTH, PolicyInvalid, load_drop_in_text, load_policy_text
from tests.fuzz_targets import ACCEPTED, Target, ci_settings, policy_check, policy_targets

EXAMPLES = 120


@pytest.mark.parametrize("target", policy_targets(), ids=lambda t: t.name)
def test_any_policy_text_loads_or_fails_with_positioned_errors_only(target: Target):
    @ci_settings(EXAMPLES)
    @given(target.inputs)
    def run(text: str) -> None:
        target.check(text)

    run()


RULESET = """\
  - name: {name}
    detectors:
      - name: g
        all:
          - pressure_above: {{cgroup: system.slice, resource: memory, threshold: 80, duration: 60}}
    actions:
      - kill_by_memory_size_or_growth: {{cgroup: "system.slice/*", {arg}}}
"""


def ruleset(name: str = "r", arg: str = "recursive: false") -> str:
    return RULESET.format(name=name, arg=arg)


def errors_of(text: str, source: str = "p.yaml") -> list[tuple[int, int, str]]:
    with pytest.raises(PolicyInvalid) as info:
        load_policy_text(text, source)
    assert str(info.value).startswith(f"{source}:")
    return [(e.line, e.col, e.message) for e in info.value.errors]


def billion_laughs(levels: int = 9, width: int = 10) -> str:
    lines = ['lol0: &lol0 ["lol"]']
    for i in range(1, levels + 1):
        lines.append(f"lol{i}: &lol{i} [{', '.join([f'*lol{i - 1}'] * width)}]")
    return "\n".join(lines) + "\n"


def test_alias_bomb_is_refused_at_the_alias_in_moments():
    # 10**9 strings once expanded: the checker's walks and messages would run for hours and exhaust memory.
    text = billion_laughs() + "rulesets: *lol9\n"
    start = time.monotonic()
    errors = errors_of(text)
    assert time.monotonic() - start < 10  # generous: it takes milliseconds
    assert len(errors) == 1
    line, col, message = errors[0]
    assert "expands to more than" in message
    assert line == 6  # lol5: the first anchor whose uses push the total past the bound
    assert col > 1


def test_alias_bomb_in_oomd_json_is_refused_too():
    defs = ['&a0 ["lol"]'] + [f"&a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 10)]
    text = '{"defs": [' + ", ".join(defs) + '], "rulesets": *a9}'
    (error,) = errors_of(text, "p.json")
    assert "JSON: the document expands" in error[2]


def test_small_aliases_still_work():
    # Anchors and aliases are YAML a policy may use: one detector group shared by two rulesets.
    text = """rulesets:
  - name: a
    detectors:
      - &thrashing
        name: system.slice thrashing
        all:
          - pressure_above: {cgroup: system.slice, resource: memory, threshold: 80, duration: 60}
    actions:
      - kill_by_memory_size_or_growth: {cgroup: "system.slice/*"}
  - name: b
    detectors: [*thrashing]
    actions:
      - kill_by_memory_size_or_growth: {cgroup: "user.slice/*"}
"""
    policy = load_policy_text(text, "p.yaml")
    assert [rs.detector_groups[0].name for rs in policy.rulesets] == ["system.slice thrashing"] * 2


def test_merge_keys_work_and_errors_in_merged_keys_point_at_the_mapping():
    # `<<: *base` gave KeyError: ruamel records no position for a key a mapping got through a merge.
    good = "base: &base {name: r, post_action_delay: 5s}\nrulesets:\n  - <<: *base\n" + ruleset().split("\n", 1)[1]
    errors = errors_of(good)
    assert errors == [(1, 1, "unknown key 'base' in the policy (allowed: version, interval, dry_run, rulesets)")]
    bad = "rulesets:\n  - &r {name: r, post_action_delay: xx}\n  - <<: *r\n    name: s\n"
    errors = errors_of(bad)
    assert (3, 5, "'post_action_delay': invalid duration 'xx': use seconds or a string like '500ms', '30s', "
            "'2m'") in errors  # the merging mapping, for the delay it merged in


@pytest.mark.parametrize("text", [
    "rulesets: !foo [{name: x}]",
    "rulesets: [!!omap [name: x]]",
    "rulesets:\n" + ruleset().replace("kill_by_memory_size_or_growth: {", "kill_by_memory_size_or_growth: !!omap [")
    .replace("recursive: false}", "recursive: false]"),
])
def test_explicitly_tagged_collections_give_positioned_errors(text):
    # ruamel keeps no positions inside an explicitly tagged collection; the loader raised TypeError.
    try:
        load_policy_text(text, "p.yaml")
    except PolicyInvalid as e:
        assert all(err.line >= 1 and err.col >= 1 for err in e.errors)


@pytest.mark.parametrize(("text", "at", "message"), [
    ("rulesets: [!!bool abc]\n", (1, 12), "YAML: cannot read this value as !!bool"),  # was KeyError
    ("rulesets: [!!int 0x]\n", (1, 12), "YAML: cannot read this value as !!int"),  # was IndexError
    ("rulesets:\n  - name: r\n    silence_logs: !!set engine\n", (3, 19),  # was AttributeError
     "YAML: cannot read this value as !!set"),
    ("defs: [&b0 [a], &b1 [*b0]]\nrulesets: !!set {? *b1}\n", (2, 11),  # was TypeError
     "YAML: cannot read this value as !!set: unhashable type: 'CommentedSeq'"),
    ("interval: 2001-02-30\nrulesets: []\n", (1, 11),  # was ValueError
     "YAML: cannot read this value as !!timestamp: day is out of range for month"),
])
def test_a_value_ruamel_cannot_construct_is_refused_where_it_is_written(text, at, message):
    # Found by putting YAML's standard tags before the values of real policies.
    (error,) = errors_of(text)
    assert error == (*at, message)


def test_json_document_with_a_python_tag_is_refused_with_a_position():
    # Found by fuzzing: TypeError in the JSON strictness walk.
    errors = errors_of("--- !!python/object/apply:os.system ['true']", "p.json")
    assert all(line >= 1 and col >= 1 for line, col, _ in errors)


@pytest.mark.parametrize(("text", "line"), [
    ("rulesets: &a [*a]\n", 1),
    ("rulesets:\n  - &r {name: x, detectors: [*r]}\n", 2),
])
def test_recursive_alias_is_refused(text, line):
    (error,) = errors_of(text)
    assert error[0] == line and "refer to a node that contains it" in error[2]


@pytest.mark.parametrize(("text", "source"), [
    ("rulesets: " + "[" * 5000 + "]" * 5000, "p.yaml"),
    ("rulesets: " + "{a: " * 3000 + "1" + "}" * 3000, "p.yaml"),
    ('{"rulesets": ' + "[" * 5000 + "]" * 5000 + "}", "p.json"),
])
def test_deep_nesting_is_refused_at_the_level_past_the_bound(text, source):
    # Was RecursionError, after seconds of parsing.
    (error,) = errors_of(text, source)
    assert error[2].endswith(f"nested deeper than {MAX_DEPTH} levels")
    assert error[0] == 1 and error[1] > MAX_DEPTH


def test_integer_of_more_than_4300_digits_is_refused_where_it_is_written():
    # Was the ValueError of Python's integer-string limit, with no position.
    (error,) = errors_of("interval: 1" + "0" * 5000 + "\nrulesets: []\n")
    assert error[:2] == (1, 11)
    assert "4300 digits" in error[2] and "set_int_max_str_digits" not in error[2]


def test_lone_surrogate_escape_is_refused():
    # "\udcff" loaded as a Python string the supervisor could not msgpack-encode for the workers.
    (error,) = errors_of('rulesets:\n  - name: "\\udcff"\n')
    assert error[:2] == (2, 11) and "lone surrogate" in error[2]


def test_alias_of_a_list_as_a_key_is_refused():
    # Was TypeError: unhashable type: 'CommentedSeq'.
    (error,) = errors_of("defs: [&b0 [a], &b1 [*b0]]\n? *b1\n: 1\n")
    # At the list the alias repeats: ruamel's node graph keeps no position for the alias itself.
    assert error == (1, 17, "YAML: found unhashable key (a list of lists, used as a key through an alias)")


def test_plugin_argument_past_a_floats_range_points_at_the_value():
    # Was OverflowError from float() in the argument declarations.
    text = "rulesets:\n" + ruleset().replace("threshold: 80", "threshold: 1" + "0" * 400)
    (error,) = errors_of(text)
    assert error[0] == 6 and error[2] == "pressure_above: argument 'threshold': the number is too large"


def test_ruleset_duration_past_a_floats_range_points_at_the_value():
    # Was OverflowError: found with post_action_delay: 1 followed by 400 zeros.
    text = "rulesets:\n" + ruleset() + "    post_action_delay: 1" + "0" * 400 + "\n"
    (error,) = errors_of(text)
    assert error == (9, 24, "'post_action_delay': the number is too large")


@pytest.mark.parametrize(("text", "message"), [
    ("interval: .nan\nrulesets:\n" + ruleset(), "'interval': expected a finite number of seconds, got nan"),
    ("rulesets:\n" + ruleset() + "    post_action_delay: .inf\n",
     "'post_action_delay': expected a finite number of seconds, got inf"),
    ("rulesets:\n" + ruleset().replace("threshold: 80", "threshold: .nan"),
     "pressure_above: argument 'threshold' must be a finite number, got nan"),
    ("rulesets:\n" + ruleset(arg="size_threshold: 1e400"),
     "kill_by_memory_size_or_growth: argument 'size_threshold' must be a finite number, got inf"),
])
def test_non_finite_numbers_are_refused(text, message):
    # Accepted before: a NaN delay never ends the ruleset's rest, a NaN threshold is never crossed.
    assert [m for _, _, m in errors_of(text)] == [message]


@pytest.mark.parametrize("written", ["nan", "'NaN'", "inf", "'-inf'", "'1e999'", "'Infinity'"])
def test_non_finite_numbers_written_as_words_are_refused(written):
    # YAML's core schema reads `nan` and `inf` (without the dot) as strings, and these reached float(): accepted
    # before, so `threshold: nan` made a detector that never fired.
    text = "rulesets:\n" + ruleset().replace("threshold: 80", f"threshold: {written}")
    (error,) = errors_of(text)
    assert error[0] == 6 and error[2].startswith("pressure_above: argument 'threshold': expected a finite number")


def test_an_integer_argument_written_as_a_string_keeps_every_digit():
    from policy.plugins.args import parse_number

    assert parse_number("18446744073709551615", integer=True) == 18446744073709551615  # float() would round it
    assert parse_number(" -3 ", integer=True) == -3
    with pytest.raises(ValueError, match="integer"):
        parse_number("2.5", integer=True)


def test_argument_integer_that_msgpack_cannot_carry_is_refused_and_every_accepted_policy_travels():
    # Accepted before, then the supervisor's PolicyUpdate to the workers failed with OverflowError.
    text = "rulesets:\n" + ruleset(arg="size_threshold: 100000000000000000000000")
    (error,) = errors_of(text)
    assert error[2] == "kill_by_memory_size_or_growth: argument 'size_threshold': the number is too large"
    check = policy_check("p.yaml", drop_in=False)
    # The largest integer msgpack carries passes (a string argument keeps it as written), and check() asserts that
    # the policy reaches a worker unchanged.
    largest = ("rulesets:\n" + ruleset()).replace('kill_by_memory_size_or_growth: {cgroup: "system.slice/*", '
                                                  "recursive: false}", "restart_unit: {service: 18446744073709551615}")
    assert check(largest) == ACCEPTED


def test_drop_in_with_an_alias_bomb_is_refused():
    with pytest.raises(PolicyInvalid) as info:
        load_drop_in_text(billion_laughs() + "rulesets: *lol9\n", "d.yaml")
    assert "expands to more than" in str(info.value)
