"""A real Prometheus scraping lbclient's exporter, and the shipped Grafana dashboard.

The ``prometheus`` fixture starts Debian's ``prometheus`` binary (``./scripts/test.sh``
installs it) on a free port, with its own storage directory and a generated config that
scrapes the exporter every second. A real channel sends traffic to ``Fleet(3)``; PromQL
over Prometheus' HTTP API must then return one picks series and one errors series per
endpoint address, with the channel's own counts. Polling is driven by the scrapes: a
collector in the exporter's registry notes every scrape, and Prometheus is asked again
only after a new one (bounded).

``examples/grafana/lbclient.json``: every PromQL expression in it runs on that Prometheus
(which parses it; most return data), and every metric name it references is one the
exporter really emits (names read from a live scrape, not from a list here).
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from helpers import wait_ready
from prometheus_client import CollectorRegistry
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

import lbclient
import lbclient.metrics.prometheus as lbprom
from lbclient.metrics import ChannelMetrics
from lbclient.testing import Fleet, echo_pb2, echo_pb2_grpc

ROOT = pathlib.Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "examples" / "grafana" / "lbclient.json"
CALLS = 90
ERROR_RATES = (0.2, 0.4, 0.6)         # every endpoint fails some calls: an error series each


def prometheus_binary() -> str:
    found = shutil.which("prometheus") or (
        "/usr/bin/prometheus" if os.access("/usr/bin/prometheus", os.X_OK) else None)
    if found is None:
        pytest.fail("the prometheus binary is not installed: `sudo apt-get install "
                    "prometheus` (./scripts/test.sh installs it when missing)")
    return found


class ScrapeWatch(Collector):
    """Counts the exporter's scrapes (``collect`` runs once per scrape)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.scrapes = 0

    def describe(self) -> Iterator[Metric]:
        return iter(())

    def collect(self) -> Iterator[Metric]:
        with self._cond:
            self.scrapes += 1
            self._cond.notify_all()
        return iter(())

    def wait_beyond(self, seen: int, timeout: float) -> int:
        """Wait (bounded) for a scrape after the ``seen``-th; returns the new count."""
        with self._cond:
            self._cond.wait_for(lambda: self.scrapes > seen, timeout)
            return self.scrapes


@dataclass
class Exporter:
    registry: CollectorRegistry
    watch: ScrapeWatch
    port: int

    def scrape(self) -> str:
        url = f"http://127.0.0.1:{self.port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            return str(response.read().decode())


@dataclass
class Prometheus:
    url: str
    log: list[str]

    def api(self, path: str, **params: str) -> Any:
        query = urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(f"{self.url}{path}?{query}", timeout=10) as response:
                body = json.loads(response.read())
        except urllib.error.HTTPError as exc:        # 400 bad_data: a PromQL error
            body = json.loads(exc.read())
        return body

    def query(self, expr: str) -> list[dict[str, Any]]:
        body = self.api("/api/v1/query", query=expr)
        assert body["status"] == "success", (expr, body)
        return list(body["data"]["result"])

    def targets(self) -> str:
        return json.dumps(self.api("/api/v1/targets")["data"]["activeTargets"])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def exporter() -> Iterator[Exporter]:
    registry = CollectorRegistry()
    watch = ScrapeWatch()
    registry.register(watch)
    server = lbprom.serve(0, registry=registry)      # lbclient's exporter, any free port
    yield Exporter(registry, watch, int(server.server_port))
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def prometheus(exporter: Exporter,
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    binary = prometheus_binary()
    home = tmp_path_factory.mktemp("prometheus")
    config = home / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
        "scrape_configs:\n  - job_name: lbclient\n    static_configs:\n"
        f"      - targets: ['127.0.0.1:{exporter.port}']\n")
    for _attempt in range(3):              # the free port may be taken before it binds
        port = _free_port()
        log: list[str] = []
        ready = threading.Event()
        proc = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={home / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}", "--storage.tsdb.retention.time=1h"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=str(home))

        def read(proc: subprocess.Popen[str] = proc, log: list[str] = log,
                 ready: threading.Event = ready) -> None:
            assert proc.stderr is not None
            for line in proc.stderr:
                log.append(line.rstrip())
                if "Server is ready to receive web requests" in line:
                    ready.set()
            ready.set()                   # exited: wake the waiter

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        ready.wait(30)
        if proc.poll() is None and any("ready to receive" in line for line in log):
            break
        proc.kill()
        proc.wait(10)
        reader.join(5)
        if not any("address already in use" in line for line in log):
            pytest.fail("prometheus did not start:\n" + "\n".join(log[-30:]))
    else:
        pytest.fail("prometheus found no free port:\n" + "\n".join(log[-10:]))
    try:
        yield Prometheus(f"http://127.0.0.1:{port}", log)
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        reader.join(5)
        shutil.rmtree(home, ignore_errors=True)


