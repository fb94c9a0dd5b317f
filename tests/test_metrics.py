"""Prometheus metrics, as a textfile and over HTTP on loopback, following a real kill."""

from __future__ import annotations

import re
import signal
import socket
import urllib.request

import pytest

from supervisor.metrics import parse_listen
from tests.daemon import Daemon
from tests.realhost import wait_for
from tests.test_e2e_kill import policy_for, start_workloads


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def value(text: str, metric: str, **labels: str) -> float | None:
    pattern = re.escape(metric) + r"\{([^}]*)\} (\S+)"
    for m in re.finditer(pattern, text):
        have = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
        if all(have.get(k) == v for k, v in labels.items()):
            return float(m.group(2))
    m = re.search(rf"^{re.escape(metric)} (\S+)$", text, re.M) if not labels else None
    return float(m.group(1)) if m else None


@pytest.mark.real
def test_metrics_follow_a_real_kill_in_the_textfile_and_over_http(cgroups, tmp_path):
    port = free_port()
    textfile = tmp_path / "textfile" / "pyoomd.prom"
    thrasher, sleeper = start_workloads(cgroups)
    daemon = Daemon(tmp_path, policy_for(cgroups.path), "--bus", "none", "--metrics-textfile", str(textfile),
                    "--metrics-listen", f"127.0.0.1:{port}").start()
    try:
        thrasher.wait(timeout=90)
        assert thrasher.returncode == -signal.SIGKILL

        def scraped() -> str | None:
            text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
            return text if value(text, "pyoomd_cgroup_memory_pressure_avg10", cgroup=f"{cgroups.path}/thrasher",
                                 kind="full") is not None and value(text, "pyoomd_actions_total",
                                                                    result="killed") else None

        http = wait_for(scraped, 40, "the kill and the figures over HTTP")
        assert value(http, "pyoomd_actions_total", ruleset="test thrash", action="kill_by_memory_size_or_growth",
                     result="killed") == 1
        assert value(http, "pyoomd_ruleset_fired_total", ruleset="test thrash") >= 1
        assert value(http, "pyoomd_worker_up", worker="collector") == 1
        assert value(http, "pyoomd_worker_restarts_total", worker="detector") == 0
        assert value(http, "pyoomd_info", version="0.1.0", layout="hybrid") == 1
        assert value(http, "pyoomd_tick_read_seconds") > 0
        text = wait_for(lambda: textfile.exists() and value(textfile.read_text(), "pyoomd_actions_total",
                                                            result="killed") and textfile.read_text(), 40,
                        "the textfile with the kill")
        assert value(text, "pyoomd_actions_total", result="killed") == 1
        assert sleeper.poll() is None
    finally:
        assert daemon.stop() == 0


def test_metrics_listen_only_on_loopback():
    assert parse_listen("127.0.0.1:9466") == ("127.0.0.1", 9466)
    assert parse_listen("[::1]:9466") == ("::1", 9466)
    for bad in ("0.0.0.0:9466", "192.168.1.2:9466", "localhost:9466", "127.0.0.1:0", "127.0.0.1"):
        with pytest.raises(ValueError, match="--metrics-listen"):
            parse_listen(bad)
