"""The `pyoomd` command line: `run` the daemon, `check` a policy, `convert` one to pyoomd's YAML; and, talking to
a running daemon over D-Bus, `status`, `dump`, `explain`, `reload`, `dry-run`."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from cgroupfs import CgroupFS, LayoutError, detect_layout
from policy.convert import drop_in_to_yaml, policy_to_yaml
from policy.hostcheck import check_host, describe_host, host_capabilities
from policy.loader import PolicyInvalid, Spots, load_drop_in, load_policy
from policy.model import Policy
from policy.units import parse_duration
from supervisor.logsetup import setup_logging
from supervisor.reloadstatus import DEFAULT_TIMEOUT, ReloadError, request_reload

if TYPE_CHECKING:
    from supervisor.workers import ForkServer

PR_SET_CHILD_SUBREAPER = 36


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
    run.add_argument(
        "--bus", default="system",
        help="where to serve pyoomd's D-Bus interface io.github.pyoomd1: system (default), session, none, or a "
             "D-Bus address",
    )
    run.add_argument("--user", default="pyoomd", help="the unprivileged user the collector and detector run as, "
                     "when pyoomd is started as root (default: pyoomd; 'root' keeps them root)")
    run.add_argument("--admin-group", help="a group whose members may, besides root, call the privileged D-Bus "
                     "methods (Reload, SetDryRun, PauseRuleset)")
    run.add_argument("--metrics-textfile", type=Path, help="write Prometheus metrics to this file every 15 s "
                     "(node_exporter's textfile collector)")
    run.add_argument("--metrics-listen", help="serve Prometheus metrics at http://ADDRESS:PORT/metrics (loopback "
                     "only, e.g. 127.0.0.1:9466)")
    run.add_argument("--worker-pythonpath", help=argparse.SUPPRESS)  # development: workers from another tree

    check = sub.add_parser("check", help="validate a policy file (YAML or oomd JSON); exit 1 with PATH:LINE:COL "
                           "errors")
    check.add_argument("path", type=Path)
    what = check.add_mutually_exclusive_group()
    what.add_argument("--drop-in", action="store_true", help="the file is a drop-in (detectors or actions may be "
                      "left out)")
    what.add_argument("--host", action="store_true", help="also report how the policy meets this host now: the "
                      "cgroups each pattern matches, and plugins this cgroup layout cannot serve (warnings)")

    def bus_option(p: argparse.ArgumentParser) -> None:
        p.add_argument("--bus", default="system", help="the bus the daemon serves: system (default), session, or a "
                       "D-Bus address")

    status = sub.add_parser("status", help="the running daemon: layout, policy, workers, rulesets, last actions")
    bus_option(status)
    status.add_argument("--actions", type=int, default=5, help="how many of the newest action records to show")
    status.add_argument("--json", action="store_true", help="the properties and records as JSON")

    dump = sub.add_parser("dump", help="what the collector last saw: each watched cgroup's memory and pressure")
    bus_option(dump)
    dump.add_argument("--json", action="store_true", help="the snapshot as JSON, as GetSnapshot gives it")
    dump.add_argument("--local", action="store_true", help="read the cgroups here and now instead of asking the "
                      "daemon (no daemon needed)")
    dump.add_argument("--config", type=Path, default=Path("/etc/pyoomd/config.yaml"),
                      help="with --local: the policy whose cgroups to read")

    explain = sub.add_parser("explain", help="for each ruleset: which detectors hold, what each action would "
                             "kill now and why")
    bus_option(explain)
    explain.add_argument("--json", action="store_true", help="as JSON, as Explain gives it")

    top = sub.add_parser("top", help="a live view of the watched cgroups and how close each ruleset is to firing")
    bus_option(top)
    top.add_argument("--interval", type=_interval, default=2.0, help="seconds between frames (default 2)")
    top.add_argument("--rows", type=int, default=20, help="how many cgroups to show (the most pressured first)")
    top.add_argument("--once", action="store_true", help="one frame, then exit")

    dry = sub.add_parser("dry-run", help="turn the running daemon's dry-run on or off (root)")
    bus_option(dry)
    dry.add_argument("state", choices=("on", "off"))

    reload = sub.add_parser("reload", help="make the running daemon re-read its policy and wait for the outcome; "
                            "exit 1 when the policy is refused (the running one stays in force)")
    bus_option(reload)
    reload.add_argument(
        "--state-dir", type=Path, help="instead of D-Bus: signal the daemon of this state directory and wait there "
        "(what the systemd unit does: it works with no bus at all)"
    )
    reload.add_argument("--pid", type=int, help="with --state-dir: the daemon's PID (systemd's $MAINPID); default: "
                        "from the state directory")
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


def cmd_reload(args: argparse.Namespace) -> int:
    """0 when the daemon loaded the policy, 1 when it refused it, 2 when there was no daemon or no answer."""
    if args.state_dir is None and args.pid is None:
        from supervisor.client import ClientError, DaemonClient

        try:
            client = DaemonClient(args.bus, timeout=args.timeout)
            ok, errors = client.call("Reload")
            generation = client.properties()["PolicyGeneration"]
        except ClientError as e:
            print(f"pyoomd reload: {e}", file=sys.stderr)
            return 2
    else:
        try:
            status = request_reload(args.state_dir or Path("/var/lib/pyoomd"), args.pid, args.timeout)
        except (ReloadError, OSError) as e:
            print(f"pyoomd reload: {e}", file=sys.stderr)
            return 2
        ok, errors, generation = status.ok, status.errors, status.generation
    if ok:
        print(f"policy reloaded: generation {generation} in force")
        return 0
    for err in errors:
        print(err, file=sys.stderr)
    print(f"pyoomd reload: policy refused; generation {generation} stays in force", file=sys.stderr)
    return 1


def cmd_status(args: argparse.Namespace) -> int:
    from supervisor.client import ClientError, DaemonClient
    from supervisor.views import render_status

    try:
        props, records = DaemonClient(args.bus).status(max(0, args.actions))
    except ClientError as e:
        print(f"pyoomd status: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"properties": props, "actions": json.loads(records)}, indent=2))
    else:
        print(render_status(props, json.loads(records)))
    return 0


def cmd_dump(args: argparse.Namespace) -> int:
    from supervisor.views import render_snapshot

    if args.local:
        try:
            snapshot = local_snapshot(args.config)
        except PolicyInvalid as e:
            return _print_errors(e)
        except (LayoutError, OSError) as e:
            print(f"pyoomd dump: cannot read this host's cgroups: {e}", file=sys.stderr)
            return 2
    else:
        from supervisor.client import ClientError, DaemonClient

        try:
            snapshot = json.loads(DaemonClient(args.bus).call("GetSnapshot"))
        except ClientError as e:
            print(f"pyoomd dump: {e} (pyoomd dump --local reads the cgroups without a daemon)", file=sys.stderr)
            return 2
    print(json.dumps(snapshot, indent=2) if args.json else render_snapshot(snapshot))
    return 0


def local_snapshot(config: Path) -> dict:
    """What the collector would read for this policy, read here and now (no event sources opened)."""
    import dataclasses

    import msgspec

    from policy.engine import policy_needs
    from workers.collector import SnapshotTaker

    class _NoEvents:
        def register(self, fd: int, eventmask: int) -> None: ...

        def unregister(self, fd: int) -> None: ...

    needs = dataclasses.replace(policy_needs(load_policy(config)), pressure_watch=(), usage_watch=(),
                                trigger_watch=())
    taker = SnapshotTaker(CgroupFS(detect_layout()), _NoEvents())
    try:
        taker.use(needs)
        return msgspec.to_builtins(taker.take(generation=0))
    finally:
        taker.close()


def cmd_explain(args: argparse.Namespace) -> int:
    from supervisor.client import ClientError, DaemonClient
    from supervisor.views import render_explain

    try:
        explanation = json.loads(DaemonClient(args.bus).call("Explain"))
    except ClientError as e:
        print(f"pyoomd explain: {e}", file=sys.stderr)
        return 2
    print(json.dumps(explanation, indent=2) if args.json else render_explain(explanation))
    return 0


def cmd_top(args: argparse.Namespace) -> int:
    from supervisor.client import ClientError
    from supervisor.top import run

    try:
        return run(args.bus, args.interval, args.once, args.rows)
    except ClientError as e:
        print(f"pyoomd top: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0


def cmd_dry_run(args: argparse.Namespace) -> int:
    from supervisor.client import ClientError, DaemonClient

    client = DaemonClient(args.bus)
    try:
        client.call("SetDryRun", args.state == "on")
        props = client.properties()
    except ClientError as e:
        print(f"pyoomd dry-run: {e}", file=sys.stderr)
        return 2
    print(f"dry-run {'on' if props['DryRun'] else 'off'} ({props['DryRunSource']})")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from supervisor.arbiter import Arbiter, Options

    log = logging.getLogger("pyoomd.supervisor")
    if args.metrics_listen:
        from supervisor.metrics import parse_listen

        try:
            parse_listen(args.metrics_listen)
        except ValueError as e:
            log.critical("cannot start: %s", e)
            return 2
    forkserver = start_forkserver(log, args) if args.worker_pythonpath is None else None
    try:
        layout = detect_layout()
    except (LayoutError, OSError) as e:
        log.critical("cannot start: %s", e)
        return 1
    from supervisor.policyfiles import PolicySource

    source = PolicySource(args.config.absolute(), args.state_dir.absolute())
    startup_errors: list[str] = []
    try:
        policy = source.load()
    except PolicyInvalid as e:
        startup_errors = [str(err) for err in e.errors]
        kept = source.last_good()
        for err in e.errors:
            log.critical("%s: %s", "policy refused" if kept else "cannot start", err)
        if kept is None:
            return 1
        policy = kept.policy
        log.critical("running the last policy that loaded instead (%s, from %s, loaded %s): the host stays protected; "
                     "fix %s and reload", kept.copy, kept.source,
                     time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(kept.loaded_at)), args.config)
    options = Options(
        config=args.config.absolute(),
        runtime_dir=args.runtime_dir.absolute(),  # workers run in "/"
        state_dir=args.state_dir.absolute(),
        dry_run=args.dry_run,
        interval=args.interval,
        worker_pythonpath=args.worker_pythonpath,
        systemd_bus=args.systemd_bus,
        bus=args.bus,
        user=args.user,
        admin_group=args.admin_group,
        metrics_textfile=args.metrics_textfile.absolute() if args.metrics_textfile else None,
        metrics_listen=args.metrics_listen,
        drop_in_dir=args.drop_in_dir.absolute() if args.drop_in_dir else None,
    )
    from supervisor.selfprotect import protect_self

    protect_self(log)  # the workers inherit the OOM score; each locks its own memory
    return Arbiter(options, policy, layout, startup_errors=startup_errors, forkserver=forkserver).run()


def _bus_expected(bus: str) -> bool:
    """Whether a --bus / --systemd-bus value will most likely find a bus: an address given, or a socket there."""
    from workers.units import candidate_addresses

    if bus == "none":
        return False
    return any(not a.startswith("unix:path=") or Path(a[len("unix:path="):]).exists() for a in candidate_addresses(bus))


def start_forkserver(log: logging.Logger, args: argparse.Namespace) -> ForkServer | None:
    """Make this process the subreaper of its workers and fork the fork server from it, now: nothing but imports
    has happened in it yet (no thread, no socket, no file of the host read), the image the workers share."""
    import ctypes

    from ipc.build import build_id
    from policy.plugins.registry import load_entry_points
    from supervisor.workers import ForkServer, ForkServerError
    from workers import forkserver

    # Both before the fork, so that the image is complete: a forked worker runs this very code (its build is the
    # supervisor's by construction, whatever the files on disk say by then) and needs nothing more from disk.
    build_id()
    load_entry_points()
    # The D-Bus client (dbus-fast, asyncio) is imported only where a bus is used. When one will be, it is imported
    # here, so that the supervisor's interface and the actuator's service manager share its pages.
    if _bus_expected(args.bus) or _bus_expected(args.systemd_bus):
        import supervisor.dbus_service  # noqa: F401
        import workers.systemd  # noqa: F401

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        log.warning("cannot become the workers' subreaper (%s): workers are exec'd, each with its own memory",
                    os.strerror(ctypes.get_errno()))
        return None
    pid, sock = forkserver.start(os.getpid())
    server = ForkServer(pid, sock)
    try:
        server.wait_ready()
    except ForkServerError as e:
        log.warning("%s: workers are exec'd, each with its own memory", e)
        server.close()
        return None
    return server


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    setup_logging("supervisor")
    if args.command == "check":
        sys.exit(cmd_check(args.path, args.drop_in, args.host))
    if args.command == "convert":
        sys.exit(cmd_convert(args.path, args.drop_in))
    commands = {"reload": cmd_reload, "status": cmd_status, "dump": cmd_dump, "explain": cmd_explain,
                "dry-run": cmd_dry_run, "top": cmd_top}
    if args.command in commands:
        sys.exit(commands[args.command](args))
    sys.exit(cmd_run(args))
