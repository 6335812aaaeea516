"""A service-discovery scheme of your own: a Consul resolver, registered by name.

    python examples/custom_resolver.py

``consul://127.0.0.1:8500/echo`` asks Consul's health API for the passing instances of
service ``echo`` with *blocking queries* (``?index=N&wait=...`` returns as soon as the
list changes), and pushes each list to the channel as a whole snapshot. The example starts
a tiny fake of that one Consul endpoint (``/v1/health/service/<name>``) so it runs
anywhere; point the target at a real agent and the same resolver works.

What a resolver must do (see ``lbclient.Resolver``): ``start()`` once, then deliver whole
snapshots (``listener.on_resolved(ResolverState(...))``) or errors
(``listener.on_resolver_error(exc)``: the channel keeps its last good endpoints) from any
thread; treat ``resolve_now()`` as a hint; ``close()`` stops everything and is idempotent.
A resolver never touches the balancer or the channel.
"""

from __future__ import annotations

import collections
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import lbclient
from lbclient.testing import Fleet, echo_pb2, echo_pb2_grpc


class ConsulResolver(lbclient.Resolver):
    """``consul://agent-host:port/service``: passing instances, weights from
    ``Service.Weights.Passing``, ``Service.Meta`` as endpoint attributes."""

    def __init__(self, target: lbclient.Target, listener: lbclient.ResolverListener,
                 options: Mapping[str, Any]) -> None:
        super().__init__(target, listener, options)
        self.url = f"http://{target.authority}/v1/health/service/{target.endpoint}"
        self.wait = float(options.get("wait", 5.0))      # blocking-query wait, seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="consul-resolver",
                                        daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(self.wait + 2)             # bounded by one blocking query

    def _run(self) -> None:
        index, backoff = "0", 0.1
        while not self._stop.is_set():
            url = f"{self.url}?passing=true&index={index}&wait={self.wait:g}s"
            try:
                with urllib.request.urlopen(url, timeout=self.wait + 5) as resp:
                    entries = json.load(resp)
                    index = resp.headers.get("X-Consul-Index", "0")
            except (OSError, ValueError) as exc:         # agent down, bad JSON...
                self.listener.on_resolver_error(lbclient.ResolverError(f"consul: {exc}"))
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            backoff = 0.1
            if not self._stop.is_set():
                self.listener.on_resolved(lbclient.ResolverState(
                    endpoints=tuple(_endpoint(e["Service"]) for e in entries),
                    authoritative=True))                 # an empty list is real


def _endpoint(service: Mapping[str, Any]) -> lbclient.Endpoint:
    weight = int(service.get("Weights", {}).get("Passing", 1)) or 1
    return lbclient.Endpoint(f"{service['Address']}:{service['Port']}", weight,
                             service.get("Meta") or {})


def _validate(target: lbclient.Target) -> None:
    if not target.authority or not target.endpoint:
        raise lbclient.InvalidTargetError(
            f"target {target.raw!r}: expected consul://agent-host:port/service")


lbclient.register_resolver("consul", ConsulResolver, validate=_validate)


# ------------------------------------------------------------ a fake Consul agent
class FakeConsul:
    """Serves ``GET /v1/health/service/<name>`` with Consul's blocking-query semantics."""

    def __init__(self) -> None:
        self.services: dict[str, dict[str, dict[str, Any]]] = collections.defaultdict(dict)
        self.index = 1
        self.changed = threading.Condition()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                path, _, query = self.path.partition("?")
                params = dict(p.split("=", 1) for p in query.split("&") if "=" in p)
                name = path.rsplit("/", 1)[-1]
                wait = float(params.get("wait", "5s").rstrip("s"))
                with fake.changed:
                    fake.changed.wait_for(lambda: fake.index > int(params.get("index", 0)),
                                          timeout=wait)
                    body = json.dumps([{"Service": s} for s in fake.services[name].values()])
                    index = fake.index
                self.send_response(200)
                self.send_header("X-Consul-Index", str(index))
                self.end_headers()
                self.wfile.write(body.encode())

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.address = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def register(self, name: str, address: str, weight: int = 1) -> None:
        host, port = address.rsplit(":", 1)
        with self.changed:
            self.services[name][address] = {"Service": name, "Address": host,
                                            "Port": int(port), "Weights": {"Passing": weight},
                                            "Meta": {"version": "1.2"}}
            self.index += 1
            self.changed.notify_all()

    def deregister(self, name: str, address: str) -> None:
        with self.changed:
            self.services[name].pop(address, None)
            self.index += 1
            self.changed.notify_all()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def main() -> None:
    with Fleet(3) as fleet:
        consul = FakeConsul()
        try:
            a, b, c = fleet.addresses
            consul.register("echo", a)
            consul.register("echo", b)
            with lbclient.insecure_channel(f"consul://{consul.address}/echo",
                                           resolver_options={"wait": 1.0}) as channel:
                stub = echo_pb2_grpc.EchoStub(channel)

                def spread(n: int = 60) -> dict[str, int]:
                    req = echo_pb2.EchoRequest(message="hi")
                    return dict(collections.Counter(
                        stub.Unary(req, timeout=5, wait_for_ready=True).address
                        for _ in range(n)))

                def wait_for(want: set[str]) -> None:
                    deadline = time.monotonic() + 10
                    while {e.address for e in channel.endpoints()} != want:
                        if time.monotonic() > deadline:
                            raise SystemExit(f"discovery did not reach {sorted(want)}")
                        time.sleep(0.01)
                    while not all(e.connectivity == "READY" for e in channel.endpoints()):
                        if time.monotonic() > deadline:
                            raise SystemExit("endpoints did not connect")
                        time.sleep(0.01)

                wait_for({a, b})
                print("two instances in Consul:   ", spread())
                consul.register("echo", c, weight=2)
                wait_for({a, b, c})
                print("a third one registered:    ", spread())
                print("  its attributes:", {e.address: (e.weight, e.attributes)
                                            for e in channel.endpoints()}[c])
                consul.deregister("echo", a)
                wait_for({b, c})
                print("the first one deregistered:", spread())
        finally:
            consul.close()


if __name__ == "__main__":
    main()