@dataclass
class Traffic:
    fleet: Fleet
    channel: lbclient.LoadBalancedChannel
    metrics: ChannelMetrics
    failed: int


@pytest.fixture(scope="module")
def traffic(exporter: Exporter) -> Iterator[Traffic]:
    """A real channel (round robin, health checks) with CALLS calls to Fleet(3), each
    backend failing some of them; kept open so that its series stay."""
    with Fleet(3, seed=11) as fleet:
        for backend, rate in zip(fleet, ERROR_RATES, strict=True):
            backend.set_error_rate(rate)
        config = {"loadBalancingConfig": [{"round_robin": {}}],
                  "healthCheckConfig": {"serviceName": ""}}
        with lbclient.insecure_channel(fleet.target, service_config=config) as channel:
            metrics = lbprom.enable(channel, exporter.registry)
            wait_ready(channel, 3)
            stub = echo_pb2_grpc.EchoStub(channel)
            failed = 0
            for i in range(CALLS):
                try:
                    stub.Unary(echo_pb2.EchoRequest(message=str(i)), timeout=5)
                except grpc.RpcError:
                    failed += 1
            yield Traffic(fleet, channel, metrics, failed)


def by_address(result: list[dict[str, Any]]) -> dict[str, float]:
    return {r["metric"]["address"]: float(r["value"][1]) for r in result}


def test_prometheus_scrapes_per_endpoint_picks_and_errors(
        exporter: Exporter, prometheus: Prometheus, traffic: Traffic) -> None:
    target = traffic.channel.target
    snap = traffic.metrics.snapshot()
    want_picks = {ep.address: float(ep.picks) for ep in snap.endpoints}
    want_errors = {ep.address: float(sum(n for code, n in ep.calls.items() if code != "OK"))
                   for ep in snap.endpoints}
    # The channel's counts are the backends' own: round robin, one attempt per call.
    assert want_picks == {b.address: float(b.calls) for b in traffic.fleet}
    assert sum(want_picks.values()) == CALLS
    assert sum(want_errors.values()) == traffic.failed
    assert all(n > 0 for n in want_errors.values()), want_errors

    picks_q = f'sum by (address) (lbclient_picks_total{{target="{target}"}})'
    errors_q = f'sum by (address) (lbclient_calls_total{{target="{target}", code!="OK"}})'
    seen = exporter.watch.scrapes
    deadline = time.monotonic() + 30
    picks: dict[str, float] = {}
    errors: dict[str, float] = {}
    while time.monotonic() < deadline:
        # Ask after each new scrape: the counts have stopped, so the first answer that
        # has them is final.
        seen = exporter.watch.wait_beyond(seen, max(0.0, deadline - time.monotonic()))
        picks = by_address(prometheus.query(picks_q))
        errors = by_address(prometheus.query(errors_q))
        if picks == want_picks and errors == want_errors:
            break
    assert picks == want_picks, (picks, want_picks, prometheus.targets())
    assert errors == want_errors, (errors, want_errors)
    print(f"\nPromQL {picks_q}\n  -> {picks}\nPromQL {errors_q}\n  -> {errors}")
    assert sorted(picks) == sorted(traffic.fleet.addresses)   # one series per endpoint
    # Scraped as a normal target: up, with the series under the job's labels.
    up = prometheus.query('up{job="lbclient"}')
    assert [float(r["value"][1]) for r in up] == [1.0], prometheus.targets()


