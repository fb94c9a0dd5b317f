"""Collector -> detector -> actuator latency per hop and end to end, over pyoomd's own sockets and codec.

Three processes forked from this one, which plays the supervisor: the two that bind (detector: snapshots,
actuator: commands) run ipc/zap.py's ZapHandler for this process's PID in their poll loop, exactly as the
workers do, so the connections pass the same ZAP check as in the daemon. Sockets, options and endpoints are
ipc/endpoints.py's, frames ipc/codec.py's Channel, messages ipc/messages.py's:

    hop 1  collector encodes and sends a Snapshot of N cgroups    -> detector has decoded it
    hop 2  detector encodes and sends a KillCommand               -> actuator has decoded it
    hop 3  actuator encodes and sends a CommandResult             -> detector has decoded it
    end to end: from the collector's encode to the detector's decoded result

The KillCommand is the one the engine makes from that snapshot (a dry kill_by_memory_size_or_growth, so it
lists every cgroup as a ranked candidate, as the daemon's does); it is made before timing starts. Timestamps are
time.monotonic_ns, one clock for all processes of a host. The snapshot channel conflates, so the collector sends
the next round only once the detector has the previous round's result, and after a pause of --pause-ms (the
workers sleep in poll between ticks, so waking up is part of every hop, as it is in the daemon).

Run from the repository: `.venv/bin/python benchmarks/ipc.py [--rounds 200] [--sizes 10,100,1000]`.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import msgspec
import zmq

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cgroupfs.stats import CgroupStats, HostStats, Pressure
from ipc.codec import Channel
from ipc.endpoints import Endpoints, command_client, command_server, snapshot_receiver, snapshot_sender
from ipc.messages import CommandMessage, CommandResult, KillCommand, Snapshot
from ipc.zap import ZapHandler
from policy.engine import Engine
from policy.loader import load_policy_text
from workers.base import die_with_parent

MB = 1 << 20
GIB = 1 << 30
WARMUP = 20  # rounds not counted: the connections (and their ZAP checks) are made during the first ones
CHILD_TIMEOUT = 120.0  # seconds a role may take for all its rounds before it is killed

# Fires on the synthetic snapshot at once, so that the engine itself makes the command that is sent.
FIRING_POLICY = """
rulesets:
  - name: ipc-bench
    detectors:
      - name: pressure
        all:
          - pressure_above: {cgroup: "system.slice/*", resource: memory, threshold: 1, duration: 0}
    actions:
      - kill_by_memory_size_or_growth: {cgroup: "system.slice/*", dry: true}
