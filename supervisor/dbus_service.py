"""The io.github.pyoomd1 service: pyoomd's own D-Bus interface, served from a thread of the supervisor.

dbus-fast is asynchronous and the supervisor's loop is a zmq poll, so the bus lives in a thread with its own event
loop, as the actuator's systemd client does. The thread never touches the supervisor's state: it serves properties
from the last DaemonState the loop published, and hands every request that changes or asks something (Reload,
SetDryRun, PauseRuleset, GetSnapshot, Explain) to the loop through a RequestQueue, awaiting the answer with a
deadline. Method calls are dispatched by hand rather than through dbus-fast's ServiceInterface, because each call
must first be judged by its caller's credentials (supervisor/access.py), which the bus daemon gives only in
answer to a call of our own.

A bus that is missing, refuses the name or breaks never stops the daemon: the thread says so once and tries
again, soon at first (at boot the bus comes up after pyoomd), then every RETRY seconds; the rest of pyoomd does not
notice.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import threading
from collections.abc import Awaitable
from typing import Any

import msgspec
from dbus_fast import Message, MessageType, NameFlag, RequestNameReply, Variant
from dbus_fast.aio import MessageBus

from ipc import dbusapi as api
from ipc.messages import ActionRecord
from supervisor.access import AccessPolicy, Caller
from supervisor.actionlog import ActionLog
from supervisor.daemonstate import DaemonState
from supervisor.requests import Request, RequestQueue

log = logging.getLogger("pyoomd.supervisor")

RETRY_FIRST = 1.0  # seconds before trying again to reach a bus that was not there (at boot it comes soon) ...
RETRY = 30.0  # ... doubling up to this
REQUEST_TIMEOUT = 10.0  # the loop or a worker must answer a request within this
LIST_ACTIONS_MAX = 1000
PROPERTIES = "org.freedesktop.DBus.Properties"
INTROSPECTABLE = "org.freedesktop.DBus.Introspectable"
PARENTS = {"/": "io", "/io": "github", "/io/github": "pyoomd1"}  # so that `busctl tree` finds the object


class BusService:
    def __init__(self, bus: str, requests: RequestQueue, action_log: ActionLog, access: AccessPolicy,
                 state: DaemonState) -> None:
        self.bus_spec = bus
        self.address = api.bus_address(bus)
        self.requests = requests
        self.action_log = action_log
        self.access = access
        self.state = state
        self._published: dict[str, Any] = state.properties()
        self._bus: MessageBus | None = None
        self._callers: collections.OrderedDict[str, Caller] = collections.OrderedDict()
        self._tasks: set[asyncio.Task] = set()
        self._closed = False
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="pyoomd-dbus", daemon=True)

    # ---- from the supervisor's loop ----------------------------------------------------------------------------

    def start(self) -> None:
        if self.address is None:
            log.warning("no address for the %s bus: pyoomd's D-Bus interface is off (--bus)", self.bus_spec)
            return
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._serve(), self._loop)

    def publish(self, state: DaemonState) -> None:
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._on_state, state)

    def action_taken(self, r: ActionRecord) -> None:
        self._emit("ActionTaken", [r.ruleset, r.target or "", r.unit, r.plugin, list(r.pids), r.dry_run, r.result])

    def ruleset_fired(self, ruleset: str, group: str) -> None:
        self._emit("RulesetFired", [ruleset, group])

    def policy_reloaded(self, ok: bool) -> None:
        self._emit("PolicyReloaded", [ok])

    def close(self) -> None:
        if self._closed or not self._thread.is_alive():
            self._closed = True
            return
        self._closed = True

        async def disconnect() -> None:
            if self._bus is not None:
                self._bus.disconnect()
            # Every task of ours ends here, not with the loop: a task still pending at exit is logged as an error.
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(disconnect(), self._loop).result(2.0)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(2.0)

    def _emit(self, member: str, body: list[Any]) -> None:
        if not self._thread.is_alive():
            return
        signature = next(s.signature for s in api.SIGNALS if s.name == member)
        msg = Message.new_signal(api.OBJECT_PATH, api.INTERFACE, member, signature, body)
        self._loop.call_soon_threadsafe(self._send, msg)

    # ---- the bus thread ----------------------------------------------------------------------------------------

    def _send(self, msg: Message) -> None:
        bus = self._bus
        if bus is not None and bus.connected:
            bus.send(msg)

    def _on_state(self, state: DaemonState) -> None:
        self.state = state
        values = state.properties()
        changed = {p.name: Variant(p.signature, values[p.name]) for p in api.PROPERTIES
                   if p.emits_changed and values[p.name] != self._published.get(p.name)}
        self._published = values
        if changed:
            self._send(Message.new_signal(api.OBJECT_PATH, PROPERTIES, "PropertiesChanged", "sa{sv}as",
                                          [api.INTERFACE, changed, []]))

    async def _serve(self) -> None:
        said = ""
        delay = RETRY_FIRST
        while not self._closed:
            try:
                bus = await MessageBus(bus_address=self.address).connect()
            except Exception as e:
                problem = f"cannot connect to the {self.bus_spec} bus at {self.address}: {e}"
            else:
                reply = await bus.request_name(api.BUS_NAME, NameFlag.DO_NOT_QUEUE)
                if reply in (RequestNameReply.PRIMARY_OWNER, RequestNameReply.ALREADY_OWNER):
                    bus.add_message_handler(self._on_message)
                    self._bus = bus
                    log.info("D-Bus: serving %s at %s on %s", api.BUS_NAME, api.OBJECT_PATH, self.address)
                    said, delay = "", RETRY_FIRST
                    await bus.wait_for_disconnect()
                    self._bus = None
                    self._callers.clear()
                    problem = f"lost the connection to the {self.bus_spec} bus at {self.address}"
                else:
                    bus.disconnect()
                    problem = f"{api.BUS_NAME} is taken on the {self.bus_spec} bus (another pyoomd?)"
            if self._closed:
                return
            if problem != said:  # once per distinct problem, not at every retry
                log.warning("D-Bus: %s; pyoomd goes on without its D-Bus interface and keeps trying", problem)
                said = problem
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY)

    def _on_message(self, msg: Message) -> bool:
        if msg.message_type != MessageType.METHOD_CALL:
            return False
        if msg.path in PARENTS and msg.interface in (INTROSPECTABLE, None) and msg.member == "Introspect":
            self._reply(msg, "s", [_parent_xml(msg.path)])
            return True
        if msg.path != api.OBJECT_PATH or msg.interface == "org.freedesktop.DBus.Peer":
            return False  # dbus-fast answers Peer itself; other objects do not exist
        task = self._loop.create_task(self._handle(msg))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    def _reply(self, msg: Message, signature: str = "", body: list[Any] | None = None) -> None:
        self._send(Message.new_method_return(msg, signature, body or []))

    def _error(self, msg: Message, name: str, text: str) -> None:
        self._send(Message.new_error(msg, name, text))

    async def _handle(self, msg: Message) -> None:
        try:
            caller = await self._caller(msg.sender or "")
            if not self.access.admit(caller):
                raise api.ServiceError(api.RATE_LIMITED, f"too many calls from {caller.describe()}; try again "
                                       "in a second")
            await self._dispatch(msg, caller)
        except api.ServiceError as e:
            self._error(msg, e.dbus_name, e.message)
        except _DBusStandardError as e:
            self._error(msg, e.name, e.text)
        except Exception as e:  # never a traceback to a caller: it goes to our log
            log.exception("D-Bus: %s.%s failed", msg.interface, msg.member)
            self._error(msg, api.ERROR_PREFIX + api.FAILED, f"{msg.member} failed: {type(e).__name__}")

    async def _caller(self, sender: str) -> Caller:
        known = self._callers.get(sender)
        if known is not None:
            return known
        bus = self._bus
        if bus is None:
            raise api.ServiceError(api.UNAVAILABLE, "not connected")
        reply = await bus.call(Message(destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
                                       interface="org.freedesktop.DBus", member="GetConnectionCredentials",
                                       signature="s", body=[sender]))
        if reply.message_type == MessageType.ERROR:
            raise api.ServiceError(api.FAILED, f"the bus does not say who {sender} is: {reply.error_name}")
        creds = {k: v.value for k, v in reply.body[0].items()}
        if "UnixUserID" not in creds:
            raise api.ServiceError(api.ACCESS_DENIED, f"the bus does not say which user {sender} is")
        gids = creds.get("UnixGroupIDs")
        caller = Caller(uid=int(creds["UnixUserID"]), gids=frozenset(gids) if gids is not None else None,
                        pid=creds.get("ProcessID"))
        self._callers[sender] = caller  # unique names are never reused on a bus: the cache cannot go stale
        while len(self._callers) > 4096:
            self._callers.popitem(last=False)
        return caller

    async def _dispatch(self, msg: Message, caller: Caller) -> None:
        if msg.interface == INTROSPECTABLE:
            if msg.member != "Introspect":
                raise _DBusStandardError.unknown_method(msg)
            self._reply(msg, "s", [api.introspection_xml()])
            return
        if msg.interface == PROPERTIES:
            await self._properties(msg, caller)
            return
        if msg.interface not in (api.INTERFACE, None):
            raise _DBusStandardError("org.freedesktop.DBus.Error.UnknownInterface", f"no interface {msg.interface}")
        spec = api.method(msg.member or "")
        if spec is None:
            raise _DBusStandardError.unknown_method(msg)
        if msg.signature != spec.in_signature:
            raise api.ServiceError(api.INVALID_ARGS, f"{spec.name} takes ({spec.in_signature}), not "
                                   f"({msg.signature})")
        if spec.privileged and not self.access.privileged(caller):
            raise api.ServiceError(api.ACCESS_DENIED, f"{spec.name} needs root or the admin group; "
                                   f"{caller.describe()} may only read")
        if spec.name == "Reload":
            ok, errors = await self._ask(Request("reload", caller))
            self._reply(msg, "(bas)", [[ok, errors]])
        elif spec.name == "SetDryRun":
            await self._ask(Request("set-dry-run", caller, (bool(msg.body[0]),)))
            self._reply(msg)
        elif spec.name == "PauseRuleset":
            name, seconds = msg.body
            await self._ask(Request("pause", caller, (str(name), int(seconds))))
            self._reply(msg)
        elif spec.name in ("GetSnapshot", "Explain"):
            answer = await self._ask(Request("snapshot" if spec.name == "GetSnapshot" else "explain", caller))
            self._reply(msg, "s", [answer])
        elif spec.name == "ListActions":
            limit = min(int(msg.body[0]), LIST_ACTIONS_MAX)
            records = await self._loop.run_in_executor(None, self.action_log.newest, limit)
            self._reply(msg, "s", [msgspec.json.encode(records).decode()])

    async def _properties(self, msg: Message, caller: Caller) -> None:
        member, body = msg.member, msg.body
        expected = {"Get": "ss", "GetAll": "s", "Set": "ssv"}.get(member or "")
        if expected is None:
            raise _DBusStandardError.unknown_method(msg)
        if msg.signature != expected:
            raise api.ServiceError(api.INVALID_ARGS, f"Properties.{member} takes ({expected})")
        if body[0] != api.INTERFACE:
            raise _DBusStandardError("org.freedesktop.DBus.Error.UnknownInterface", f"no interface {body[0]}")
        values = self.state.properties()
        if member == "GetAll":
            self._reply(msg, "a{sv}", [{p.name: Variant(p.signature, values[p.name]) for p in api.PROPERTIES}])
            return
        spec = api.prop(body[1])
        if spec is None:
            raise _DBusStandardError("org.freedesktop.DBus.Error.UnknownProperty", f"no property {body[1]}")
        if member == "Get":
            self._reply(msg, "v", [Variant(spec.signature, values[spec.name])])
            return
        if not spec.writable:
            raise _DBusStandardError("org.freedesktop.DBus.Error.PropertyReadOnly", f"{spec.name} is read-only")
        if not self.access.privileged(caller):
            raise api.ServiceError(api.ACCESS_DENIED, f"setting {spec.name} needs root or the admin group; "
                                   f"{caller.describe()} may only read")
        value: Variant = body[2]
        if value.signature != spec.signature:
            raise api.ServiceError(api.INVALID_ARGS, f"{spec.name} is of type {spec.signature}, not "
                                   f"{value.signature}")
        await self._ask(Request("set-dry-run", caller, (bool(value.value),)))
        self._reply(msg)

    async def _ask(self, request: Request) -> Any:
        """Hand a request to the supervisor's loop and await its answer; its ServiceError goes to the caller."""
        future = self.requests.put(request)
        waited: Awaitable[Any] = asyncio.wrap_future(future)
        try:
            return await asyncio.wait_for(waited, REQUEST_TIMEOUT)
        except TimeoutError:
            raise api.ServiceError(api.TIMEOUT, f"no answer within {REQUEST_TIMEOUT:g} s") from None


class _DBusStandardError(Exception):
    """One of the bus's own error names (unknown method, unknown property ...)."""

    def __init__(self, name: str, text: str) -> None:
        super().__init__(text)
        self.name = name
        self.text = text

    @classmethod
    def unknown_method(cls, msg: Message) -> _DBusStandardError:
        return cls("org.freedesktop.DBus.Error.UnknownMethod",
                   f"no method {msg.member}({msg.signature}) in {msg.interface or api.INTERFACE}")


def _parent_xml(path: str) -> str:
    return ('<!DOCTYPE node PUBLIC "-//freedesktop//DTD D-BUS Object Introspection 1.0//EN"\n'
            ' "http://www.freedesktop.org/standards/dbus/1.0/introspect.dtd">\n'
            f'<node name="{path}"><node name="{PARENTS[path]}"/></node>')
