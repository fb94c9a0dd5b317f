"""The collector's side of the broker (supervisor/broker.py): event sources and trusted.* xattrs it may not open or
read itself, asked of the supervisor over the socketpair it was started with.

Each request waits for its answer at most REQUEST_TIMEOUT; an answer that comes later belongs to a request given up
on, and is thrown away with its descriptors. A broker that does not answer costs a source (the tick reads the
cgroup instead), never the collector's loop.
"""

from __future__ import annotations

import itertools
import os
import socket
import time
from pathlib import Path
from typing import Any

from cgroupfs.events import EventSource, adopt
from ipc.fdchannel import FdChannel
from ipc.messages import BrokerAnswer, OpenSource, ReadXattrs, SourceOpened, XattrValues

REQUEST_TIMEOUT = 2.0


class BrokerUnavailable(OSError):
    pass


class Broker:
    def __init__(self, fd: int) -> None:
        sock = socket.socket(fileno=fd)
        self.channel = FdChannel(sock, "collector/broker", BrokerAnswer)
        self.ids = itertools.count(1)

    def _ask(self, request: OpenSource | ReadXattrs) -> tuple[Any, list[int]]:
        try:
            self.channel.send(request)
        except OSError as e:
            raise BrokerUnavailable(e.errno, f"the supervisor's broker: {e.strerror}") from None
        deadline = time.monotonic() + REQUEST_TIMEOUT
        while (left := deadline - time.monotonic()) > 0:
            self.channel.sock.settimeout(left)
            try:
                answer, fds = self.channel.recv()
            except TimeoutError:
                break
            except (EOFError, OSError) as e:
                raise BrokerUnavailable(0, f"the supervisor's broker: {e}") from None
            if answer is not None and answer.id == request.id:
                return answer, fds
            for fd in fds:  # the late answer to a request given up on
                os.close(fd)
        raise BrokerUnavailable(0, f"the supervisor's broker did not answer within {REQUEST_TIMEOUT:g} s")

    def _source(self, request: OpenSource) -> EventSource:
        answer, fds = self._ask(request)
        assert isinstance(answer, SourceOpened)
        if answer.error:
            for fd in fds:
                os.close(fd)
            raise OSError(answer.errno, answer.error)
        source = adopt(answer.source_kind, fds, answer.description)
        source.note = answer.note or None
        return source

    # SourceOpener (cgroupfs/watch.py)
    def psi_trigger(self, pressure_file: Path, kind: str, stall_us: int, window_us: int) -> EventSource:
        return self._source(OpenSource(id=next(self.ids), mechanism="psi", path=str(pressure_file),
                                       stall_kind=kind, stall_us=stall_us, window_us=window_us))

    def vmpressure(self, memory_dir: Path, level: str, mode: str) -> EventSource:
        return self._source(OpenSource(id=next(self.ids), mechanism="vmpressure", path=str(memory_dir), level=level,
                                       mode=mode))

    def usage_threshold(self, memory_dir: Path, threshold: int) -> EventSource:
        return self._source(OpenSource(id=next(self.ids), mechanism="usage", path=str(memory_dir),
                                       threshold=threshold))

    def trusted_xattrs(self, paths: list[str]) -> dict[str, dict[str, str]]:
        """trusted.* xattrs of these cgroups, as the supervisor reads them; {} when it cannot be asked."""
        try:
            answer, fds = self._ask(ReadXattrs(id=next(self.ids), paths=paths))
        except BrokerUnavailable:
            return {}
        for fd in fds:
            os.close(fd)
        return answer.values if isinstance(answer, XattrValues) else {}
