"""The actuator's systemd side: find the unit that owns a cgroup, and kill, stop or restart it through the manager.

The actuator is a synchronous poll loop and D-Bus clients are asynchronous, so the bus lives in a thread of its own
with its own event loop; every public method is an ordinary blocking call with a deadline. A stalled dbus-daemon
(a common sight on a host under memory pressure) therefore costs the caller at most that deadline, and a bus
that is missing or broken never raises: every method returns a `Result` whose `error` says what went wrong.

As root, the system manager's private socket (/run/systemd/private) is preferred over the bus: it is the manager
itself, peer to peer, with no dbus-daemon in between (what systemctl uses as root). A user manager's private socket
is $XDG_RUNTIME_DIR/systemd/private.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import signal as signals
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from dbus_fast import Message, MessageFlag, MessageType
from dbus_fast.aio import MessageBus

from workers.units import (
    KILLABLE_SUFFIXES,
    ErrorKind,
    JobOutcome,
    ManagerInfo,
    Result,
    UnitInfo,
    UnitState,
    candidate_addresses,
    unit_name_from_cgroup,
)

SYSTEMD = "org.freedesktop.systemd1"
MANAGER_PATH = "/org/freedesktop/systemd1"
MANAGER = "org.freedesktop.systemd1.Manager"
UNIT = "org.freedesktop.systemd1.Unit"
PROPERTIES = "org.freedesktop.DBus.Properties"
UNKNOWN_METHOD = "org.freedesktop.DBus.Error.UnknownMethod"

T = TypeVar("T")

DEFAULT_TIMEOUT = 2.0  # one method call; the manager answers in milliseconds when it answers at all
DEFAULT_JOB_TIMEOUT = 5.0  # a stop/restart job: long enough for a quick unit, short enough for an OOM daemon
NUDGE_INTERVAL = 0.003  # the first nudge (see _ManagerBus): a manager answers a Hello it has seen within ~1.5 ms

# Where ControlGroup lives: on the unit type's own interface, not on org.freedesktop.systemd1.Unit.
_CGROUP_INTERFACE = {
    "service": "org.freedesktop.systemd1.Service",
    "scope": "org.freedesktop.systemd1.Scope",
    "slice": "org.freedesktop.systemd1.Slice",
    "socket": "org.freedesktop.systemd1.Socket",
    "mount": "org.freedesktop.systemd1.Mount",
    "swap": "org.freedesktop.systemd1.Swap",
}
class _Failure(Exception):
    """Raised inside the loop thread and turned into a failed Result at the boundary."""

    def __init__(self, kind: ErrorKind, error: str, dbus_error: str = "", value: Any = None) -> None:
        super().__init__(error)
        self.kind = kind
        self.error = error
        self.dbus_error = dbus_error
        self.value = value


@dataclass
class _JobWatch:
    """JobRemoved signals seen while a job call is in flight. Registered before the call: the signal can arrive
    before the method's reply (a job that completes at once), and a watch set up after the reply would miss it."""

    # job path -> (job id, unit, result, the signal's sender)
    removed: dict[str, tuple[int, str, str, str | None]] = field(default_factory=dict)
    event: asyncio.Event = field(default_factory=asyncio.Event)


# A method call the server answers with nothing (Peer is built into sd-bus and dbus-daemon alike); the serial is far
# from the ones dbus-fast counts up from 1, and no reply can come back to confuse it.
_NUDGE = bytes(Message(destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
                       interface="org.freedesktop.DBus.Peer", member="Ping", flags=MessageFlag.NO_REPLY_EXPECTED,
                       serial=0xFFFFFFFF)._marshall(False))


class _ManagerBus(MessageBus):
    """dbus-fast's MessageBus with a workaround for an sd-bus server bug, seen on systemd 252's private socket: when
    the client's BEGIN and its first message (dbus-fast's Hello) arrive in one read, the server parses BEGIN and
    leaves the message in its buffer until something else happens on that connection, which for a client waiting
    for the answer is never. dbus-fast sends the two back to back, and 6-7 connects in 10 hung here. So once the
    handshake is done, a no-reply Peer.Ping every few milliseconds nudges the server until the Hello's answer is in.
    A bus daemon answers at once and is never nudged. dbus-fast holds queued messages until the Hello is answered,
    hence the write to the socket itself (as its own connect() writes the Hello)."""

    async def _authenticate(self) -> None:
        await super()._authenticate()
        self._nudger = self._loop.create_task(self._nudge_until_hello())

    async def _nudge_until_hello(self) -> None:
        # Backing off: a stalled bus daemon gets a dozen pings in a 2 s deadline, not hundreds to work through.
        interval = NUDGE_INTERVAL
        while True:
            await asyncio.sleep(interval)
            if self.unique_name is not None or self._sock is None:
                return
            await self._loop.sock_sendall(self._sock, _NUDGE)
            interval = min(interval * 2, 0.25)

    def stop_nudging(self) -> None:
        nudger = getattr(self, "_nudger", None)
        if nudger is not None:
            nudger.cancel()