# ------------------------------------------------------------------ Grafana dashboard
_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"' r"|'(?:[^'\\]|\\.)*'")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_WORD = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool",
             "offset", "and", "or", "unless", "inf", "nan", "Inf", "NaN"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: identifiers outside strings, label
    matchers, ranges and grouping clauses that are not function calls or keywords."""
    text = _STRINGS.sub('""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = _GROUPING.sub(" ", text)
    names = set()
    for m in _WORD.finditer(text):
        before = text[m.start() - 1] if m.start() else " "
        if before.isdigit() or before == ".":
            continue                                  # part of a number (1e3, 0.5)
        if re.match(r"\s*\(", text[m.end():]) or m.group() in _KEYWORDS:
            continue                                  # a function or an operator
        names.add(m.group())
    return names


def test_metric_names_reads_promql() -> None:
    assert metric_names('histogram_quantile(0.99, sum by (le, address) (rate('
                        'lbclient_call_latency_seconds_bucket{target=~"$t", a="b c"}[5m])))'
                        ) == {"lbclient_call_latency_seconds_bucket"}
    assert metric_names("a_total / on (x) group_left (y) b offset 5m > bool 1e3") == {
        "a_total", "b"}


def dashboard_queries() -> tuple[list[str], list[str]]:
    """(every panel target's PromQL expression, every template variable's query)."""
    board = json.loads(DASHBOARD.read_text())
    exprs: list[str] = []

    def walk(panels: list[dict[str, Any]]) -> None:
        for panel in panels:
            exprs.extend(t["expr"] for t in panel.get("targets", []) if t.get("expr"))
            walk(panel.get("panels", []))

    walk(board["panels"])
    variables = []
    for var in board["templating"]["list"]:
        if var["type"] == "query":
            q = var["query"]
            variables.append(q["query"] if isinstance(q, dict) else q)
    return exprs, variables


def grafana_to_promql(expr: str) -> str:
    """What Grafana sends for an expression, with the 'All' value of $target."""
    return expr.replace("$__rate_interval", "15s").replace("$target", ".*")


def test_dashboard_references_only_emitted_metrics(exporter: Exporter,
                                                   traffic: Traffic) -> None:
    emitted = {s.name for family in text_string_to_metric_families(exporter.scrape())
               for s in family.samples}
    assert "lbclient_picks_total" in emitted and "lbclient_endpoint_healthy" in emitted
    exprs, variables = dashboard_queries()
    assert len(exprs) >= 10, exprs
    referenced: set[str] = set()
    for expr in exprs:
        names = metric_names(expr)
        assert names, f"no metric name found in {expr!r}"
        referenced |= names
    for query in variables:
        m = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", query)
        assert m, query
        referenced.add(m.group(1))
    assert referenced <= emitted, sorted(referenced - emitted)
    # The panels are all there.
    for family in ("lbclient_picks_total", "lbclient_in_flight", "lbclient_calls_total",
                   "lbclient_call_latency_seconds_bucket", "lbclient_endpoint_events_total",
                   "lbclient_endpoint_ejected", "lbclient_resolver_updates_total"):
        assert family in referenced, family


def test_dashboard_queries_run_on_prometheus(exporter: Exporter, prometheus: Prometheus,
                                             traffic: Traffic) -> None:
    exprs, _ = dashboard_queries()
    # rate() and increase() need two samples of a series in the window: wait until the
    # exporter has been scraped three times (Prometheus' first scrape comes ~5 s after
    # it starts: it applies new targets every 5 s).
    while (seen := exporter.watch.scrapes) < 3:
        assert exporter.watch.wait_beyond(seen, 15) > seen, prometheus.targets()
    empty = []
    for expr in exprs:
        body = prometheus.api("/api/v1/query", query=grafana_to_promql(expr))
        assert body["status"] == "success", (expr, body.get("error"))
        if not body["data"]["result"]:
            empty.append(expr)
    # Every panel has data after the traffic; ejections need none: their panel reads
    # the ejected gauge, whose 0 series exist.
    assert not empty, empty
