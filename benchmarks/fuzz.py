"""The long fuzz pass over every parser of outside input: policies, IPC frames, cgroup and procfs files.

Run: `.venv/bin/python benchmarks/fuzz.py [--examples 20000] [--seed 0] [--only policy]`. The targets, their inputs
and their contracts are tests/fuzz_targets.py, which the property tests (tests/test_fuzz_*.py) run with a few
hundred examples each; this runs many more and prints one row per target: examples run, how many ended in the
parser's own typed error, how many were accepted, and how many raised anything else (must be 0; the first few are
printed with their input). Exits 1 when any was unexpected.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, Phase, given, seed, settings

# tests/ is not installed with pyoomd; its fuzz targets are imported from the checkout.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.fuzz_targets import ACCEPTED, TYPED, Target, all_targets

SHOW = 3  # unexpected exceptions printed per target
SLOW = 1.0  # seconds: an example slower than this has its input printed


def run_target(target: Target, examples: int, rng_seed: int) -> dict[str, Any]:
    counts: Counter[str] = Counter()
    failures: list[tuple[str, str]] = []
    slowest = 0.0
    slowest_input = [""]

    @settings(max_examples=examples, database=None, deadline=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @seed(rng_seed)
    @given(target.inputs)
    def one(value: Any) -> None:
        nonlocal slowest
        start = time.perf_counter()
        try:
            outcome = target.check(value)
        except Exception as e:  # the whole point: count what escapes instead of stopping at the first
            counts["unexpected"] += 1
            if len(failures) < SHOW:
                failures.append((f"{type(e).__name__}: {str(e)[:300]}", repr(value)))
        else:
            counts[outcome] += 1
        took = time.perf_counter() - start
        if took > slowest:
            slowest = took
            slowest_input[0] = repr(value)

    start = time.perf_counter()
    one()
    return {"counts": counts, "failures": failures, "slowest": slowest, "slowest_input": slowest_input[0],
            "seconds": time.perf_counter() - start}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--examples", type=int, default=20_000, help="examples per target (default 20000)")
    ap.add_argument("--seed", type=int, default=0, help="hypothesis seed, for a reproducible run (default 0)")
    ap.add_argument("--only", default="", help="run only targets whose name contains this")
    ap.add_argument("--full", action="store_true", help="print the whole input of an unexpected exception")
    args = ap.parse_args(argv)
    # Every dropped frame logs a warning once per reason, which here means thousands of lines.
    logging.getLogger("pyoomd.ipc").setLevel(logging.ERROR)

    targets = [t for t in all_targets() if args.only in t.name]
    header = (f"{'target':34} {'examples':>9} {'typed errors':>13} {'accepted':>9} {'unexpected':>11} "
              f"{'slowest':>8} {'time':>7}")
    print(header)
    print("-" * len(header))
    total_unexpected = 0
    reports = []
    for t in targets:
        r = run_target(t, args.examples, args.seed)
        c = r["counts"]
        n = c[TYPED] + c[ACCEPTED] + c["unexpected"]
        total_unexpected += c["unexpected"]
        print(f"{t.name:34} {n:>9} {c[TYPED]:>13} {c[ACCEPTED]:>9} {c['unexpected']:>11} "
              f"{r['slowest']:>7.2f}s {r['seconds']:>6.0f}s", flush=True)
        reports.append((t, r))
    print()
    for t, r in reports:
        for error, value in r["failures"]:
            print(f"UNEXPECTED in {t.name}: {error}\n    input: {value if args.full else value[:400]}")
    for t, r in reports:
        if r["slowest"] > SLOW:
            shown = r["slowest_input"] if args.full else r["slowest_input"][:300]
            print(f"slowest input of {t.name} ({r['slowest']:.1f} s): {shown}")
    print("targets:")
    for t in targets:
        print(f"  {t.name:34} {t.what}")
    return 1 if total_unexpected else 0


if __name__ == "__main__":
    sys.exit(main())