"""


# ---- the messages ----------------------------------------------------------------------------------------------


def pressure(i: int) -> Pressure:
    return Pressure(some_avg10=i % 97 * 0.37, some_avg60=i % 89 * 0.21, some_avg300=i % 83 * 0.11,
                    some_total=123_456_789 + i * 1_000, full_avg10=i % 97 * 0.29, full_avg60=i % 89 * 0.17,
                    full_avg300=i % 83 * 0.07, full_total=98_765_432 + i * 700)


def cgroup(i: int) -> CgroupStats:
    """Every field the collector fills on this hybrid host for memory, reclaim, oom, tree and pressure."""
    usage = (i * 7919 % 4096 + 16) * MB
    return CgroupStats(
        path=f"/system.slice/app-{i:04d}.service", inode=4026531840 + i, usage=usage,
        limit=None if i % 3 else 4 * GIB, anon=usage * 3 // 5, file=usage // 3, shmem=usage // 50,
        workingset_refault=i * 1_311, pgmajfault=i * 17, failcnt=i % 5, oom_kills=0,
        nr_procs=1 + i % 7, populated=True, nr_dying_descendants=i % 2, pressure=pressure(i), xattrs={},
    )


def snapshot(n: int) -> Snapshot:
    host = HostStats(mem_total=24 * GIB, mem_available=17 * GIB, swap_total=0, swap_free=0, pressure=pressure(1))
    return Snapshot(seq=0, generation=1, time=time.time(), monotonic=time.monotonic(), host=host,
                    cgroups=[cgroup(i) for i in range(n)])


def kill_command(snap: Snapshot) -> KillCommand:
    engine = Engine(load_policy_text(FIRING_POLICY, "ipc.yaml"), generation=1, dry_run=False,
                    dry_run_source="default", protected=frozenset())
    (command,) = engine.tick(snap, time.monotonic()).commands
    return command


def result_for(command: KillCommand) -> CommandResult:
    top = command.candidates[0].path
    return CommandResult(id=command.id, status="dry-run", target=top, pids=[41_234, 41_235, 41_240],
                         detail=f"dry run: would have sent signal {command.signal} to 3 processes of {top}",
                         mechanism="cgroup.kill", emptied=None)


# ---- the three roles -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Setup:
    endpoints: Endpoints
    n: int
    rounds: int  # measured rounds, after WARMUP
    pause: float
    go_read: int  # detector -> collector: "the previous round is complete"
    go_write: int
    results: Path  # where each role leaves its timestamps

    @property
    def total(self) -> int:
        return WARMUP + self.rounds


def _poller(*sockets: zmq.Socket) -> zmq.Poller:
    poller = zmq.Poller()
    for sock in sockets:
        poller.register(sock, zmq.POLLIN)
    return poller


def _save(setup: Setup, role: str, record: dict) -> None:
    (setup.results / f"{role}.msgpack").write_bytes(msgspec.msgpack.encode(record))


def collector(setup: Setup) -> None:
    ctx = zmq.Context()
    sock = snapshot_sender(ctx, setup.endpoints)
    channel = Channel("bench/collector", Snapshot)
    base = snapshot(setup.n)
    sent, encode, size = [], [], 0
    for seq in range(setup.total):
        os.read(setup.go_read, 1)  # the previous round is complete: the conflated channel is empty
        time.sleep(setup.pause)
        snap = msgspec.structs.replace(base, seq=seq, time=time.time(), monotonic=time.monotonic())
        t0 = time.monotonic_ns()
        frame = channel.encode(snap)
        t_enc = time.monotonic_ns()
        sock.send(frame)  # blocks until connected, the first time; never again afterwards
        sent.append(t0)
        encode.append(t_enc - t0)
        size = len(frame)
    os.read(setup.go_read, 1)  # the last round's result arrived: closing now loses nothing
    _save(setup, "collector", {"sent": sent, "encode": encode, "size": size})
    sock.close(linger=0)
    ctx.term()


def _send_command(sock: zmq.Socket, frame: bytes, deadline: float) -> int:
    """IMMEDIATE: until the actuator's connection is up (ZAP included), a send is refused; retry in warm-up."""
    retries = 0
    while True:
        try:
            sock.send(frame, zmq.NOBLOCK)
            return retries
        except zmq.Again:
            if time.monotonic() > deadline:
                raise
            retries += 1
            time.sleep(0.001)


@dataclass
class DetectorLog:
    received: list[int]
    decode_snapshot: list[int]
    sent: list[int]
    encode_command: list[int]
    answered: list[int]
    decode_result: list[int]
    retries: list[int]


def detector(setup: Setup, command: KillCommand) -> None:
    ctx = zmq.Context()
    zap = ZapHandler(ctx, supervisor_pid=os.getppid())  # before the bind: admits the parent's children only
    snapshots = snapshot_receiver(ctx, setup.endpoints)
    commands = command_client(ctx, setup.endpoints)
    snap_channel = Channel("bench/detector/snapshots", Snapshot)
    cmd_channel = Channel("bench/detector/commands", CommandMessage)
    poller = _poller(zap.socket, snapshots, commands)
    log = DetectorLog([], [], [], [], [], [], [])
    deadline = time.monotonic() + CHILD_TIMEOUT
    os.write(setup.go_write, b"g")
    while len(log.answered) < setup.total:
        events = dict(poller.poll(1000))
        if zap.socket in events:
            zap.handle()
        if snapshots in events:
            frame = snapshots.recv(zmq.NOBLOCK)
            t_recv = time.monotonic_ns()
            snap = snap_channel.decode(frame)
            t1 = time.monotonic_ns()
            log.received.append(t1)
            log.decode_snapshot.append(t1 - t_recv)
            cmd = msgspec.structs.replace(command, id=f"r{snap.seq}", snapshot_time=snap.time,
                                          not_after=snap.monotonic + 1.5)
            t2 = time.monotonic_ns()
            out = cmd_channel.encode(cmd)
            log.encode_command.append(time.monotonic_ns() - t2)
            log.retries.append(_send_command(commands, out, deadline))
            log.sent.append(t2)
        if commands in events:
            frame = commands.recv(zmq.NOBLOCK)
            t_recv = time.monotonic_ns()
            cmd_channel.decode(frame)
            t5 = time.monotonic_ns()
            log.answered.append(t5)
            log.decode_result.append(t5 - t_recv)
            os.write(setup.go_write, b"g")
        if time.monotonic() > deadline:
            raise TimeoutError(f"detector: {len(log.answered)} of {setup.total} rounds done")
    _save(setup, "detector", dataclasses.asdict(log))
    for sock in (snapshots, commands):
        sock.close(linger=0)
    zap.close()
    ctx.term()


