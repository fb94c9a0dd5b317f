"""The `pyoomd` command line: `run` the daemon, `check` a policy."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from cgroupfs import LayoutError, detect_layout
from policy.loader import PolicyInvalid, load_policy
from policy.units import parse_duration


def _interval(value: str) -> float:
    seconds = parse_duration(value)
    if seconds <= 0:
        raise argparse.ArgumentTypeError("the interval must be greater than zero")
    return seconds


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pyoomd", description="Userspace OOM daemon for cgroup v1, hybrid and v2")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the daemon in the foreground")
    run.add_argument("--config", type=Path, default=Path("/etc/pyoomd/config.yaml"), help="policy file (YAML)")
    run.add_argument("--dry-run", action="store_true", help="decide and record, but signal nothing")
    run.add_argument("--interval", type=_interval, help="seconds between snapshots (overrides the policy)")
    run.add_argument("--runtime-dir", type=Path, default=Path("/run/pyoomd"), help="sockets (default /run/pyoomd)")
    run.add_argument(
        "--state-dir", type=Path, default=Path("/var/lib/pyoomd"), help="action log (default /var/lib/pyoomd)"
    )
    run.add_argument("--worker-pythonpath", help=argparse.SUPPRESS)  # development: workers from another tree

    check = sub.add_parser("check", help="validate a policy file; exit 1 with PATH:LINE:COL errors")
    check.add_argument("path", type=Path)
    return parser


def cmd_check(path: Path) -> int:
    try:
        policy = load_policy(path)
    except PolicyInvalid as e:
        for err in e.errors:
            print(err, file=sys.stderr)
        return 1
    print(f"{path}: ok ({len(policy.rulesets)} rulesets)")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from supervisor.arbiter import Arbiter, Options

    log = logging.getLogger("pyoomd.supervisor")
    try:
        layout = detect_layout()
    except (LayoutError, OSError) as e:
        log.critical("cannot start: %s", e)
        return 1
    try:
        policy = load_policy(args.config)
    except PolicyInvalid as e:
        for err in e.errors:
            log.critical("cannot start: %s", err)
        return 1
    options = Options(
        config=args.config.absolute(),
        runtime_dir=args.runtime_dir.absolute(),  # workers run in "/"
        state_dir=args.state_dir.absolute(),
        dry_run=args.dry_run,
        interval=args.interval,
        worker_pythonpath=args.worker_pythonpath,
    )
    return Arbiter(options, policy, layout).run()


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="pyoomd[supervisor:%(process)d] %(levelname)s %(message)s"
    )
    if args.command == "check":
        sys.exit(cmd_check(args.path))
    sys.exit(cmd_run(args))
