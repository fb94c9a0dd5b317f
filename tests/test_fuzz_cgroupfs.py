"""Bad cgroup and procfs files (issue 7): every parser of their text returns its result or raises ValueError, the
one error its callers handle (a cgroup's PSI becomes absent, never 0), and the keyed and mount parsers skip what
they cannot read. The property tests start from the real kernel samples (tests/fixtures/kernel-samples), truncated,
with lines dropped or repeated, tokens replaced by huge, negative, non-numeric or non-ASCII numbers, bytes changed,
and from garbage (tests/fuzz_targets.py); the tests after them pin the bugs the fuzzing found."""

from __future__ import annotations

import pytest
from hypothesis import given

from cgroupfs.layout import parse_mountinfo
from cgroupfs.parse import parse_pressure
from tests.fixture_trees import SESSION_SCOPE, sample_text, v2_host
from tests.fuzz_targets import Target, cgroup_targets, ci_settings

EXAMPLES = 200


@pytest.mark.parametrize("target", cgroup_targets(), ids=lambda t: t.name)
def test_any_file_text_parses_or_raises_the_parsers_own_error(target: Target):
    @ci_settings(EXAMPLES)
    @given(target.inputs)
    def run(value: object) -> None:
        target.check(value)

    run()


@pytest.mark.parametrize("text", [
    "some avg10=0.00 avg60=0.00 avg300=0.00\n",  # truncated before total: was KeyError
    "some avg10=0.00 avg60=0.00 avg300=0.00 total=1\nfull avg10=0.00\n",  # a 'full' line cut short
    "some total=5\n",
    "some avg10=0.00 avg60=0.00 avg300=0.00 total=1e400\n",  # was OverflowError
    "some avg10=0.00 avg60=0.00 avg300=0.00 total=inf\n",
    "some avg10=nan avg60=0.00 avg300=0.00 total=1\n",  # was accepted: a NaN is never above a threshold
    "some avg10=0.00 avg60=inf avg300=0.00 total=1\n",
])
def test_truncated_or_non_finite_pressure_file_is_a_value_error(text):
    with pytest.raises(ValueError):
        parse_pressure(text)


def test_cpu_pressure_without_full_line_still_parses():
    # Kernels before 5.13 print no 'full' line for cpu: not an error, the full figures are absent.
    p = parse_pressure(sample_text("proc/kernel-4.20-5.12-node-exporter-2019/pressure-cpu"))
    assert p.full_avg10 is None and p.full_total is None


def test_truncated_cgroup_pressure_leaves_the_figure_absent_and_the_record_whole(tmp_path):
    host = v2_host(tmp_path)
    psi = host.cgroup_dir("unified", SESSION_SCOPE) / "memory.pressure"
    psi.write_text(psi.read_text().split(" total=")[0] + "\n")  # cut off mid-line, as a short read would
    st = host.fs().read_stats(SESSION_SCOPE)
    assert st is not None and st.pressure is None
    assert st.usage is not None and st.nr_procs == 14


def test_mountinfo_backslash_before_non_octal_digits_is_kept_literally():
    # "\\999" made _unescape raise ValueError (int("999", 8)); the kernel escapes only as octal.
    line = r"30 25 0:26 / /sys/fs/cgroup/we\999ird\040dir rw - cgroup2 cgroup2 rw,nsdelegate"
    (h,) = parse_mountinfo(line + "\n")
    assert h.mount_point == "/sys/fs/cgroup/we\\999ird dir"
