"""The fork server: every worker forked from one image of the imported code, so that its pages are shared.

Four interpreters that each import zmq, msgspec, psutil, the policy engine and its plugins cost about 20 MiB of
private memory each; forked from one process that imported it all once, they share those pages (copy-on-write)
and pay only for what each one changes. The server is forked by `pyoomd run` right after its imports, before the
supervisor starts any thread, opens any socket or reads any file of the host: a pristine image, as if exec'd
fresh. gc.freeze() first, so that the garbage collector's passes do not write to (and so copy) every object.

For each Spawn request it forks twice: the intermediate child forks the worker and exits at once, so that the
worker is reparented to the supervisor (a child subreaper): the supervisor reaps it, gets its exit status and
signals it through a pidfd as it would a child it exec'd itself, and the worker's PDEATHSIG and the ZAP check
("a child of the supervisor") hold as before. The server itself stays single-threaded and opens nothing.

If the server is gone (it died, or the supervisor could not start it), the supervisor exec's workers instead.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import socket
import sys
import time
from pathlib import Path

from ipc.build import build_id
from ipc.fdchannel import FdChannel
from ipc.messages import ForkServerReady, ForkServerRequest, Spawn, Spawned
from workers.actuator import Actuator
from workers.base import Worker, WorkerArgs, die_with_parent, run_worker
from workers.collector import Collector
from workers.detector import Detector
from workers.privilege import Identity

log = logging.getLogger("pyoomd.forkserver")

WORKERS: dict[str, type[Worker]] = {"collector": Collector, "detector": Detector, "actuator": Actuator}
REPARENT_TIMEOUT = 5.0


def _title(name: str, supervisor_pid: int) -> None:
    """What ps and /proc/PID/cmdline show: the same as an exec'd worker's, so tools find workers one way."""
    try:
        from setproctitle import setproctitle
    except ImportError:  # a title only: the worker runs the same without it
        return
    setproctitle(f"{sys.executable} -P -m workers.{name} --supervisor-pid {supervisor_pid}"
                 + ("" if name == "forkserver" else " (forked)"))


def _become_worker(req: Spawn, broker_fd: int | None, supervisor_pid: int) -> int:
    """In the grandchild: wait to be the supervisor's (the intermediate has exited), then run the worker."""
    deadline = time.monotonic() + REPARENT_TIMEOUT
    while os.getppid() != supervisor_pid:
        if time.monotonic() > deadline:
            return 1  # the supervisor is not our parent: it died, or is no subreaper; never run unsupervised
        time.sleep(0.001)
    _title(req.worker, supervisor_pid)
    args = WorkerArgs(runtime_dir=Path(req.runtime_dir), state_dir=Path(req.state_dir), supervisor_pid=supervisor_pid,
                      broker_fd=broker_fd)
    return run_worker(WORKERS[req.worker], args, Identity.parse(req.drop_to) if req.drop_to else None)


def _spawn(req: Spawn, fds: list[int], channel: FdChannel, supervisor_pid: int) -> Spawned:
    broker_fd = fds[0] if req.with_broker and fds else None
    r, w = os.pipe()
    first = os.fork()
    if first == 0:  # the intermediate
        status = 0
        try:
            os.close(r)
            worker = os.fork()
            if worker == 0:
                os.close(w)
                channel.sock.close()
                try:
                    status = _become_worker(req, broker_fd, supervisor_pid)
                except SystemExit as e:
                    status = e.code if isinstance(e.code, int) else 1
                except BaseException:
                    log.exception("worker %s crashed", req.worker)
                    status = 1
                logging.shutdown()
                os._exit(status)
            os.write(w, str(worker).encode())
        except BaseException:
            status = 1
        finally:
            os._exit(status)
    os.close(w)
    try:
        data = os.read(r, 32)
    finally:
        os.close(r)
        os.waitpid(first, 0)
        for fd in fds:
            os.close(fd)  # the worker has its copy; the server keeps nothing of it
    if not data:
        return Spawned(worker=req.worker, error="the intermediate process died before it forked the worker")
    return Spawned(worker=req.worker, pid=int(data))


def serve(sock: socket.socket, supervisor_pid: int) -> int:
    """The server's loop (in the child `start` forked); returns when the supervisor's end closes."""
    die_with_parent(supervisor_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's ^C is the supervisor's to handle
    channel = FdChannel(sock, "forkserver", ForkServerRequest)
    channel.send(ForkServerReady(pid=os.getpid(), build=build_id()))
    while True:
        try:
            req, fds = channel.recv()
        except (EOFError, ConnectionError):
            return 0
        if not isinstance(req, Spawn) or req.worker not in WORKERS:
            for fd in fds:
                os.close(fd)
            continue
        channel.send(_spawn(req, fds, channel, supervisor_pid))


def start(supervisor_pid: int) -> tuple[int, socket.socket]:
    """Fork the server from this (freshly started) process; returns its PID and the supervisor's end of the pair.
    Call before any thread, socket or zmq context exists."""
    gc.collect()
    gc.freeze()  # everything imported so far: left alone by the collector in every process forked from here
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    pid = os.fork()
    if pid == 0:
        ours.close()
        status = 1
        try:
            from supervisor.logsetup import setup_logging

            setup_logging("forkserver")
            _title("forkserver", supervisor_pid)
            status = serve(theirs, supervisor_pid)
        finally:
            os._exit(status)
    theirs.close()
    return pid, ours
