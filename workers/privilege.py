"""Dropping a worker to the unprivileged user, keeping CAP_IPC_LOCK and nothing else.

The collector and the detector parse what the host and the policy give them; a bug there must not be able to
signal a process. So once they are exec'd and have imported everything (the interpreter may live where the
unprivileged user cannot read), and before they read anything untrusted, they become the daemon's own user:

1. every capability but CAP_IPC_LOCK leaves the bounding set (needs CAP_SETPCAP, so while still root),
2. PR_SET_KEEPCAPS, then groups, gid and uid (real, effective, saved) change,
3. permitted and effective capabilities become CAP_IPC_LOCK alone (memory stays lockable: mlockall's
   MCL_FUTURE would otherwise charge every new page against an 8 MiB RLIMIT_MEMLOCK), no ambient ones,
4. PR_SET_NO_NEW_PRIVS: no exec can give anything back,
5. PR_SET_PDEATHSIG again, since the uid change cleared it, and getppid() checked at once, so a supervisor that
   died meanwhile does not leave this worker behind as an orphan acting on an old policy.

Every step is checked afterwards from /proc/self/status; a drop that did not fully happen is fatal to the worker
(the supervisor restarts it, and after repeated failures stops with the reason), never silently ignored.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
from dataclasses import dataclass
from pathlib import Path

CAP_IPC_LOCK = 14
PR_SET_PDEATHSIG = 1
PR_SET_KEEPCAPS = 8
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
_LINUX_CAPABILITY_VERSION_3 = 0x20080522


class PrivilegeError(Exception):
    """The drop did not happen as it must; the message says which step failed."""


@dataclass(frozen=True)
class Identity:
    uid: int
    gid: int

    @classmethod
    def parse(cls, text: str) -> Identity:
        """"UID:GID", as the supervisor passes it on a worker's command line."""
        uid, gid = text.split(":")
        return cls(int(uid), int(gid))

    def __str__(self) -> str:
        return f"{self.uid}:{self.gid}"


class _CapHeader(ctypes.Structure):
    _fields_ = (("version", ctypes.c_uint32), ("pid", ctypes.c_int))


class _CapData(ctypes.Structure):
    _fields_ = (("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32))


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


def _prctl(libc: ctypes.CDLL, option: int, arg: int, what: str) -> None:
    if libc.prctl(option, ctypes.c_ulong(arg), ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0)) != 0:
        err = ctypes.get_errno()
        raise PrivilegeError(f"{what}: {os.strerror(err)}")


def _last_cap() -> int:
    try:
        return int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    except OSError:
        return 40


def status_field(name: str) -> str:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return line.split(":", 1)[1].strip()
    return ""


def drop_to(who: Identity, supervisor_pid: int, keep: int = 1 << CAP_IPC_LOCK) -> None:
    """Become `who` with the capabilities in the mask `keep` alone (CAP_IPC_LOCK unless told; 0 for none); raise
    PrivilegeError when any step fails or did not take. `supervisor_pid` is the parent this process must still
    have afterwards."""
    libc = _libc()
    for cap in range(_last_cap() + 1):
        if not keep & (1 << cap):
            _prctl(libc, PR_CAPBSET_DROP, cap, f"dropping capability {cap} from the bounding set")
    _prctl(libc, PR_SET_KEEPCAPS, 1, "PR_SET_KEEPCAPS")
    try:
        os.setgroups([])
        os.setresgid(who.gid, who.gid, who.gid)
        os.setresuid(who.uid, who.uid, who.uid)
    except OSError as e:
        raise PrivilegeError(f"becoming {who}: {e.strerror}") from None
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)(_CapData(keep, keep, 0), _CapData(0, 0, 0))
    if libc.capset(ctypes.byref(header), data) != 0:
        raise PrivilegeError(f"capset: {os.strerror(ctypes.get_errno())}")
    _prctl(libc, PR_SET_KEEPCAPS, 0, "clearing PR_SET_KEEPCAPS")
    libc.prctl(PR_CAP_AMBIENT, ctypes.c_ulong(PR_CAP_AMBIENT_CLEAR_ALL), ctypes.c_ulong(0), ctypes.c_ulong(0),
               ctypes.c_ulong(0))
    _prctl(libc, PR_SET_NO_NEW_PRIVS, 1, "PR_SET_NO_NEW_PRIVS")
    _prctl(libc, PR_SET_PDEATHSIG, signal.SIGKILL, "PR_SET_PDEATHSIG after the uid change")
    if os.getppid() != supervisor_pid:
        raise PrivilegeError("the supervisor died while this worker dropped its privileges")
    _verify(who, keep)


def _verify(who: Identity, keep: int) -> None:
    uids = {int(x) for x in status_field("Uid").split()}
    gids = {int(x) for x in status_field("Gid").split()}
    if uids != {who.uid} or gids != {who.gid} or status_field("Groups"):
        raise PrivilegeError(f"still uid {uids}, gid {gids}, groups {status_field('Groups')!r} after the drop")
    for field in ("CapEff", "CapPrm", "CapBnd"):
        value = int(status_field(field) or "0", 16)
        if value != keep:
            raise PrivilegeError(f"{field} is {value:#x} after the drop, not {keep:#x}")
    if int(status_field("CapInh") or "0", 16) or int(status_field("CapAmb") or "0", 16):
        raise PrivilegeError("inheritable or ambient capabilities left after the drop")
    if status_field("NoNewPrivs") != "1":
        raise PrivilegeError("no_new_privs is not set after the drop")