def _cgroup_interface(unit: str) -> str:
    return _CGROUP_INTERFACE.get(unit.rsplit(".", 1)[-1], UNIT)


class SystemdBus:
    """A blocking client of one systemd manager. Thread-safe; close() when done (or use it as a context manager).

    `bus` is "system", "session" (the user manager) or a D-Bus address. The connection is made on first use and
    made again after it breaks; a failed connect is only that call's error.
    """

    def __init__(self, bus: str = "system", timeout: float = DEFAULT_TIMEOUT, job_timeout: float = DEFAULT_JOB_TIMEOUT,
                 addresses: list[str] | None = None, avoid: Iterable[str] = ()) -> None:
        self.bus = bus
        self.timeout = timeout
        self.job_timeout = job_timeout
        self.addresses = addresses if addresses is not None else candidate_addresses(bus)
        self.address = ""  # the one connected to, once connected
        self.peer_to_peer = False
        # Manager methods not to call: those given (a manager known to lack them; tests of the fallbacks) and those
        # that answered UnknownMethod (an older systemd) on this connection.
        self.avoid = frozenset(avoid)
        self._unsupported: set[str] = set(self.avoid)
        self._bus: MessageBus | None = None
        self._watches: list[_JobWatch] = []
        self._loop = asyncio.new_event_loop()
        self._connect_lock = asyncio.Lock()  # bound to self._loop on first use (Python >= 3.10)
        self._thread = threading.Thread(target=self._loop.run_forever, name="pyoomd-systemd-bus", daemon=True)
        self._thread.start()
        self._closed = False

    # ---- the blocking boundary ----

    def _run(self, make: Callable[[], Awaitable[T]], timeout: float) -> Result[T]:
        start = time.monotonic()
        if self._closed:
            return Result(False, error="SystemdBus is closed", kind="unreachable")

        async def bounded() -> T:
            return await asyncio.wait_for(make(), timeout)

        fut = asyncio.run_coroutine_threadsafe(bounded(), self._loop)
        try:
            # The loop enforces the deadline; the extra second only guards against a loop that is itself stuck.
            value = fut.result(timeout + 1.0)
        except (TimeoutError, concurrent.futures.TimeoutError):
            fut.cancel()
            return Result(False, error=f"no answer from {self._where()} within {timeout:g} s", kind="deadline",
                          elapsed=time.monotonic() - start)
        except _Failure as f:
            return Result(False, value=f.value, error=f.error, kind=f.kind, dbus_error=f.dbus_error,
                          elapsed=time.monotonic() - start)
        except Exception as e:  # a broken connection, a malformed reply: never the caller's exception
            return Result(False, error=f"{self._where()}: {type(e).__name__}: {e}", kind="unreachable",
                          elapsed=time.monotonic() - start)
        return Result(True, value=value, elapsed=time.monotonic() - start)

    def _where(self) -> str:
        return self.address or " or ".join(self.addresses) or self.bus

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True

        async def disconnect() -> None:
            if self._bus is not None:
                self._bus.disconnect()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self._bus.wait_for_disconnect(), 1.0)
                self._bus = None

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(disconnect(), self._loop).result(2.0)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(2.0)
        if not self._thread.is_alive():
            self._loop.close()

    def __enter__(self) -> SystemdBus:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- connection (loop thread) ----

    async def _connected(self) -> MessageBus:
        async with self._connect_lock:
            if self._bus is not None and self._bus.connected:
                return self._bus
            self._bus = None
            errors = []
            for address in self.addresses:
                bus: _ManagerBus | None = None
                try:
                    bus = _ManagerBus(bus_address=address)  # parses the address: a bad one is this one's error
                    await bus.connect()
                except Exception as e:
                    errors.append(f"{address}: {type(e).__name__}: {e}")
                    continue
                finally:
                    if bus is not None:
                        bus.stop_nudging()
                # dbus-fast always sends Hello. A manager's private socket has no bus daemon to answer it, so
                # the reply is an error whose text dbus-fast stores as the unique name: on a bus, unique names
                # start with ":". Peer to peer, the manager sends its signals to us unasked and there is no
                # daemon to take a match rule.
                peer = not (bus.unique_name or "").startswith(":")
                if not peer:
                    try:
                        await self._add_job_match(bus)
                    except Exception as e:
                        bus.disconnect()
                        errors.append(f"{address}: AddMatch: {e}")
                        continue
                bus.add_message_handler(self._on_message)
                self._bus, self.address, self.peer_to_peer = bus, address, peer
                self._unsupported = set(self.avoid)  # a reconnect may reach a different (upgraded) manager
                return bus
            raise _Failure("unreachable", "cannot connect to systemd: " + "; ".join(errors))

    @staticmethod
    async def _add_job_match(bus: MessageBus) -> None:
        # Only a match rule makes the daemon route the manager's broadcast JobRemoved to us. The manager sends it
        # onto the bus without Subscribe() because the job's requester is tracked by the job itself; Subscribe()
        # would instead have it broadcast every unit's PropertiesChanged for as long as we are connected.
        rule = (f"type='signal',sender='{SYSTEMD}',path='{MANAGER_PATH}',interface='{MANAGER}',"
                "member='JobRemoved'")
        reply = await bus.call(Message(destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
                                       interface="org.freedesktop.DBus", member="AddMatch", signature="s",
                                       body=[rule]))
        if reply.message_type == MessageType.ERROR:
            raise RuntimeError(f"{reply.error_name}: {reply.body[0] if reply.body else ''}")

    def _on_message(self, msg: Message) -> bool:
        if (msg.message_type == MessageType.SIGNAL and msg.member == "JobRemoved" and msg.interface == MANAGER
                and msg.path == MANAGER_PATH and msg.signature == "uoss"):
            job_id, job, unit, result = msg.body
            for watch in self._watches:
                watch.removed[job] = (job_id, unit, result, msg.sender)
                watch.event.set()
        return False  # not handled: dbus-fast goes on with its own processing

    async def _call(self, member: str, signature: str = "", body: list[Any] | None = None,
                    path: str = MANAGER_PATH, interface: str = MANAGER) -> Message:
        bus = await self._connected()
        reply = await bus.call(Message(destination=SYSTEMD, path=path, interface=interface, member=member,
                                       signature=signature, body=body or []))
        if reply.message_type == MessageType.ERROR:
            text = reply.body[0] if reply.body else ""
            if reply.error_name == UNKNOWN_METHOD:
                self._unsupported.add(member)
            raise _Failure("dbus", f"{member}: {reply.error_name}: {text}", dbus_error=reply.error_name or "")
        return reply

    async def _get(self, path: str, interface: str, prop: str) -> Any:
        reply = await self._call("Get", "ss", [interface, prop], path=path, interface=PROPERTIES)
        return reply.body[0].value

    async def _unit_props(self, name: str, path: str) -> tuple[str, str]:
        control_group = await self._get(path, _cgroup_interface(name), "ControlGroup")
        invocation = await self._get(path, UNIT, "InvocationID")
        return control_group, bytes(invocation).hex()

    async def _unit_path(self, name: str) -> str:
        return (await self._call("GetUnit", "s", [name])).body[0]

    # ---- the interface ----

    def probe(self, timeout: float | None = None) -> Result[ManagerInfo]:
        """Whether a manager answers, and its version (Manager.Version)."""

        async def go() -> ManagerInfo:
            version = await self._get(MANAGER_PATH, MANAGER, "Version")
            return ManagerInfo(version=version, address=self.address, peer_to_peer=self.peer_to_peer)

        return self._run(go, timeout or self.timeout)

    def unit_for_cgroup(self, path: str, pids: Iterable[int] = (), timeout: float | None = None
                        ) -> Result[UnitInfo]:
        """The .service/.scope unit whose own cgroup is exactly `path` (relative to the hierarchy root, as the
        manager's ControlGroup property has it). ok with value None: the path is not a unit's cgroup (a slice,
        a sub-cgroup inside a unit, a tree systemd does not manage). `pids` are members of the cgroup, for
        managers without GetUnitByControlGroup."""
        path = "/" + path.strip("/")
        name = unit_name_from_cgroup(path)
        if name is None:
            return Result(True, value=None)
        pids = list(pids)

        async def lookup(member: str, signature: str, arg: str | int) -> str | None:
            # The manager's "no such unit / not managed here" is an answer (None); an unreachable manager or a
            # passed deadline is not, and goes up as the call's error.
            try:
                return (await self._call(member, signature, [arg])).body[0]
            except _Failure as f:
                if f.kind != "dbus":
                    raise
                return None

        async def find() -> str | None:
            # GetUnitByControlGroup (systemd 252 has it) and GetUnitByPID both return the unit whose cgroup
            # *contains* the path or the process, walking up: every answer is checked against ControlGroup.
            if "GetUnitByControlGroup" not in self._unsupported:
                found = await lookup("GetUnitByControlGroup", "s", path)
                if found is not None or "GetUnitByControlGroup" not in self._unsupported:
                    return found
            for pid in pids[:3]:  # a member may exit meanwhile; a few tries are enough
                found = await lookup("GetUnitByPID", "u", pid)
                if found is not None:
                    return found
            # By name, from the path itself: one call, where ListUnits and a ControlGroup read per unit would
            # cost thousands of calls on a large host.
            return await lookup("GetUnit", "s", name)

        async def go() -> UnitInfo | None:
            unit_path = await find()
            if unit_path is None:
                return None
            unit = await self._get(unit_path, UNIT, "Id")
            if not unit.endswith(KILLABLE_SUFFIXES):
                return None
            control_group, invocation = await self._unit_props(unit, unit_path)
            if control_group != path:
                return None  # a process or cgroup inside a bigger unit, not the unit itself
            return UnitInfo(name=unit, object_path=unit_path, control_group=control_group, invocation_id=invocation)

        return self._run(go, timeout or self.timeout)

    async def _state(self, name: str) -> UnitState:
        path = await self._unit_path(name)
        active = await self._get(path, UNIT, "ActiveState")
        sub = await self._get(path, UNIT, "SubState")
        control_group, invocation = await self._unit_props(name, path)
        return UnitState(name=name, object_path=path, active_state=active, sub_state=sub,
                         control_group=control_group, invocation_id=invocation)

    def unit_state(self, name: str, timeout: float | None = None) -> Result[UnitState]:
        """ActiveState, SubState, ControlGroup and InvocationID of a loaded unit (dbus error NoSuchUnit if none)."""
        return self._run(lambda: self._state(name), timeout or self.timeout)

    def kill_unit(self, name: str, whom: str = "all", signal: int = signals.SIGKILL,
                  timeout: float | None = None) -> Result[None]:
        """Manager.KillUnit: the manager signals the unit's processes ("main", "control" or "all") at once."""

        async def go() -> None:
            await self._call("KillUnit", "ssi", [name, whom, int(signal)])

        return self._run(go, timeout or self.timeout)

    def kill_unit_checked(self, name: str, cgroup: str, invocation_id: str, whom: str = "all",
                          signal: int = signals.SIGKILL, timeout: float | None = None) -> Result[UnitState]:
        """KillUnit, only if the unit still has this ControlGroup and InvocationID: a unit restarted since it was
        picked is a new invocation, not the one that was judged. The check and the kill are two calls (systemd
        has no conditional kill), so a restart in between is not excluded, only made unlikely."""

        async def go() -> UnitState:
            state = await self._state(name)
            if state.control_group != "/" + cgroup.strip("/"):
                raise _Failure("refused", f"{name}: cgroup is now {state.control_group or 'none'}, not {cgroup}",
                               value=state)
            if state.invocation_id != invocation_id:
                raise _Failure("refused", f"{name}: invocation is now {state.invocation_id or 'none'}, "
                               f"not {invocation_id}", value=state)
            await self._call("KillUnit", "ssi", [name, whom, int(signal)])
            return state

        return self._run(go, timeout or self.timeout)

    def stop_unit(self, name: str, mode: str = "replace", timeout: float | None = None) -> Result[JobOutcome]:
        """Manager.StopUnit, waiting for its job's JobRemoved: ok when the job's result is "done"."""
        return self._job("StopUnit", name, mode, timeout or self.job_timeout)

    def restart_unit(self, name: str, mode: str = "replace", timeout: float | None = None) -> Result[JobOutcome]:
        """Manager.RestartUnit (oomd's systemd_restart), waiting for its job like stop_unit."""
        return self._job("RestartUnit", name, mode, timeout or self.job_timeout)

    def _job(self, member: str, name: str, mode: str, timeout: float) -> Result[JobOutcome]:
        async def go() -> JobOutcome:
            watch = _JobWatch()
            self._watches.append(watch)  # before the call: see _JobWatch
            job = ""
            try:
                reply = await self._call(member, "ss", [name, mode])
                job = reply.body[0]
                while job not in watch.removed:
                    watch.event.clear()
                    await watch.event.wait()
                job_id, unit, result, sender = watch.removed[job]
                # On a bus, only the manager's own JobRemoved counts (the reply's sender is its unique name).
                if not self.peer_to_peer and sender != reply.sender:
                    raise _Failure("dbus", f"JobRemoved for {job} from {sender}, not the manager {reply.sender}")
            except asyncio.CancelledError:
                # The deadline passed with the job still queued or running: say which job, for a later look.
                raise _Failure("deadline", f"{member} {name}: job {job or '(no reply)'} not finished within "
                               f"{timeout:g} s", value=JobOutcome(job=job, job_id=0, unit=name, result="")) from None
            finally:
                self._watches.remove(watch)
            outcome = JobOutcome(job=job, job_id=job_id, unit=unit, result=result)
            if result != "done":
                raise _Failure("job", f"{member} {name}: job {job_id} {result}", value=outcome)
            return outcome

        return self._run(go, timeout)
