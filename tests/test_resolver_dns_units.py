"""dns: target parsing, option validation, the re-resolution schedule (fake clock) and
gRFC A2 TXT choice selection. No network here; see test_resolver_dns.py for dnsmasq."""

from __future__ import annotations

import json
import random

import pytest

from lbclient import InvalidTargetError, ServiceConfigError
from lbclient.resolver import parse_target, validate_target
from lbclient.resolver._backoff import Backoff, ResolveSchedule
from lbclient.resolver._txt_config import choose_service_config
from lbclient.resolver.dns import DnsTarget, parse_dns_options, parse_dns_target


@pytest.mark.parametrize(("raw", "want"), [
    ("dns:///svc.test:50051", DnsTarget("svc.test", 50051, None, 53, False)),
    ("svc.test:50051", DnsTarget("svc.test", 50051, None, 53, False)),
    ("svc.test", DnsTarget("svc.test", 443, None, 53, False)),
    ("dns:svc.test:8080", DnsTarget("svc.test", 8080, None, 53, False)),
    ("dns://127.0.0.1:5353/svc.test:1", DnsTarget("svc.test", 1, "127.0.0.1", 5353, False)),
    ("dns://10.0.0.53/svc.test:1", DnsTarget("svc.test", 1, "10.0.0.53", 53, False)),
    ("dns://[::1]:53/svc.test:1", DnsTarget("svc.test", 1, "::1", 53, False)),
    ("dns:///10.1.2.3:7", DnsTarget("10.1.2.3", 7, None, 53, True)),
    ("dns:///[::1]:7", DnsTarget("::1", 7, None, 53, True)),
])
def test_targets(raw: str, want: DnsTarget) -> None:
    target = parse_target(raw)
    assert target.scheme == "dns"
    assert parse_dns_target(target) == want
    validate_target(target)


@pytest.mark.parametrize(("raw", "words"), [
    ("dns:///svc.test:0", "port"),
    ("dns:///svc.test:99999", "port"),
    ("dns:///svc.test:1/extra", "expected dns:///host:port"),
    ("dns:///", "expected dns:///host:port"),
    ("dns://ns.example.com/svc.test:1", "must be an IP address"),
    ("dns://127.0.0.1:x/svc.test:1", "port"),
    ("dns:///::1:80", "ambiguous"),
])
def test_bad_targets(raw: str, words: str) -> None:
    with pytest.raises(InvalidTargetError, match=words):
        validate_target(parse_target(raw))


def test_options_defaults_and_validation() -> None:
    opts = parse_dns_options({})
    assert (opts.refresh_interval, opts.min_resolve_interval) == (30.0, 30.0)
    assert opts.service_config is False and opts.timeout == 10.0
    assert parse_dns_options({"refresh_interval": 0.5, "min_resolve_interval": 0}
                             ).min_resolve_interval == 0.0
    for bad, path in [({"refresh_interval": 0}, "resolver_options.refresh_interval"),
                      ({"refresh_interval": "30s"}, "resolver_options.refresh_interval"),
                      ({"min_resolve_interval": -1}, "resolver_options.min_resolve_interval"),
                      ({"service_config": "yes"}, "resolver_options.service_config"),
                      ({"refresh": 1}, "resolver_options.refresh")]:
        with pytest.raises(ServiceConfigError) as info:
            parse_dns_options(bad)
        assert info.value.path == path, bad


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _schedule(clock: FakeClock, refresh: float = 30.0, min_interval: float = 30.0
              ) -> ResolveSchedule:
    return ResolveSchedule(refresh, min_interval, Backoff(1.0, refresh, jitter=0.0), clock)


def test_schedule_first_lookup_at_once_then_every_refresh() -> None:
    clock = FakeClock()
    s = _schedule(clock)
    assert s.seconds_until_due() == 0
    s.started()
    clock.now += 0.5
    s.finished(True)
    assert s.due_at() == 1030.0                 # refresh counts from the lookup's start
    clock.now = 1029.0
    assert s.seconds_until_due() == pytest.approx(1.0)


