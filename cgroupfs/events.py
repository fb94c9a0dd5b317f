"""Kernel event sources for memory pressure: PSI triggers and cgroup v1 eventfd notifications.

Opening a source and waiting on it are separate steps. Opening may need root (writing `cgroup.event_control`, a
PSI trigger with a sub-2 s window); waiting needs nothing but the file descriptors. A privileged process can open
sources and hand their descriptors (`EventSource.fds()`) to an unprivileged one over a Unix socket (SCM_RIGHTS,
`socket.send_fds`), which rebuilds them with `adopt()` and waits. The kernel decides a PSI trigger's privilege
from the credentials of the process that *opened* the file, so a trigger opened by root keeps its short window
in the receiver.

What the kernel does, and what the sources make of it:

- PSI (`/proc/pressure/*`, a cgroup2 directory's `*.pressure`): one trigger per open file; the fd reports POLLPRI
  at most once per window while the stall exceeds the threshold, and polling it clears the event, so each POLLPRI
  counts as one event. When the cgroup is removed the fd reports POLLERR (with POLLPRI) and reads give ENODEV.
- cgroup v1 memory notifications (`memory.pressure_level`, `memory.usage_in_bytes` thresholds): registered through
  `cgroup.event_control` with an eventfd; the eventfd's counter is the number of events since the last read.
  Closing the eventfd unregisters. When the cgroup is removed the kernel signals the eventfd once more (a moment
  after the rmdir, from the cgroup's offlining); the source then sees ENODEV on the watched file, marks itself
  dead and does not count that last signal as an event.

Nothing here retries forever or sleeps: callers put the descriptors in their own poll loop (`poll_events`,
`consume(revents)`) or use `wait_any()`.
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import select
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import ClassVar

__all__ = [
    "PSI_KINDS",
    "VMPRESSURE_LEVELS",
    "VMPRESSURE_MODES",
    "EventSource",
    "EventfdSource",
    "PsiTrigger",
    "adopt",
    "open_psi_trigger",
    "open_usage_threshold",
    "open_vmpressure",
    "wait_any",
]

PSI_KINDS = ("some", "full")
VMPRESSURE_LEVELS = ("low", "medium", "critical")
VMPRESSURE_MODES = ("default", "hierarchy", "local")

# Documented PSI trigger bounds (Documentation/accounting/psi.rst). Kernels before 6.5 refuse windows under 500 ms;
# newer ones accept any non-zero window up to 10 s, but nothing below 500 ms is documented, so it is refused here.
PSI_WINDOW_MIN_US = 500_000
PSI_WINDOW_MAX_US = 10_000_000
# Openers without CAP_SYS_RESOURCE get triggers driven by the 2 s averaging worker: only multiples of 2 s (6.5+).
PSI_UNPRIVILEGED_STEP_US = 2_000_000
# /proc/pressure/* copies at most 32 bytes of a write, then overwrites the last one with NUL.
_PSI_WRITE_MAX = 32

_GONE = (select.POLLERR | select.POLLHUP | select.POLLNVAL)


def _fmt_us(us: int) -> str:
    """2000000 -> '2s', 600000 -> '600ms', 1500 -> '1.5ms': the units a person would write in a policy."""
    if us % 1_000_000 == 0:
        return f"{us // 1_000_000}s"
    if us >= 1_000_000:
        return f"{us / 1_000_000:g}s"
    if us % 1000 == 0:
        return f"{us // 1000}ms"
    return f"{us / 1000:g}ms"


class EventSource:
    """One kernel event source behind one pollable file descriptor.

    `count` is the cumulative number of events, `last_event` the wall-clock time (time.time()) of the last
    `consume()` that found any, `fired` the number that call found. `dead` means the watched cgroup is gone: the
    source will never fire again and the caller should close and forget it.
    """

    kind: ClassVar[str] = ""
    poll_events: ClassVar[int] = 0

    def __init__(self, fd: int, description: str) -> None:
        self._fd = fd
        self._description = description
        self.count = 0
        self.fired = 0
        self.last_event: float | None = None
        self.dead = False
        self.note: str | None = None  # set when the kernel did not take the request as asked, and why

    def fileno(self) -> int:
        if self._fd < 0:
            raise ValueError(f"{self.describe()}: source is closed")
        return self._fd

    @property
    def closed(self) -> bool:
        return self._fd < 0

    def fds(self) -> list[int]:
        """Every descriptor a receiving process needs to rebuild this source with `adopt()`, `fileno()` first."""
        return [self.fileno()]

    def describe(self) -> str:
        return self._description

    def consume(self, revents: int | None = None) -> int:
        """Acknowledge pending events and return how many fired since the last call (also added to `count`).

        `revents` is what the caller's poll reported for `fileno()`. Without it the source polls itself without
        waiting, which is only right when nobody else polled the descriptor since: a PSI trigger's event is
        cleared by the poll that reports it.
        """
        if self.dead or self.closed:
            self.fired = 0
            return 0
        if revents is None:
            ready = select.poll()
            ready.register(self._fd, self.poll_events)
            revents = next((ev for _, ev in ready.poll(0)), 0)
        n = self._consume(revents)
        self.fired = n
        if n:
            self.count += n
            self.last_event = time.time()
        return n

    def _consume(self, revents: int) -> int:
        raise NotImplementedError

    def close(self) -> None:
        """Release the descriptors (for v1 sources this unregisters the notification). Safe to call twice."""
        for fd in self._all_fds():
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fd = -1

    def _all_fds(self) -> list[int]:
        return [self._fd] if self._fd >= 0 else []

    def __enter__(self) -> EventSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        # A leaked source would keep a PSI trigger or a v1 registration alive in the kernel.
        if getattr(self, "_fd", -1) >= 0:
            self.close()

    def __repr__(self) -> str:
        state = "dead" if self.dead else "closed" if self.closed else f"count={self.count}"
        return f"<{type(self).__name__} {self.describe()} {state}>"


class PsiTrigger(EventSource):
    """A PSI trigger: POLLPRI when `stall_us` of `kind` stall accumulated within a `window_us` window."""

    kind = "psi"
    poll_events = select.POLLPRI

    def __init__(
        self, fd: int, description: str, path: Path | None = None, stall_kind: str = "", stall_us: int = 0,
        window_us: int = 0,
    ) -> None:
        super().__init__(fd, description)
        self.path = path
        self.stall_kind = stall_kind
        self.stall_us = stall_us  # as accepted by the kernel, after any rounding
        self.window_us = window_us

    @classmethod
    def from_fds(cls, fds: Sequence[int], description: str = "psi trigger") -> PsiTrigger:
        """Wrap a trigger descriptor received from the process that opened it."""
        return cls(fds[0], description)

    def _consume(self, revents: int) -> int:
        if revents & _GONE:
            # A removed cgroup's trigger reports POLLERR|POLLPRI forever; the POLLPRI there is not an event.
            self.dead = True
            return 0
        return 1 if revents & select.POLLPRI else 0


class EventfdSource(EventSource):
    """A cgroup v1 memory notification delivered through an eventfd; the counter is the number of events."""

    kind = "eventfd"
    poll_events = select.POLLIN

    def __init__(self, efd: int, probe_fd: int, description: str, cgroup_dir: Path | None = None) -> None:
        super().__init__(efd, description)
        # The watched file (memory.pressure_level, memory.usage_in_bytes), kept open as a liveness probe: reading
        # it gives ENODEV once the cgroup is removed, also when a new cgroup of the same name took its place.
        self._probe_fd = probe_fd
        self.cgroup_dir = cgroup_dir

    @classmethod
    def from_fds(cls, fds: Sequence[int], description: str = "cgroup v1 eventfd") -> EventfdSource:
        """Wrap [eventfd, watched-file fd] received from the process that registered them."""
        if len(fds) != 2:
            raise ValueError(f"an eventfd source needs [eventfd, watched file fd], got {len(fds)} descriptors")
        return cls(fds[0], fds[1], description)

    def fds(self) -> list[int]:
        return [self.fileno(), self._probe_fd]

    def _all_fds(self) -> list[int]:
        return [fd for fd in (self._fd, self._probe_fd) if fd >= 0]

    def close(self) -> None:
        super().close()
        self._probe_fd = -1

    def cgroup_alive(self) -> bool:
        try:
            os.pread(self._probe_fd, 1, 0)
        except OSError as e:
            # memory.pressure_level cannot be read at all (EINVAL) while the cgroup lives; only ENODEV means gone.
            return e.errno != errno.ENODEV
        return True

    def _consume(self, revents: int) -> int:
        try:
            n = int.from_bytes(os.read(self._fd, 8), sys.byteorder)
        except BlockingIOError:
            n = 0
        if revents & select.POLLNVAL:
            self.dead = True
            return 0
        if (n or revents & _GONE) and not self.cgroup_alive():
            self.dead = True
            # The kernel adds one when it unregisters a removed cgroup's notification; that one is not an event.
            # If this read came between the rmdir and that signal, this undercounts by one, on a cgroup that is gone.
            return max(n - 1, 0)
        return n


def _psi_write(fd: int, kind: str, stall_us: int, window_us: int) -> None:
    # NUL-terminated: the /proc/pressure/* handler overwrites the last byte written with NUL, which would cut the
    # window's last digit; cgroup2 *.pressure files accept the NUL too.
    data = f"{kind} {stall_us} {window_us}\0".encode()
    if len(data) > _PSI_WRITE_MAX:
        raise ValueError(f"PSI trigger {data!r} longer than the kernel's {_PSI_WRITE_MAX}-byte buffer")
    os.write(fd, data)


def _unprivileged_window(window_us: int) -> int:
    """The next window an opener without CAP_SYS_RESOURCE may use: a multiple of 2 s, at most 10 s."""
    step = PSI_UNPRIVILEGED_STEP_US
    return min(-(-window_us // step) * step, PSI_WINDOW_MAX_US)


def open_psi_trigger(pressure_file: Path | str, kind: str, stall_us: int, window_us: int) -> PsiTrigger:
    """Open a PSI trigger on `pressure_file` (/proc/pressure/memory, or a cgroup2 directory's memory.pressure).

    If the kernel refuses the window (EINVAL: without CAP_SYS_RESOURCE only multiples of 2 s are allowed), the
    window is rounded up to the next multiple of 2 s, the stall scaled to keep the same stall/window ratio, and
    `note` says so. Invalid arguments raise ValueError before anything is opened.
    """
    pressure_file = Path(pressure_file)
    if kind not in PSI_KINDS:
        raise ValueError(f"PSI trigger kind {kind!r} is not one of {', '.join(PSI_KINDS)}")
    if not PSI_WINDOW_MIN_US <= window_us <= PSI_WINDOW_MAX_US:
        raise ValueError(
            f"PSI window {_fmt_us(window_us)} outside {_fmt_us(PSI_WINDOW_MIN_US)}..{_fmt_us(PSI_WINDOW_MAX_US)}"
        )
    if not 0 < stall_us <= window_us:
        raise ValueError(f"PSI stall {_fmt_us(stall_us)} must be above 0 and at most the window {_fmt_us(window_us)}")

    fd = os.open(pressure_file, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    note = None
    try:
        try:
            _psi_write(fd, kind, stall_us, window_us)
        except OSError as e:
            wider = _unprivileged_window(window_us)
            if e.errno != errno.EINVAL or wider == window_us:
                raise OSError(
                    e.errno, f"{pressure_file}: kernel refused PSI trigger '{kind} {stall_us} {window_us}': "
                    f"{os.strerror(e.errno)}"
                ) from e
            # Same stall/window ratio, so the trigger means the same share of time stalled.
            scaled = max(1, min(wider, round(stall_us * wider / window_us)))
            try:
                _psi_write(fd, kind, scaled, wider)  # the failed write set no trigger on this fd; retry on it
            except OSError as e2:
                raise OSError(
                    e2.errno, f"{pressure_file}: kernel refused PSI trigger '{kind} {stall_us} {window_us}' and, "
                    f"rounded up, '{kind} {scaled} {wider}': {os.strerror(e2.errno)}"
                ) from e2
            note = (
                f"window {_fmt_us(window_us)} not accepted without CAP_SYS_RESOURCE; using {_fmt_us(wider)} with "
                f"stall {_fmt_us(scaled)} (same {stall_us * 100 / window_us:.3g}% ratio)"
            )
            stall_us, window_us = scaled, wider
    except BaseException:
        os.close(fd)
        raise
    trigger = PsiTrigger(
        fd, f"psi {pressure_file} {kind} {_fmt_us(stall_us)}/{_fmt_us(window_us)}", pressure_file, kind, stall_us,
        window_us,
    )
    trigger.note = note
    return trigger


def _register_v1(cgroup_dir: Path, watched: str, args: str) -> tuple[int, int]:
    """Register an eventfd for `watched` with `args` in cgroup_dir/cgroup.event_control; return (efd, watched fd)."""
    efd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
    try:
        wfd = os.open(cgroup_dir / watched, os.O_RDONLY | os.O_CLOEXEC)
        try:
            cfd = os.open(cgroup_dir / "cgroup.event_control", os.O_WRONLY | os.O_CLOEXEC)
            try:
                os.write(cfd, f"{efd} {wfd} {args}".encode())
            finally:
                os.close(cfd)
        except BaseException:
            os.close(wfd)
            raise
    except BaseException:
        os.close(efd)
        raise
    return efd, wfd


def open_vmpressure(memory_cgroup_dir: Path | str, level: str, mode: str = "hierarchy") -> EventfdSource:
    """vmpressure notifications of a v1 memory cgroup at `level` or above.

    `mode` "hierarchy" (default here) gets every event of the cgroup and its descendants whatever other listeners
    exist; "local" only the cgroup's own reclaim; "default" is the kernel's original propagation, where a listener
    further down stops events from reaching this one. Kernels before 4.5 know no mode: on EINVAL the level alone
    is registered and `note` says so.
    """
    memory_cgroup_dir = Path(memory_cgroup_dir)
    if level not in VMPRESSURE_LEVELS:
        raise ValueError(f"vmpressure level {level!r} is not one of {', '.join(VMPRESSURE_LEVELS)}")
    if mode not in VMPRESSURE_MODES:
        raise ValueError(f"vmpressure mode {mode!r} is not one of {', '.join(VMPRESSURE_MODES)}")
    note = None
    try:
        efd, wfd = _register_v1(memory_cgroup_dir, "memory.pressure_level", f"{level},{mode}")
    except OSError as e:
        # Level and mode were checked above, so EINVAL here is a kernel that parses the level only (before 4.5).
        if e.errno != errno.EINVAL:
            raise
        efd, wfd = _register_v1(memory_cgroup_dir, "memory.pressure_level", level)
        note = f"vmpressure mode {mode!r} refused (kernel before 4.5); registered {level!r} with default propagation"
        mode = "default"
    source = EventfdSource(efd, wfd, f"vmpressure {memory_cgroup_dir} {level},{mode}", memory_cgroup_dir)
    source.note = note
    return source


def open_usage_threshold(memory_cgroup_dir: Path | str, threshold_bytes: int) -> EventfdSource:
    """An event each time a v1 memory cgroup's memory.usage_in_bytes crosses `threshold_bytes`, in either
    direction (the kernel checks on charge and uncharge batches, so it is not byte-exact)."""
    memory_cgroup_dir = Path(memory_cgroup_dir)
    if threshold_bytes <= 0:
        raise ValueError(f"usage threshold must be a positive number of bytes, got {threshold_bytes}")
    efd, wfd = _register_v1(memory_cgroup_dir, "memory.usage_in_bytes", str(threshold_bytes))
    return EventfdSource(efd, wfd, f"usage threshold {memory_cgroup_dir} {threshold_bytes}", memory_cgroup_dir)


def adopt(kind: str, fds: Sequence[int], description: str = "") -> EventSource:
    """Rebuild a source from descriptors received over SCM_RIGHTS: `kind` and the order of `fds` are what the
    sender's `source.kind` and `source.fds()` gave. The receiver owns the descriptors from then on."""
    if kind == PsiTrigger.kind:
        return PsiTrigger.from_fds(fds, description or "psi trigger")
    if kind == EventfdSource.kind:
        return EventfdSource.from_fds(fds, description or "cgroup v1 eventfd")
    raise ValueError(f"unknown event source kind {kind!r}")


def wait_any(sources: Iterable[EventSource], timeout: float | None) -> list[EventSource]:
    """Wait up to `timeout` seconds (None: forever) for any live source; consume what fired and return the sources
    that fired (`fired` > 0) or died. An empty list means the timeout passed."""
    live = {s.fileno(): s for s in sources if not s.dead and not s.closed}
    if not live and timeout is None:
        raise ValueError("wait_any without live sources and without a timeout would wait forever")
    poller = select.poll()
    for fd, source in live.items():
        poller.register(fd, source.poll_events)
    ready = poller.poll(None if timeout is None else max(0, math.ceil(timeout * 1000)))
    out = []
    for fd, revents in ready:
        source = live[fd]
        if source.consume(revents) or source.dead:
            out.append(source)
    return out
