"""pyoomd's own D-Bus interface, in one place: names, every property, method and signal with its signature and
documentation, the error names, where each bus is, and the introspection XML built from that table.

The service (supervisor/dbus_service.py) and the client (supervisor/client.py) both read this table, so the two
cannot drift apart, and `busctl introspect` shows exactly what is written here. Times are microseconds since the
epoch (`t`); answers that will grow are JSON strings (`s`). A change that breaks callers gets a new interface
number (io.github.pyoomd2), never an edit here.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass

BUS_NAME = "io.github.pyoomd1"
OBJECT_PATH = "/io/github/pyoomd1"
INTERFACE = "io.github.pyoomd1.Manager"
ERROR_PREFIX = "io.github.pyoomd1.Error."
DOC = "org.gtk.GDBus.DocString"  # the annotation gdbus-codegen and d-feet show as documentation
EMITS_CHANGED = "org.freedesktop.DBus.Property.EmitsChangedSignal"


@dataclass(frozen=True)
class Prop:
    name: str
    signature: str
    doc: str
    writable: bool = False
    emits_changed: bool = True


@dataclass(frozen=True)
class Method:
    name: str
    in_args: tuple[tuple[str, str], ...]
    out_args: tuple[tuple[str, str], ...]
    doc: str
    privileged: bool = False  # root (or the configured admin group) only; everyone else may call the rest

    @property
    def in_signature(self) -> str:
        return "".join(sig for _, sig in self.in_args)

    @property
    def out_signature(self) -> str:
        return "".join(sig for _, sig in self.out_args)


@dataclass(frozen=True)
class Signal:
    name: str
    args: tuple[tuple[str, str], ...]
    doc: str

    @property
    def signature(self) -> str:
        return "".join(sig for _, sig in self.args)


PROPERTIES: tuple[Prop, ...] = (
    Prop("Version", "s", "pyoomd's version."),
    Prop("Layout", "s", "The host's cgroup layout: v1, hybrid or v2."),
    Prop("Hierarchies", "a{ss}", "Each controller's mount point (cgroup2 as 'unified')."),
    Prop("PolicyPath", "s", "The policy file in force."),
    Prop("PolicyGeneration", "t", "Counts the policies handed to the workers: each reload, drop-in change or "
         "runtime setting makes a new generation."),
    Prop("PolicyLoadedAt", "t", "When the policy in force was loaded (microseconds since the epoch)."),
    Prop("LastReloadResult", "(bas)", "The last load of the policy file: ok, and its errors as FILE:LINE:COL: "
         "message."),
    Prop("DryRun", "b", "Whether pyoomd only records what it would do. Writable by privileged callers; a value "
         "set at run time survives reloads until it is set back to what the policy and command line say.",
         writable=True),
    Prop("DryRunSource", "s", "What set DryRun: default, policy, command line, or runtime (uid N)."),
    Prop("Rulesets", "a(sbtt)", "Each running ruleset: name, enabled, paused until, last fired (microseconds "
         "since the epoch, 0 for never)."),
    Prop("Workers", "a(susut)", "Each worker: name, PID, state (STARTING, RUNNING, BACKOFF, STOPPING, STOPPED, "
         "FATAL), restarts, last heartbeat. No PropertiesChanged: heartbeats would flood the bus.",
         emits_changed=False),
    Prop("ActionsTaken", "t", "Action records since the daemon started (each also an ActionTaken signal)."),
)

METHODS: tuple[Method, ...] = (
    Method("Reload", (), (("result", "(bas)"),), "Re-read the policy file, as SIGHUP does: ok, and its errors as "
           "FILE:LINE:COL: message. A policy with errors changes nothing.", privileged=True),
    Method("GetSnapshot", (), (("snapshot", "s"),), "What the collector last saw, as JSON: the host and each "
           "watched cgroup with its memory and pressure figures (a figure this host cannot give is left out)."),
    Method("Explain", (), (("explanation", "s"),), "For each ruleset, as JSON: which detectors held on the last "
           "snapshot, and which cgroups each action would pick now, ranked, with the figures that decided it."),
    Method("ListActions", (("limit", "u"),), (("actions", "s"),), "The newest action records (at most limit, "
           "oldest first), as a JSON array, from the state directory."),
    Method("SetDryRun", (("enabled", "b"),), (), "Turn dry-run on or off at run time (see the DryRun property).",
           privileged=True),
    Method("PauseRuleset", (("name", "s"), ("seconds", "u")), (), "Hold a ruleset's actions for this many "
           "seconds (its detectors keep running); 0 ends a pause. Survives reloads until it ends.",
           privileged=True),
)

SIGNALS: tuple[Signal, ...] = (
    Signal("ActionTaken", (("ruleset", "s"), ("cgroup", "s"), ("unit", "s"), ("action", "s"), ("pids", "au"),
                           ("dry_run", "b"), ("result", "s")),
           "An action record: what a ruleset's action did (result: killed, dry-run, no-target, failed, ...)."),
    Signal("RulesetFired", (("ruleset", "s"), ("group", "s")), "A ruleset began to fire: this detector group held."),
    Signal("PolicyReloaded", (("ok", "b"),), "The policy file was read again; false: it was refused."),
)

# Error names, after the prefix: each method fails with one of these and a message that says what to do.
ACCESS_DENIED = "AccessDenied"
RATE_LIMITED = "RateLimited"
NO_SUCH_RULESET = "NoSuchRuleset"
INVALID_ARGS = "InvalidArgs"
UNAVAILABLE = "Unavailable"  # a worker that must answer is not running
TIMEOUT = "Timeout"
FAILED = "Failed"


class ServiceError(Exception):
    """A method's failure, sent to the caller as io.github.pyoomd1.Error.<name> with this message."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.name = name
        self.message = message

    @property
    def dbus_name(self) -> str:
        return ERROR_PREFIX + self.name