def test_resolve_now_is_rate_limited_by_min_interval() -> None:
    clock = FakeClock()
    s = _schedule(clock, refresh=100.0, min_interval=30.0)
    s.started()
    s.finished(True)
    clock.now += 5
    s.request_now()                             # a connection failed 5 s after the lookup
    assert s.due_at() == 1030.0                 # not before min_interval
    clock.now = 1030.0
    assert s.seconds_until_due() == 0
    s.started()
    s.finished(True)
    assert s.due_at() == 1130.0                 # request served: back to the refresh
    for _ in range(100):                        # a burst of hints: one lookup at most
        s.request_now()
    assert s.due_at() == 1060.0


def test_resolve_now_without_min_interval_is_immediate() -> None:
    clock = FakeClock()
    s = _schedule(clock, refresh=100.0, min_interval=0.0)
    s.started()
    s.finished(True)
    clock.now += 3
    s.request_now()
    assert s.seconds_until_due() == 0


def test_failures_back_off_exponentially_capped_at_refresh() -> None:
    clock = FakeClock()
    s = _schedule(clock, refresh=5.0, min_interval=0.0)
    delays = []
    for _ in range(6):
        clock.now = s.due_at()
        s.started()
        s.finished(False)
        delays.append(round(s.due_at() - clock.now, 3))
    assert delays == [1.0, 1.6, 2.56, 4.096, 5.0, 5.0]
    clock.now = s.due_at()
    s.started()
    s.finished(True)                            # success resets the backoff
    clock.now = s.due_at()
    s.started()
    s.finished(False)
    assert s.due_at() - clock.now == 1.0


def test_backoff_jitter_stays_within_bounds() -> None:
    b = Backoff(1.0, 10.0, jitter=0.2, rng=random.Random(7))
    values = [b.next() for _ in range(3)]
    assert 0.8 <= values[0] <= 1.2 and 1.28 <= values[1] <= 1.92
    with pytest.raises(ValueError):
        Backoff(0.0, 1.0)


def _txt(choices: object) -> list[str]:
    return ["v=spf1 -all", "grpc_config=" + json.dumps(choices)]


PF = {"loadBalancingConfig": [{"pick_first": {}}]}
RR = {"loadBalancingConfig": [{"round_robin": {}}]}


@pytest.mark.parametrize(("choices", "want"), [
    ([{"serviceConfig": PF}], PF),
    ([{"clientLanguage": ["go", "java"], "serviceConfig": PF}, {"serviceConfig": RR}], RR),
    ([{"clientLanguage": ["Python"], "serviceConfig": PF}], PF),
    ([{"clientHostname": ["other"], "serviceConfig": PF}], None),
    ([{"clientHostname": ["me"], "serviceConfig": PF}], PF),
    ([{"percentage": 0, "serviceConfig": PF}, {"serviceConfig": RR}], RR),
    ([{"percentage": 100, "serviceConfig": PF}], PF),
    ([], None),
])
def test_txt_choices(choices: object, want: object) -> None:
    assert choose_service_config(_txt(choices), hostname="me", rng=random.Random(1)) == want


def test_txt_percentage_is_a_share_of_clients() -> None:
    rng = random.Random(3)
    picked = sum(choose_service_config(_txt([{"percentage": 25, "serviceConfig": PF}]),
                                       hostname="h", rng=rng) is not None
                 for _ in range(4000))
    assert 800 <= picked <= 1200


def test_txt_without_grpc_config_is_none() -> None:
    assert choose_service_config(["hello"], hostname="h", rng=random.Random()) is None


@pytest.mark.parametrize(("text", "path"), [
    ("grpc_config={", "grpc_config"),
    ('grpc_config={"serviceConfig": {}}', "grpc_config"),
    ('grpc_config=[{"serviceConfig": {}, "colour": 1}]', "grpc_config[0].colour"),
    ('grpc_config=[{"percentage": 101, "serviceConfig": {}}]', "grpc_config[0].percentage"),
    ('grpc_config=[{"clientLanguage": "python", "serviceConfig": {}}]',
     "grpc_config[0].clientLanguage"),
    ('grpc_config=[{"clientHostname": [1], "serviceConfig": {}}]',
     "grpc_config[0].clientHostname[0]"),
    ('grpc_config=[{"serviceConfig": {}}, {}]', "grpc_config[1].serviceConfig"),
    ('grpc_config=[{"serviceConfig": []}]', "grpc_config[0].serviceConfig"),
])
def test_malformed_txt_names_the_json_path(text: str, path: str) -> None:
    with pytest.raises(ServiceConfigError) as info:
        choose_service_config([text], hostname="h", rng=random.Random())
    assert info.value.path == path