def actuator(setup: Setup, command: KillCommand) -> None:
    ctx = zmq.Context()
    zap = ZapHandler(ctx, supervisor_pid=os.getppid())
    commands = command_server(ctx, setup.endpoints)
    channel = Channel("bench/actuator/commands", CommandMessage)
    answer = result_for(command)
    poller = _poller(zap.socket, commands)
    received, decode, sent, encode = [], [], [], []
    deadline = time.monotonic() + CHILD_TIMEOUT
    while len(received) < setup.total:
        events = dict(poller.poll(1000))
        if zap.socket in events:
            zap.handle()
        if commands in events:
            identity, frame = commands.recv_multipart(zmq.NOBLOCK)
            t_recv = time.monotonic_ns()
            cmd = channel.decode(frame)
            t3 = time.monotonic_ns()
            received.append(t3)
            decode.append(t3 - t_recv)
            result = msgspec.structs.replace(answer, id=cmd.id)
            t4 = time.monotonic_ns()
            out = channel.encode(result)
            encode.append(time.monotonic_ns() - t4)
            commands.send_multipart([identity, out])
            sent.append(t4)
        if time.monotonic() > deadline:
            raise TimeoutError(f"actuator: {len(received)} of {setup.total} commands")
    _save(setup, "actuator", {"received": received, "decode": decode, "sent": sent, "encode": encode})
    time.sleep(0.2)  # LINGER 0: the last answer must leave before the socket closes
    commands.close(linger=0)
    zap.close()
    ctx.term()


# ---- running them ----------------------------------------------------------------------------------------------


def fork_role(name: str, role: Callable[[], None]) -> int:
    parent = os.getpid()
    pid = os.fork()
    if pid:
        return pid
    status = 1
    try:
        die_with_parent(parent)  # never outlive this benchmark
        role()
        status = 0
    except BaseException as e:
        print(f"{name} failed: {e!r}", file=sys.stderr)
    finally:
        os._exit(status)


def reap(pids: list[int], timeout: float) -> list[int]:
    """Wait for our children; kill (by PID: they are ours, unreaped) any still running after `timeout`."""
    deadline = time.monotonic() + timeout
    statuses = {}
    while len(statuses) < len(pids) and time.monotonic() < deadline:
        for pid in pids:
            if pid not in statuses:
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    statuses[pid] = os.waitstatus_to_exitcode(status)
        time.sleep(0.05)
    for pid in pids:
        if pid not in statuses:
            os.kill(pid, signal.SIGKILL)
            statuses[pid] = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    return [statuses[pid] for pid in pids]


@dataclass
class Hops:
    n: int
    snapshot_bytes: int
    command_bytes: int
    result_bytes: int
    hop1: list[int]
    hop2: list[int]
    hop3: list[int]
    end_to_end: list[int]
    codec1: list[int]  # encode in the sender + decode in the receiver, part of the hop
    codec2: list[int]
    codec3: list[int]
    late_sends: int  # command sends refused (actuator not connected) in measured rounds


