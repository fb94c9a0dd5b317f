"""A blocking client of a running pyoomd's D-Bus interface, for the `pyoomd` commands (status, dump, explain,
reload, dry-run). One connection per command; every failure becomes a ClientError that says what to do."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from dbus_fast import Message, MessageType, Variant
from dbus_fast.aio import MessageBus

from ipc import dbusapi as api

T = TypeVar("T")
PROPERTIES = "org.freedesktop.DBus.Properties"
NO_OWNER = ("org.freedesktop.DBus.Error.ServiceUnknown", "org.freedesktop.DBus.Error.NameHasNoOwner")


class ClientError(Exception):
    """The command could not get its answer; the message is for the operator."""


class DaemonClient:
    def __init__(self, bus: str = "system", timeout: float = 15.0) -> None:
        self.bus = bus
        self.address = api.bus_address(bus)
        self.timeout = timeout

    def _run(self, work: Callable[[MessageBus], Awaitable[T]]) -> T:
        if self.address is None:
            raise ClientError(f"no address for the {self.bus} bus (is DBUS_SESSION_BUS_ADDRESS or XDG_RUNTIME_DIR "
                              "set?)")

        async def go() -> T:
            try:
                bus = await asyncio.wait_for(MessageBus(bus_address=self.address).connect(), self.timeout)
            except Exception as e:
                raise ClientError(f"cannot reach the {self.bus} bus at {self.address}: {e}") from None
            try:
                return await asyncio.wait_for(work(bus), self.timeout)
            except TimeoutError:
                raise ClientError(f"pyoomd did not answer within {self.timeout:g} s") from None
            finally:
                bus.disconnect()

        return asyncio.run(go())

    async def _call(self, bus: MessageBus, member: str, signature: str = "", body: list[Any] | None = None,
                    interface: str = api.INTERFACE) -> list[Any]:
        reply = await bus.call(Message(destination=api.BUS_NAME, path=api.OBJECT_PATH, interface=interface,
                                       member=member, signature=signature, body=body or []))
        if reply.message_type == MessageType.ERROR:
            text = reply.body[0] if reply.body else ""
            if reply.error_name in NO_OWNER:
                raise ClientError(f"no pyoomd daemon on the {self.bus} bus ({api.BUS_NAME} has no owner): is it "
                                  f"running, and serving this bus (pyoomd run --bus)?")
            if reply.error_name == "org.freedesktop.DBus.Error.AccessDenied":
                raise ClientError(f"the bus refused {member}: only root (or pyoomd's admin group) may call it")
            name = (reply.error_name or "").removeprefix(api.ERROR_PREFIX)
            raise ClientError(f"{member}: {name}: {text}")
        return list(reply.body)

    def properties(self) -> dict[str, Any]:
        async def work(bus: MessageBus) -> dict[str, Any]:
            (values,) = await self._call(bus, "GetAll", "s", [api.INTERFACE], interface=PROPERTIES)
            return {name: v.value for name, v in values.items()}

        return self._run(work)

    def call(self, member: str, *args: Any) -> Any:
        """A method of io.github.pyoomd1.Manager; its single return value (None for none)."""
        spec = api.method(member)
        if spec is None:
            raise ClientError(f"no method {member}")

        async def work(bus: MessageBus) -> Any:
            out = await self._call(bus, member, spec.in_signature, list(args))
            return out[0] if out else None

        return self._run(work)

    def status(self, actions: int) -> tuple[dict[str, Any], str]:
        """The properties and the newest action records, over one connection."""

        async def work(bus: MessageBus) -> tuple[dict[str, Any], str]:
            (values,) = await self._call(bus, "GetAll", "s", [api.INTERFACE], interface=PROPERTIES)
            (records,) = await self._call(bus, "ListActions", "u", [actions])
            return {name: v.value for name, v in values.items()}, records

        return self._run(work)

    def set_property(self, name: str, value: Any) -> None:
        spec = api.prop(name)
        assert spec is not None and spec.writable

        async def work(bus: MessageBus) -> None:
            await self._call(bus, "Set", "ssv", [api.INTERFACE, name, Variant(spec.signature, value)],
                             interface=PROPERTIES)

        self._run(work)
