"""The `pyoomd` command line: `run` the daemon, `check` a policy, `convert` one to pyoomd's YAML, `reload` a
running daemon."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from cgroupfs import CgroupFS, LayoutError, detect_layout
from policy.convert import drop_in_to_yaml, policy_to_yaml
from policy.hostcheck import check_host, describe_host, host_capabilities
from policy.loader import PolicyInvalid, Spots, load_drop_in, load_policy
from policy.model import Policy
from policy.units import parse_duration
from supervisor.logsetup import setup_logging
from supervisor.reloadstatus import DEFAULT_TIMEOUT, ReloadError, request_reload


def _interval(value: str) -> float:
    seconds = parse_duration(value)
    if seconds <= 0:
        raise argparse.ArgumentTypeError("the interval must be greater than zero")
    return seconds


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pyoomd", description="Userspace OOM daemon for cgroup v1, hybrid and v2")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the daemon in the foreground")
    run.add_argument(
        "--config", type=Path, default=Path("/etc/pyoomd/config.yaml"), help="policy file (YAML, or oomd's JSON)"
    )
    run.add_argument("--dry-run", action="store_true", help="decide and record, but signal nothing")
    run.add_argument("--interval", type=_interval, help="seconds between snapshots (overrides the policy)")
    run.add_argument("--runtime-dir", type=Path, default=Path("/run/pyoomd"), help="sockets (default /run/pyoomd)")
    run.add_argument(
        "--state-dir", type=Path, default=Path("/var/lib/pyoomd"), help="action log (default /var/lib/pyoomd)"
    )
    run.add_argument(
        "--drop-in-dir", type=Path, help="directory of drop-in policy files, applied as they come, change and go"
    )
    run.add_argument(
        "--systemd-bus", default="system",
        help="where the service manager is: system (default), session, none, or a D-Bus address",
    )
    run.add_argument("--worker-pythonpath", help=argparse.SUPPRESS)  # development: workers from another tree

    check = sub.add_parser("check", help="validate a policy file (YAML or oomd JSON); exit 1 with PATH:LINE:COL "
                           "errors")
    check.add_argument("path", type=Path)
    what = check.add_mutually_exclusive_group()
    what.add_argument("--drop-in", action="store_true", help="the file is a drop-in (detectors or actions may be "
                      "left out)")
    what.add_argument("--host", action="store_true", help="also report how the policy meets this host now: the "
                      "cgroups each pattern matches, and plugins this cgroup layout cannot serve (warnings)")

    reload = sub.add_parser("reload", help="make the running daemon re-read its policy and wait for the outcome; "
                            "exit 1 when the policy is refused (the running one stays in force)")
    reload.add_argument(
        "--state-dir", type=Path, default=Path("/var/lib/pyoomd"), help="the daemon's state directory"
    )
    reload.add_argument("--pid", type=int, help="the daemon's PID (systemd's $MAINPID); default: from the state "
                        "directory")
    reload.add_argument("--timeout", type=_interval, default=DEFAULT_TIMEOUT, help="seconds to wait for the outcome")

    convert = sub.add_parser("convert", help="print a policy (oomd JSON or YAML) as pyoomd's YAML")
    convert.add_argument("path", type=Path)
    convert.add_argument("--drop-in", action="store_true", help="the file is a drop-in")
    return parser


def _print_errors(e: PolicyInvalid) -> int:
    for err in e.errors:
        print(err, file=sys.stderr)
    return 1


def cmd_check(path: Path, drop_in: bool = False, host: bool = False) -> int:
    """0 when the policy is valid (whatever --host finds: the host changes, the policy does not), else 1."""
    spots: Spots = {}
    try:
        if drop_in:
            loaded = load_drop_in(path)
            print(f"{path}: ok (drop-in, {len(loaded.rulesets)} rulesets)")
            return 0
        policy = load_policy(path, spots)
    except PolicyInvalid as e:
        return _print_errors(e)
    if host:
        _report_host(policy, path, spots)
    print(f"{path}: ok ({len(policy.rulesets)} rulesets)")
    return 0


def _report_host(policy: Policy, path: Path, spots: Spots) -> None:
    try:
        layout = detect_layout()
    except (LayoutError, OSError) as e:
        print(f"{path}: warning: cannot inspect this host's cgroups: {e}")
        return
    caps = host_capabilities(layout)
    for line in describe_host(caps):
        print(f"host: {line}")
    fs = CgroupFS(layout)
    try:
        for finding in check_host(policy, fs, caps, spots):
            print(finding.render(str(path)))
    except OSError as e:  # a cgroup file we may not read: the policy is still valid, the report incomplete
        print(f"{path}: warning: cannot finish inspecting this host's cgroups: {e}")
    finally:
        fs.close()


def cmd_convert(path: Path, drop_in: bool = False) -> int:
    try:
        text = drop_in_to_yaml(load_drop_in(path)) if drop_in else policy_to_yaml(load_policy(path))
    except PolicyInvalid as e:
        return _print_errors(e)
    sys.stdout.write(text)
    return 0


def cmd_reload(state_dir: Path, pid: int | None, timeout: float) -> int:
    """0 when the daemon loaded the policy, 1 when it refused it, 2 when there was no daemon or no answer."""
    try:
        status = request_reload(state_dir, pid, timeout)
    except (ReloadError, OSError) as e:
        print(f"pyoomd reload: {e}", file=sys.stderr)
        return 2
    if status.ok:
        print(f"policy reloaded: generation {status.generation} in force")
        return 0
    for err in status.errors:
        print(err, file=sys.stderr)
    print(f"pyoomd reload: policy refused; generation {status.generation} stays in force", file=sys.stderr)
    return 1


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
        systemd_bus=args.systemd_bus,
        drop_in_dir=args.drop_in_dir.absolute() if args.drop_in_dir else None,
    )
    from supervisor.selfprotect import protect_self

    protect_self(log)  # the workers inherit the OOM score; each locks its own memory
    return Arbiter(options, policy, layout).run()


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    setup_logging("supervisor")
    if args.command == "check":
        sys.exit(cmd_check(args.path, args.drop_in, args.host))
    if args.command == "convert":
        sys.exit(cmd_convert(args.path, args.drop_in))
    if args.command == "reload":
        sys.exit(cmd_reload(args.state_dir, args.pid, args.timeout))
    sys.exit(cmd_run(args))
