"""pyoomd keeps killing when its own cgroup is squeezed and thrashing (tests/starvation.py); how much later than
with room to spare is measured by benchmarks/squeeze.py, not asserted here."""

from __future__ import annotations

import pytest

from tests import starvation

pytestmark = pytest.mark.real


def test_a_squeezed_daemon_still_kills_the_thrasher_and_never_its_own_cgroup(cgroups, tmp_path):
    outcome = starvation.run(cgroups, tmp_path, squeeze=True)
    assert outcome.killed_by_pyoomd, outcome
    assert outcome.daemon_limit > 0
    # Its own cgroup's thrasher (protected: pyoomd's own cgroup) is still there.
    alive = [p for p in cgroups.procs if p.poll() is None]
    assert len(alive) == 1, outcome
