"""pyoomd's decisions graphed in a real Prometheus: it scrapes pyoomd's HTTP endpoint and node_exporter's textfile
collector (pyoomd's textfile), evaluates the shipped alert rules, and answers the queries an operator graphs,
while pyoomd kills a real thrasher. Prometheus and node_exporter are Debian's builds, unpacked by `make test`."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemon import Daemon
from tests.realhost import wait_for
from tests.test_e2e_kill import policy_for, start_workloads

REPO = Path(__file__).resolve().parent.parent
TOOLS = REPO / ".cache" / "tools" / "usr" / "bin"
RULES = REPO / "examples" / "prometheus" / "pyoomd-rules.yml"


def tool(name: str) -> str:
    path = TOOLS / name
    if not path.exists():
        message = f"{path} missing: `make test-tools` unpacks Debian's prometheus and prometheus-node-exporter"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return str(path)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Prometheus:
    def __init__(self, work: Path, pyoomd_port: int, node_port: int) -> None:
        self.port = free_port()
        shutil.copy(RULES, work / RULES.name)
        config = work / "prometheus.yml"
        # The shipped example, with the test's ports and a fast scrape and evaluation.
        text = (REPO / "examples" / "prometheus" / "prometheus.yml").read_text()
        text = text.replace("scrape_interval: 15s", "scrape_interval: 1s\n  evaluation_interval: 1s")
        text = text.replace("127.0.0.1:9466", f"127.0.0.1:{pyoomd_port}").replace("127.0.0.1:9100",
                                                                                 f"127.0.0.1:{node_port}")
        config.write_text(text)
        self.log = work / "prometheus.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [tool("prometheus"), f"--config.file={config}", f"--storage.tsdb.path={work / 'tsdb'}",
                 f"--web.listen-address=127.0.0.1:{self.port}"], stdin=subprocess.DEVNULL, stdout=log, stderr=log)

    def api(self, path: str, **params: str) -> dict:
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=5) as r:
            answer = json.load(r)
        assert answer["status"] == "success", answer
        return answer["data"]

    def query(self, expr: str) -> list[dict]:
        try:
            return self.api("query", query=expr)["result"]
        except OSError:
            return []  # not listening yet

    def stop(self) -> None:
        self.proc.terminate()  # our own child, by PID
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


NODE_EXPORTER_USER = 65534  # node_exporter runs as a user of its own (Debian's: prometheus), never as root
UNIT_UMASK = ["sh", "-c", 'umask 077 && exec "$@"', "sh"]  # the daemon as the unit runs it (UMask=0077)


@pytest.fixture
def monitoring(tmp_path) -> Iterator[tuple[Prometheus, int, Path]]:
    """A node_exporter with only its textfile collector, and a Prometheus scraping it and pyoomd's port."""
    textfiles = Path(tempfile.mkdtemp(prefix="pyoomd-textfile-", dir="/tmp"))  # where node_exporter can look
    textfiles.chmod(0o755)
    node_port, pyoomd_port = free_port(), free_port()

    def unprivileged() -> None:
        os.setgroups([])
        os.setresgid(NODE_EXPORTER_USER, NODE_EXPORTER_USER, NODE_EXPORTER_USER)
        os.setresuid(NODE_EXPORTER_USER, NODE_EXPORTER_USER, NODE_EXPORTER_USER)

    node = subprocess.Popen([tool("prometheus-node-exporter"), f"--web.listen-address=127.0.0.1:{node_port}",
                             "--collector.disable-defaults", "--collector.textfile",
                             f"--collector.textfile.directory={textfiles}"], preexec_fn=unprivileged,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    prometheus = Prometheus(tmp_path, pyoomd_port, node_port)
    try:
        yield prometheus, pyoomd_port, textfiles / "pyoomd.prom"
    finally:
        prometheus.stop()
        node.terminate()
        node.wait(timeout=20)
        shutil.rmtree(textfiles, ignore_errors=True)


def by_job(results: list[dict]) -> dict[str, float]:
    return {r["metric"]["job"]: float(r["value"][1]) for r in results}


@pytest.mark.real
def test_prometheus_graphs_a_real_kill_from_the_endpoint_and_the_textfile_and_alerts_on_it(cgroups, tmp_path,
                                                                                             monitoring):
    prometheus, port, textfile = monitoring
    cgroups.mkdir("thrasher", memory_limit=64 << 20)
    cgroups.mkdir("sleeper")
    sleeper = cgroups.sleeper("sleeper")
    daemon = Daemon(tmp_path, policy_for(cgroups.path), "--bus", "none", "--metrics-textfile", str(textfile),
                    "--metrics-listen", f"127.0.0.1:{port}").start(wrapper=UNIT_UMASK)
    try:
        # As on a host where pyoomd has run for a while: Prometheus has its counters, at 0, before the kill.
        killed = 'pyoomd_actions_total{ruleset="test thrash",action="kill_by_memory_size_or_growth",result="killed"}'
        assert wait_for(lambda: (lambda c: c if set(c) == {"pyoomd", "node"} else None)(
            by_job(prometheus.query(killed))), 60, "the counters in Prometheus from both jobs") == {"pyoomd": 0.0,
                                                                                                "node": 0.0}
        thrasher = cgroups.thrasher("thrasher")
        thrasher.wait(timeout=90)
        assert thrasher.returncode == -signal.SIGKILL
        # The kill, counted once, whichever way Prometheus got it: straight from pyoomd, or through node_exporter.
        counts = wait_for(lambda: (lambda c: c if set(c) == {"pyoomd", "node"} and min(c.values()) > 0 else None)(
            by_job(prometheus.query(killed))), 60, "the kill in Prometheus from both jobs")
        assert counts == {"pyoomd": 1.0, "node": 1.0}
        # What an operator graphs: the thrasher's pressure over time, a series with points before the kill.
        end = float(prometheus.api("query", query="time()")["result"][1])
        series = prometheus.api("query_range", start=str(end - 120), end=str(end), step="1",
                                query=f'pyoomd_cgroup_memory_pressure_avg10{{job="pyoomd",kind="full",'
                                      f'cgroup="{cgroups.path}/thrasher"}}')["result"]
        assert len(series) == 1 and len(series[0]["values"]) >= 3, series
        assert max(float(v) for _, v in series[0]["values"]) > 0, "pressure never rose in the graph"
        # The shipped rules: the recording rule has the kill, and the kill alert fires (no `for:`).
        recorded = wait_for(lambda: prometheus.query(
            f'pyoomd:actions:increase1h{{result="killed",instance="127.0.0.1:{port}"}} > 0'), 30, "the recording rule")
        assert float(recorded[0]["value"][1]) > 0
        firing = wait_for(lambda: [a for a in prometheus.api("alerts")["alerts"]
                                   if a["labels"]["alertname"] == "PyoomdKilled" and a["state"] == "firing"],
                          30, "PyoomdKilled firing")
        assert {a["labels"]["ruleset"] for a in firing} == {"test thrash"}
        assert not [a for a in prometheus.api("alerts")["alerts"] if a["labels"]["alertname"] != "PyoomdKilled"]
        # Both targets healthy all along: nothing pyoomd exports is refused by Prometheus's parser.
        targets = prometheus.api("targets")["activeTargets"]
        assert {t["labels"]["job"]: t["health"] for t in targets} == {"pyoomd": "up", "node": "up"}, targets
        assert sleeper.poll() is None
    finally:
        assert daemon.stop() == 0


def test_the_shipped_prometheus_files_pass_promtool(tmp_path):
    shutil.copy(RULES, tmp_path / RULES.name)
    shutil.copy(REPO / "examples" / "prometheus" / "prometheus.yml", tmp_path / "prometheus.yml")
    for args in (["check", "rules", str(tmp_path / RULES.name)], ["check", "config", str(tmp_path / "prometheus.yml")]):
        done = subprocess.run([tool("promtool"), *args], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.real
def test_promtool_finds_nothing_to_fix_in_the_metrics(cgroups, tmp_path):
    """Prometheus's own linter on what pyoomd exports (names, types, help, units)."""
    port = free_port()
    start_workloads(cgroups)
    daemon = Daemon(tmp_path, policy_for(cgroups.path), "--bus", "none", "--metrics-listen", f"127.0.0.1:{port}")
    daemon.start()
    try:
        def scraped() -> str | None:
            try:
                text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
            except OSError:
                return None
            return text if "pyoomd_cgroup_memory_bytes{" in text else None

        text = wait_for(scraped, 40, "the metrics")
        lint = subprocess.run([tool("promtool"), "check", "metrics"], input=text, capture_output=True, text=True,
                              timeout=60)
        assert lint.returncode == 0 and not lint.stdout.strip() and not lint.stderr.strip(), lint.stdout + lint.stderr
    finally:
        assert daemon.stop() == 0
