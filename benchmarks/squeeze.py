"""How much later pyoomd kills a thrasher when its own cgroup is squeezed (tests/starvation.py): the daemon in a
memory cgroup with only SLACK above what it uses, a page-cache thrasher of its own in there, against the same
daemon with room to spare. Run as root: `.venv/bin/python benchmarks/squeeze.py [--runs 5]`. Prints each run and
the medians; the test (tests/test_memory_starvation.py) only asserts that the squeezed daemon still kills.
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests import starvation
from tests.realhost import CgroupSandbox

_counter = itertools.count()


def one(squeeze: bool) -> starvation.Outcome:
    cg = CgroupSandbox(name=f"pyoomd-squeeze-{os.getpid()}-{next(_counter)}")
    cg.mkdir()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            return starvation.run(cg, Path(tmp), squeeze)
    finally:
        cg.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    results: dict[str, list[starvation.Outcome]] = {"room to spare": [], "squeezed": []}
    print(f"{'run':>3}  {'daemon':14}  {'limit MiB':>9}  {'own some avg10':>14}  {'workload start -> kill s':>24}")
    for i in range(args.runs):
        for label, squeeze in (("room to spare", False), ("squeezed", True)):
            o = one(squeeze)
            results[label].append(o)
            limit = f"{o.daemon_limit >> 20}" if o.daemon_limit else "-"
            pressure = f"{o.daemon_pressure:.2f}" if o.daemon_pressure is not None else "-"
            print(f"{i + 1:>3}  {label:14}  {limit:>9}  {pressure:>14}  {o.seconds_to_kill:>24.2f}"
                  + ("" if o.killed_by_pyoomd else "  (not by pyoomd!)"))
    base = statistics.median(o.seconds_to_kill for o in results["room to spare"])
    squeezed = statistics.median(o.seconds_to_kill for o in results["squeezed"])
    print()
    print(f"median, room to spare: {base:.2f} s; squeezed: {squeezed:.2f} s; ratio {squeezed / base:.2f}")


if __name__ == "__main__":
    main()
