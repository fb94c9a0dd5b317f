"""The supervisor's side of the collector's broker: what only root may open or read, checked, then handed over.

The collector runs unprivileged. A cgroup's PSI trigger needs write access to a root-owned `*.pressure` file, a
v1 notification needs `cgroup.event_control` (root-only), and trusted.* xattrs need CAP_SYS_ADMIN. So the
collector asks here, over a socketpair only it holds, and gets descriptors (SCM_RIGHTS) or values back. Every
request is checked before anything is opened: a PSI trigger only on a pressure file of a cgroup2 directory or
/proc/pressure, a v1 notification only on a directory of the v1 memory hierarchy, xattrs only of cgroup paths
and only the trusted.* ones (the collector reads user.* itself). The kernel fixes a PSI trigger's privilege at
the moment it is written, so a trigger registered here keeps root's window rules in the collector.
"""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path

from cgroupfs import CgroupFS
from cgroupfs.events import EventSource, open_psi_trigger, open_usage_threshold, open_vmpressure
from cgroupfs.tree import CgroupPathError, normalize
from ipc.fdchannel import FdChannel
from ipc.messages import BrokerRequest, OpenSource, ReadXattrs, SourceOpened, XattrValues

log = logging.getLogger("pyoomd.supervisor")

PSI_FILES = ("memory.pressure", "io.pressure", "cpu.pressure")
MAX_XATTR_PATHS = 20_000


class Refusal(Exception):
    """The request asks for something the collector may not have."""


class SourceBroker:
    def __init__(self, fs: CgroupFS, sock: socket.socket) -> None:
        self.fs = fs
        sock.setblocking(False)
        self.channel = FdChannel(sock, "supervisor/broker", BrokerRequest)
        self.refused = 0

    def fileno(self) -> int:
        return self.channel.fileno()

    def close(self) -> None:
        self.channel.close()

    def on_readable(self) -> bool:
        """Answer every pending request; False once the collector's end is closed (it exited)."""
        while True:
            try:
                msg, fds = self.channel.recv()
            except BlockingIOError:
                return True
            except (EOFError, ConnectionError):
                return False
            for fd in fds:  # a request never brings descriptors
                os.close(fd)
            if isinstance(msg, OpenSource):
                self._open(msg)
            elif isinstance(msg, ReadXattrs):
                self._xattrs(msg)

    def _open(self, msg: OpenSource) -> None:
        try:
            source = self._opened(msg)
        except Refusal as e:
            self.refused += 1
            log.error("broker: refused the collector's request %s %s: %s", msg.mechanism, msg.path, e)
            self._answer(SourceOpened(id=msg.id, error=f"refused: {e}"))
            return
        except (OSError, ValueError) as e:
            self._answer(SourceOpened(id=msg.id, error=str(e), errno=getattr(e, "errno", 0) or 0))
            return
        try:
            self._answer(SourceOpened(id=msg.id, source_kind=source.kind, description=source.describe(),
                                      note=source.note or ""), source.fds())
        finally:
            source.close()  # the collector holds its own copies now; ours go

    def _opened(self, msg: OpenSource) -> EventSource:
        path = Path(os.path.realpath(msg.path))
        if msg.mechanism == "psi":
            if not self._is_psi_file(path):
                raise Refusal("not a cgroup2 or /proc/pressure PSI file")
            return open_psi_trigger(path, msg.stall_kind, msg.stall_us, msg.window_us)
        memory = self.fs.layout.v1("memory")
        if memory is None or not _within(path, Path(memory.mount_point)) or not path.is_dir():
            raise Refusal("not a directory of the v1 memory hierarchy")
        if msg.mechanism == "vmpressure":
            return open_vmpressure(path, msg.level, msg.mode)
        return open_usage_threshold(path, msg.threshold)

    def _is_psi_file(self, path: Path) -> bool:
        if path.parent == Path("/proc/pressure") and path.name in ("memory", "io", "cpu"):
            return True
        unified = self.fs.layout.unified
        return (unified is not None and path.name in PSI_FILES and _within(path.parent, Path(unified.mount_point)))

    def _xattrs(self, msg: ReadXattrs) -> None:
        values: dict[str, dict[str, str]] = {}
        for path in msg.paths[:MAX_XATTR_PATHS]:
            try:
                if normalize(path) != path:
                    continue
            except CgroupPathError:
                continue
            trusted = {k: v for k, v in self.fs.xattrs(path).items() if k.startswith("trusted.")}
            if trusted:
                values[path] = trusted
        self._answer(XattrValues(id=msg.id, values=values))

    def _answer(self, message: SourceOpened | XattrValues, fds: list[int] | None = None) -> None:
        try:
            self.channel.send(message, fds)
        except OSError as e:  # the collector is gone or stuck: it decides again with what it has
            log.warning("broker: could not answer the collector: %s", e)


def _within(path: Path, top: Path) -> bool:
    return path == top or top in path.parents