def run_size(n: int, rounds: int, pause: float) -> Hops:
    base = snapshot(n)
    command = kill_command(base)
    command_bytes = len(Channel("size", CommandMessage).encode(command))
    result_bytes = len(Channel("size", CommandMessage).encode(result_for(command)))
    with tempfile.TemporaryDirectory(prefix="pyoomd-ipc-") as tmp:
        endpoints = Endpoints(Path(tmp) / "run")
        endpoints.prepare()
        go_read, go_write = os.pipe()
        setup = Setup(endpoints=endpoints, n=n, rounds=rounds, pause=pause, go_read=go_read, go_write=go_write,
                      results=Path(tmp))
        pids: list[int] = []
        try:
            pids.append(fork_role("actuator", lambda: actuator(setup, command)))
            pids.append(fork_role("detector", lambda: detector(setup, command)))
            pids.append(fork_role("collector", lambda: collector(setup)))
        finally:
            codes = reap(pids, CHILD_TIMEOUT + 10)
            os.close(go_read)
            os.close(go_write)
        if any(codes):
            raise RuntimeError(f"a role failed (exit codes actuator, detector, collector: {codes})")
        logs = {role: msgspec.msgpack.decode((Path(tmp) / f"{role}.msgpack").read_bytes())
                for role in ("collector", "detector", "actuator")}
    return hops_of(n, logs, command_bytes, result_bytes)


def hops_of(n: int, logs: dict[str, dict], command_bytes: int, result_bytes: int) -> Hops:
    c, d, a = logs["collector"], logs["detector"], logs["actuator"]
    w = slice(WARMUP, None)

    def diff(later: list[int], earlier: list[int]) -> list[int]:
        return [x - y for x, y in zip(later[w], earlier[w], strict=True)]

    def add(x: list[int], y: list[int]) -> list[int]:
        return [p + q for p, q in zip(x[w], y[w], strict=True)]

    return Hops(
        n=n, snapshot_bytes=c["size"], command_bytes=command_bytes, result_bytes=result_bytes,
        hop1=diff(d["received"], c["sent"]), hop2=diff(a["received"], d["sent"]),
        hop3=diff(d["answered"], a["sent"]), end_to_end=diff(d["answered"], c["sent"]),
        codec1=add(c["encode"], d["decode_snapshot"]), codec2=add(d["encode_command"], a["decode"]),
        codec3=add(a["encode"], d["decode_result"]), late_sends=sum(d["retries"][w]),
    )


# ---- the table -------------------------------------------------------------------------------------------------


def median_us(samples: list[int]) -> float:
    return statistics.median(samples) / 1000


def p99_us(samples: list[int]) -> float:
    return statistics.quantiles(samples, n=100, method="inclusive")[98] / 1000


def print_table(results: list[Hops], rounds: int, pause_ms: float) -> None:
    print(f"Latency in us over {rounds} rounds per size ({WARMUP} warm-up rounds not counted), "
          f"{pause_ms:g} ms pause between rounds")
    print(f"{'N':>5} {'snapshot B':>10} {'command B':>9} {'result B':>8}  "
          f"{'hop 1 med':>9} {'p99':>7}  {'hop 2 med':>9} {'p99':>7}  {'hop 3 med':>9} {'p99':>7}  "
          f"{'e2e med':>8} {'p99':>7}")
    for h in results:
        cols = "  ".join(f"{median_us(s):>9.1f} {p99_us(s):>7.1f}" for s in (h.hop1, h.hop2, h.hop3))
        print(f"{h.n:>5} {h.snapshot_bytes:>10} {h.command_bytes:>9} {h.result_bytes:>8}  {cols}  "
              f"{median_us(h.end_to_end):>8.1f} {p99_us(h.end_to_end):>7.1f}")
    print()
    print("Of which encode (sender) + decode (receiver), median us; the rest is sockets and waking up")
    print(f"{'N':>5}  {'hop 1':>9}  {'hop 2':>9}  {'hop 3':>9}  {'late command sends':>18}")
    for h in results:
        print(f"{h.n:>5}  {median_us(h.codec1):>9.1f}  {median_us(h.codec2):>9.1f}  {median_us(h.codec3):>9.1f}  "
              f"{h.late_sends:>18}")


def print_load() -> None:
    # Other work on the host shows in latencies (and in caches) though not in this process's CPU time.
    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs at start\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--sizes", default="10,100,1000", help="cgroups per snapshot, comma-separated")
    parser.add_argument("--pause-ms", type=float, default=5.0, help="between the end of a round and the next")
    args = parser.parse_args()
    print_load()
    results = [run_size(int(n), args.rounds, args.pause_ms / 1000) for n in args.sizes.split(",") if n]
    print_table(results, args.rounds, args.pause_ms)


if __name__ == "__main__":
    main()
