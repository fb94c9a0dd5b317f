"""What the actuator knows of systemd units and managers without talking to one.

The data a D-Bus answer comes back as, and the rules that need no bus: which unit a cgroup would be, and where a
manager listens. workers/systemd.py talks to the manager, with dbus-fast and asyncio, which this module spares a
process that has no manager to talk to: the actuator imports that one only when a bus is configured.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, Literal, TypeVar

KILLABLE_SUFFIXES = (".service", ".scope")  # the unit types that own a cgroup of their own and hold processes

T = TypeVar("T")

# "unreachable": no connection; "deadline": no answer in time (ours, not systemd's job result "timeout");
# "dbus": the manager answered with an error; "job": a job ended other than "done"; "refused": a check failed.
ErrorKind = Literal["", "unreachable", "deadline", "dbus", "job", "refused"]


@dataclass(frozen=True)
class Result(Generic[T]):
    ok: bool
    value: T | None = None
    error: str = ""  # for the log: what failed and why
    kind: ErrorKind = ""
    dbus_error: str = ""  # the D-Bus error name, when the manager sent one
    elapsed: float = 0.0  # seconds, including any connect


@dataclass(frozen=True)
class ManagerInfo:
    version: str
    address: str  # the address that answered
    peer_to_peer: bool  # a manager's private socket: no bus daemon in between


@dataclass(frozen=True)
class UnitInfo:
    name: str
    object_path: str
    control_group: str
    invocation_id: str  # hex; "" when the unit is not running (no invocation)


@dataclass(frozen=True)
class UnitState:
    name: str
    object_path: str
    active_state: str
    sub_state: str
    control_group: str
    invocation_id: str


@dataclass(frozen=True)
class JobOutcome:
    job: str  # the job's object path
    job_id: int  # 0 until JobRemoved was seen
    unit: str
    result: str  # systemd's: "done", "canceled", "timeout", "failed", "dependency", "skipped"; "" when not seen


def candidate_addresses(bus: str, euid: int | None = None, environ: dict[str, str] | None = None) -> list[str]:
    """The D-Bus addresses to try, in order, for "system", "session" (alias "user") or an explicit address."""
    env = os.environ if environ is None else environ
    euid = os.geteuid() if euid is None else euid
    out: list[str] = []
    if bus == "system":
        # The system manager's private socket is root's (systemctl uses it as root only): others take the bus.
        if euid == 0 and Path("/run/systemd/private").exists():
            out.append("unix:path=/run/systemd/private")
        out.append(env.get("DBUS_SYSTEM_BUS_ADDRESS") or "unix:path=/run/dbus/system_bus_socket")
    elif bus in ("session", "user"):
        runtime = env.get("XDG_RUNTIME_DIR")
        if runtime and (Path(runtime) / "systemd" / "private").exists():
            out.append(f"unix:path={runtime}/systemd/private")
        if env.get("DBUS_SESSION_BUS_ADDRESS"):
            out.append(env["DBUS_SESSION_BUS_ADDRESS"])
        elif runtime:
            out.append(f"unix:path={runtime}/bus")
    else:
        out.append(bus)
    return out


def unit_name_from_cgroup(path: str) -> str | None:
    """The .service/.scope unit whose own cgroup `path` would be, from its last component; None when the last
    component is not one (a slice, a sub-cgroup a unit made inside its own, a non-systemd tree)."""
    last = path.rstrip("/").rsplit("/", 1)[-1]
    if not last.endswith(KILLABLE_SUFFIXES):
        return None
    # systemd prefixes "_" to unit names that would clash with cgroupfs files or start with "_" (cgroup_escape).
    return last[1:] if last.startswith("_") else last
