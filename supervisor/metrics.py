"""Prometheus metrics: as a node_exporter textfile (`--metrics-textfile`) and, when asked, over HTTP
(`--metrics-listen 127.0.0.1:PORT`), with prometheus_client.

The supervisor's loop publishes an immutable MetricsView (from its own records and the figures the detector
sends every few seconds); the exporter reads only that, so the HTTP server's thread never touches the loop's
state. Everything comes from the same records the log, actions.jsonl and D-Bus show.
"""

from __future__ import annotations

import ipaddress
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import CollectorRegistry

log = logging.getLogger("pyoomd.supervisor")

TEXTFILE_INTERVAL = 15.0  # seconds between textfile writes (node_exporter reads it at its own pace)


@dataclass(frozen=True)
class CgroupFigure:
    path: str
    some_avg10: float | None
    full_avg10: float | None
    usage: int | None


@dataclass(frozen=True)
class MetricsView:
    version: str
    layout: str
    policy_generation: int
    dry_run: bool
    fired: dict[str, int] = field(default_factory=dict)  # ruleset -> times it began to fire
    actions: dict[tuple[str, str, str], int] = field(default_factory=dict)  # (ruleset, action, result) -> count
    workers: tuple[tuple[str, bool, int], ...] = ()  # name, running, restarts
    cgroups: tuple[CgroupFigure, ...] = ()
    read_seconds: float | None = None  # the collector's last tick
    evaluate_seconds: float | None = None  # the detector's last evaluation


class _Exporter:
    def __init__(self) -> None:
        self.view: MetricsView | None = None

    def collect(self) -> Iterator[Metric]:
        v = self.view
        if v is None:
            return
        info = GaugeMetricFamily("pyoomd_info", "pyoomd's version and the host's cgroup layout",
                                 labels=["version", "layout"])
        info.add_metric([v.version, v.layout], 1)
        yield info
        yield GaugeMetricFamily("pyoomd_policy_generation", "the policy generation in force",
                                value=v.policy_generation)
        yield GaugeMetricFamily("pyoomd_dry_run", "1 while pyoomd only records what it would do",
                                value=int(v.dry_run))
        fired = CounterMetricFamily("pyoomd_ruleset_fired", "times a ruleset began to fire", labels=["ruleset"])
        for ruleset, n in sorted(v.fired.items()):
            fired.add_metric([ruleset], n)
        yield fired
        actions = CounterMetricFamily("pyoomd_actions", "action records (killed, dry-run, no-target, failed, ...)",
                                      labels=["ruleset", "action", "result"])
        for (ruleset, action, result), n in sorted(v.actions.items()):
            actions.add_metric([ruleset, action, result], n)
        yield actions
        up = GaugeMetricFamily("pyoomd_worker_up", "1 while the worker runs", labels=["worker"])
        restarts = CounterMetricFamily("pyoomd_worker_restarts", "times the worker was replaced", labels=["worker"])
        for name, running, n in v.workers:
            up.add_metric([name], int(running))
            restarts.add_metric([name], n)
        yield up
        yield restarts
        pressure = GaugeMetricFamily("pyoomd_cgroup_memory_pressure_avg10",
                                     "a watched cgroup's own memory PSI, 10 s average, percent",
                                     labels=["cgroup", "kind"])
        memory = GaugeMetricFamily("pyoomd_cgroup_memory_bytes", "a watched cgroup's memory usage",
                                   labels=["cgroup"])
        for cg in v.cgroups:
            if cg.some_avg10 is not None:
                pressure.add_metric([cg.path, "some"], cg.some_avg10)
            if cg.full_avg10 is not None:
                pressure.add_metric([cg.path, "full"], cg.full_avg10)
            if cg.usage is not None:
                memory.add_metric([cg.path], cg.usage)
        yield pressure
        yield memory
        if v.read_seconds is not None:
            yield GaugeMetricFamily("pyoomd_tick_read_seconds", "how long the collector's last tick took",
                                    value=v.read_seconds)
        if v.evaluate_seconds is not None:
            yield GaugeMetricFamily("pyoomd_tick_evaluate_seconds", "how long the detector's last evaluation took",
                                    value=v.evaluate_seconds)


def parse_listen(value: str) -> tuple[str, int]:
    """ADDRESS:PORT. Loopback only: the metrics name the host's cgroups, which are nobody else's business."""
    host, _, port = value.rpartition(":")
    host = host.strip("[]")
    try:
        address = ipaddress.ip_address(host)
        number = int(port)
    except ValueError:
        raise ValueError(f"--metrics-listen {value!r}: expected ADDRESS:PORT, e.g. 127.0.0.1:9466") from None
    if not address.is_loopback:
        raise ValueError(f"--metrics-listen {value!r}: only a loopback address (127.0.0.1, ::1); a scraper on "
                         "another host reaches it through node_exporter's textfile instead")
    if not 0 < number < 65536:
        raise ValueError(f"--metrics-listen {value!r}: port {number} out of range")
    return str(address), number


class Metrics:
    def __init__(self, textfile: Path | None, listen: str | None) -> None:
        self.textfile = textfile
        self.listen = parse_listen(listen) if listen else None
        self.registry = CollectorRegistry(auto_describe=False)
        self.exporter = _Exporter()
        self.registry.register(self.exporter)
        self.next_write = 0.0
        self._server = None

    def start(self) -> None:
        if self.listen is not None:
            from prometheus_client import start_http_server

            try:
                self._server, _ = start_http_server(self.listen[1], addr=self.listen[0], registry=self.registry)
                log.info("metrics at http://%s:%d/metrics", *self.listen)
            except OSError as e:  # a port taken: the daemon protects the host without it
                log.error("cannot serve metrics on %s:%d: %s", *self.listen, e.strerror)

    def update(self, view: MetricsView, now: float) -> float:
        """Take the newest view; write the textfile when due. Returns when to call again."""
        self.exporter.view = view
        if self.textfile is None:
            return now + 3600
        if now >= self.next_write:
            self.next_write = now + TEXTFILE_INTERVAL
            try:
                self._write_textfile()
            except OSError as e:
                log.error("cannot write the metrics to %s: %s", self.textfile, e.strerror)
        return self.next_write

    def _write_textfile(self) -> None:
        """Whole or not at all (a new file renamed over the old), and readable by node_exporter, which runs as a
        user of its own: 0644 whatever the daemon's umask (the unit's is 0077)."""
        from prometheus_client import generate_latest

        assert self.textfile is not None
        self.textfile.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.textfile.with_name(f".{self.textfile.name}.{os.getpid()}")
        # Not ending in .prom: node_exporter never reads the file half-written.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            with os.fdopen(fd, "wb") as f:
                os.fchmod(f.fileno(), 0o644)
                f.write(generate_latest(self.registry))
            os.replace(tmp, self.textfile)
        except OSError:
            tmp.unlink(missing_ok=True)
            raise

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
