"""The wire: typed messages, unknown fields rejected, malformed frames dropped and counted, never a crash."""

from __future__ import annotations

import logging

import msgspec
import pytest
import zmq

from cgroupfs.stats import HostStats
from ipc.codec import Channel
from ipc.endpoints import Endpoints, snapshot_receiver, snapshot_sender
from ipc.messages import AnyMessage, ControlMessage, Heartbeat, Hello, Snapshot


def test_round_trip_of_every_channel_type():
    ch = Channel("test", AnyMessage)
    snap = Snapshot(seq=1, generation=2, time=3.0, monotonic=4.0,
                    host=HostStats(mem_total=1, mem_available=1, swap_total=0, swap_free=0), cgroups=[])
    for msg in (Hello(worker="collector", pid=1, build="b"), Heartbeat(worker="detector", dropped_frames=3), snap):
        assert ch.decode(ch.encode(msg)) == msg
    assert ch.dropped == 0


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        (b"\xc1garbage", "MessagePack data is malformed"),
        (msgspec.msgpack.encode({"kind": "hello", "worker": "collector", "pid": 1, "build": "b", "extra": 1}),
         "Object contains unknown field `extra`"),
        (msgspec.msgpack.encode({"kind": "hello", "worker": "intruder", "pid": 1, "build": "b"}),
         "Invalid enum value 'intruder'"),
        (msgspec.msgpack.encode({"kind": "hello", "worker": "collector", "pid": "1", "build": "b"}),
         "Expected `int`, got `str` - at `$.pid`"),
        (msgspec.msgpack.encode({"kind": "nope"}), "Invalid value 'nope' - at `$.kind`"),
        (b"", "Input data was truncated"),
    ],
)
def test_malformed_frame_is_dropped_counted_and_logged_with_reason(frame, reason, caplog):
    ch = Channel("control", ControlMessage)
    with caplog.at_level(logging.WARNING, logger="pyoomd.ipc"):
        assert ch.decode(frame) is None
    assert ch.dropped == 1
    assert reason in caplog.text


def test_same_reason_is_logged_once_but_counted_every_time(caplog):
    ch = Channel("control", ControlMessage)
    with caplog.at_level(logging.WARNING, logger="pyoomd.ipc"):
        for _ in range(5):
            ch.decode(b"\xc1")
    assert ch.dropped == 5
    assert caplog.text.count("dropped a malformed frame") == 1


def test_snapshot_channel_keeps_only_the_newest(tmp_path):
    ctx = zmq.Context()
    try:
        ep = Endpoints(tmp_path)
        ep.prepare()
        rx = snapshot_receiver(ctx, ep)
        tx = snapshot_sender(ctx, ep)
        for i in range(10):
            tx.send(str(i).encode())
        assert rx.poll(5000)
        frames = []
        while rx.poll(200):
            frames.append(rx.recv())
        assert frames[-1] == b"9"
        assert len(frames) <= 2  # conflated: at most one in each end's queue
    finally:
        ctx.destroy(linger=0)


@pytest.mark.parametrize("admitted", [True, False])
def test_zap_admits_the_supervisor_and_its_children_only(tmp_path, admitted):
    """This process plays the peer: admitted as "the supervisor", refused when the supervisor is PID 1."""
    import os

    from ipc.zap import ZapHandler

    ctx = zmq.Context()
    try:
        zap = ZapHandler(ctx, supervisor_pid=os.getpid() if admitted else 1)
        ep = Endpoints(tmp_path)
        ep.prepare()
        rx = snapshot_receiver(ctx, ep)
        assert oct((tmp_path / "ipc" / "snapshots.sock").stat().st_mode & 0o777) == "0o660"
        tx = snapshot_sender(ctx, ep)
        tx.send(b"hello")
        got = None
        for _ in range(50):
            if zap.socket.poll(100):
                zap.handle()
            if rx.poll(0):
                got = rx.recv()
                break
        assert (got == b"hello") is admitted
        assert (zap.refused == 0) is admitted
    finally:
        ctx.destroy(linger=0)