def method(name: str) -> Method | None:
    return next((m for m in METHODS if m.name == name), None)


def prop(name: str) -> Prop | None:
    return next((p for p in PROPERTIES if p.name == name), None)


def bus_address(bus: str, environ: dict[str, str] | None = None) -> str | None:
    """The address of "system", "session" (alias "user"), an explicit address, or None for "none"."""
    env = os.environ if environ is None else environ
    if bus == "none":
        return None
    if bus == "system":
        return env.get("DBUS_SYSTEM_BUS_ADDRESS") or "unix:path=/run/dbus/system_bus_socket"
    if bus in ("session", "user"):
        if env.get("DBUS_SESSION_BUS_ADDRESS"):
            return env["DBUS_SESSION_BUS_ADDRESS"]
        runtime = env.get("XDG_RUNTIME_DIR")
        return f"unix:path={runtime}/bus" if runtime else None
    return bus


def _doc(element: ET.Element, text: str) -> None:
    ET.SubElement(element, "annotation", name=DOC, value=text)


def introspection_xml(child_nodes: tuple[str, ...] = ()) -> str:
    """The object's introspection: our interface (with documentation) and the standard ones the bus expects."""
    node = ET.Element("node", name=OBJECT_PATH)
    iface = ET.SubElement(node, "interface", name=INTERFACE)
    _doc(iface, "pyoomd, a userspace out-of-memory daemon for cgroup v1, hybrid and v2 hosts.")
    for m in METHODS:
        el = ET.SubElement(iface, "method", name=m.name)
        for arg, sig in m.in_args:
            ET.SubElement(el, "arg", name=arg, type=sig, direction="in")
        for arg, sig in m.out_args:
            ET.SubElement(el, "arg", name=arg, type=sig, direction="out")
        _doc(el, m.doc + (" Privileged: root or the admin group." if m.privileged else ""))
    for s in SIGNALS:
        el = ET.SubElement(iface, "signal", name=s.name)
        for arg, sig in s.args:
            ET.SubElement(el, "arg", name=arg, type=sig)
        _doc(el, s.doc)
    for p in PROPERTIES:
        el = ET.SubElement(iface, "property", name=p.name, type=p.signature,
                           access="readwrite" if p.writable else "read")
        if not p.emits_changed:
            ET.SubElement(el, "annotation", name=EMITS_CHANGED, value="false")
        _doc(el, p.doc)
    for name, members in _STANDARD:
        std = ET.SubElement(node, "interface", name=name)
        for member, args, kind in members:
            el = ET.SubElement(std, kind, name=member)
            for arg, sig, direction in args:
                attrs = {"name": arg, "type": sig}
                if kind == "method":
                    attrs["direction"] = direction
                ET.SubElement(el, "arg", attrs)
    for child in child_nodes:
        ET.SubElement(node, "node", name=child)
    return ('<!DOCTYPE node PUBLIC "-//freedesktop//DTD D-BUS Object Introspection 1.0//EN"\n'
            ' "http://www.freedesktop.org/standards/dbus/1.0/introspect.dtd">\n' + ET.tostring(node, "unicode"))


_STANDARD = (
    ("org.freedesktop.DBus.Introspectable", (("Introspect", (("xml", "s", "out"),), "method"),)),
    ("org.freedesktop.DBus.Peer", (("Ping", (), "method"), ("GetMachineId", (("machine_uuid", "s", "out"),),
                                                             "method"))),
    ("org.freedesktop.DBus.Properties", (
        ("Get", (("interface", "s", "in"), ("property", "s", "in"), ("value", "v", "out")), "method"),
        ("GetAll", (("interface", "s", "in"), ("properties", "a{sv}", "out")), "method"),
        ("Set", (("interface", "s", "in"), ("property", "s", "in"), ("value", "v", "in")), "method"),
        ("PropertiesChanged", (("interface", "s", ""), ("changed_properties", "a{sv}", ""),
                               ("invalidated_properties", "as", "")), "signal"),
    )),
)
