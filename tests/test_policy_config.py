"""Config parsing of the balancing policies: gRPC's JSON works, defaults are filled,
bad values are rejected naming the JSON path and the rule (table-driven)."""

from __future__ import annotations

from typing import Any

import pytest
from test_policy_support import parse

from lbclient import ServiceConfigError
from lbclient.config import parse_service_config

LB = "loadBalancingConfig[0]"


def test_defaults_follow_grpc() -> None:
    wrr = parse({"weighted_round_robin": {}})
    assert (wrr.blackout_period, wrr.weight_expiration_period, wrr.weight_update_period,
            wrr.error_utilization_penalty, wrr.enable_oob_load_report) == (
        10.0, 180.0, 1.0, 1.0, False)
    lr = parse({"least_request_experimental": {}})
    assert (lr.choice_count, lr.active_request_bias) == (2, 1.0)
    rh = parse({"ring_hash_experimental": {}})
    # minRingSize: lbclient's default is 4096 (gRPC's 1024): see ring_hash's docstring.
    assert (rh.min_ring_size, rh.max_ring_size, rh.request_hash_header,
            rh.hash_balance_factor) == (4096, 4096, None, None)
    mg = parse({"maglev": {}})
    assert (mg.table_size, mg.request_hash_header) == (65537, None)
    pe = parse({"peak_ewma": {}})
    assert pe.decay_time == 10.0
    st = parse({"sticky": {"sessionHeader": "X-Session"}})
    assert (st.session_header, st.child.name, st.max_sessions, st.ttl, st.return_window,
            st.endpoint_header) == ("x-session", "round_robin", 10000, 1800.0, 30.0, None)
    assert parse({"least_connections": {}}).weights == ()
    assert parse({"random": None}).weights == ()


GRPC_JSON = [
    # gRPC's own service config JSON for these policies parses unchanged.
    {"weighted_round_robin": {"blackoutPeriod": "5s", "weightExpirationPeriod": "60s",
                              "weightUpdatePeriod": "0.5s", "errorUtilizationPenalty": 0.5,
                              "enableOobLoadReport": True, "oobReportingPeriod": "2s"}},
    {"least_request_experimental": {"choiceCount": 3}},
    {"ring_hash_experimental": {"minRingSize": 10, "maxRingSize": 100}},
    {"ring_hash": {"minRingSize": "2048", "maxRingSize": "8388608",
                   "requestHashHeader": "x-user"}},
]


@pytest.mark.parametrize("entry", GRPC_JSON)
def test_grpc_json_parses(entry: dict[str, Any]) -> None:
    cfg = parse_service_config({"loadBalancingConfig": [entry]})
    assert cfg.lb.name.startswith(next(iter(entry)).split("_experimental")[0])


def test_values_are_converted() -> None:
    wrr = parse({"weighted_round_robin": {"weightUpdatePeriod": "0.01s",
                                          "blackoutPeriod": "0s", "weights": {"a:1": 5}}})
    assert wrr.weight_update_period == 0.1  # A58: below 100 ms becomes 100 ms
    assert wrr.blackout_period == 0.0
    assert wrr.weights == (("a:1", 5.0),)
    assert parse({"least_request": {"choiceCount": 50}}).choice_count == 10  # A48 clamp
    assert parse({"ring_hash": {"maxRingSize": "8388608"}}).max_ring_size == 8388608
    assert parse({"ring_hash": {"requestHashHeader": "X-User"}}).request_hash_header == "x-user"
    assert parse({"sticky": {"sessionHeader": "s", "childPolicy": [
        {"nope": {}}, {"least_request": {"choiceCount": 4}}]}}).child.config.choice_count == 4
    assert parse({"peak_ewma": {"decayTime": "2.5s"}}).decay_time == 2.5


BAD = [
    ({"weighted_round_robin": {"errorUtilizationPenalty": -1}},
     f"{LB}.weighted_round_robin.errorUtilizationPenalty", "at least 0"),
    ({"weighted_round_robin": {"blackoutPeriod": "-1s"}},
     f"{LB}.weighted_round_robin.blackoutPeriod", "non-negative"),
    ({"weighted_round_robin": {"weightExpirationPeriod": "0s"}},
     f"{LB}.weighted_round_robin.weightExpirationPeriod", "greater than 0"),
    ({"weighted_round_robin": {"weightUpdatePeriod": "soon"}},
     f"{LB}.weighted_round_robin.weightUpdatePeriod", "duration"),
    ({"weighted_round_robin": {"enableOobLoadReport": "yes"}},
     f"{LB}.weighted_round_robin.enableOobLoadReport", "boolean"),
    ({"weighted_round_robin": {"weights": {"a:1": 0}}},
     f"{LB}.weighted_round_robin.weights.a:1", "greater than 0"),
    ({"weighted_round_robin": {"weights": [1]}},
     f"{LB}.weighted_round_robin.weights", "JSON object"),
    ({"weighted_round_robin": {"blackout": "1s"}},
     f"{LB}.weighted_round_robin.blackout", "unknown field"),
    ({"least_request": {"choiceCount": 1}}, f"{LB}.least_request.choiceCount", "at least 2"),
    ({"least_request": {"choiceCount": 2.5}}, f"{LB}.least_request.choiceCount", "integer"),
    ({"least_request": {"activeRequestBias": -0.5}},
     f"{LB}.least_request.activeRequestBias", "at least 0"),
    ({"least_connections": {"weights": {"a:1": "heavy"}}},
     f"{LB}.least_connections.weights.a:1", "finite number"),
    ({"random": {"weights": {"": 2}}}, f"{LB}.random.weights", "non-empty"),
    ({"ring_hash": {"minRingSize": 0}}, f"{LB}.ring_hash.minRingSize", "at least 1"),
    ({"ring_hash": {"maxRingSize": 8388609}}, f"{LB}.ring_hash.maxRingSize", "at most 8388608"),
    ({"ring_hash": {"minRingSize": 100, "maxRingSize": 10}},
     f"{LB}.ring_hash.minRingSize", "must not exceed maxRingSize"),
    ({"ring_hash": {"requestHashHeader": "x-key-bin"}},
     f"{LB}.ring_hash.requestHashHeader", "binary header"),
    ({"ring_hash": {"requestHashHeader": "x key"}},
     f"{LB}.ring_hash.requestHashHeader", "not a valid header name"),
    ({"ring_hash": {"hashBalanceFactor": 99}}, f"{LB}.ring_hash.hashBalanceFactor",
     "at least 100"),
    ({"maglev": {"tableSize": 65536}}, f"{LB}.maglev.tableSize", "prime"),
    ({"maglev": {"tableSize": 5000012}}, f"{LB}.maglev.tableSize", "at most 5000011"),
    ({"sticky": {}}, f"{LB}.sticky.sessionHeader", "is required"),
    ({"sticky": {"sessionHeader": "s", "childPolicy": [{"nope": {}}]}},
     f"{LB}.sticky.childPolicy", "no supported policy"),
    ({"sticky": {"sessionHeader": "s", "childPolicy": [{"least_request": {"choiceCount": 0}}]}},
     f"{LB}.sticky.childPolicy[0].least_request.choiceCount", "at least 2"),
    ({"sticky": {"sessionHeader": "s", "maxSessions": 0}}, f"{LB}.sticky.maxSessions",
     "at least 1"),
    ({"sticky": {"sessionHeader": "s", "ttl": "0s"}}, f"{LB}.sticky.ttl", "greater than 0"),
    ({"sticky": {"sessionHeader": "s", "returnWindow": "-2s"}}, f"{LB}.sticky.returnWindow",
     "non-negative"),
    ({"sticky": {"sessionHeader": "s", "endpointHeader": "where-bin"}},
     f"{LB}.sticky.endpointHeader", "binary header"),
    ({"peak_ewma": {"decayTime": "0s"}}, f"{LB}.peak_ewma.decayTime", "greater than 0"),
    ({"peak_ewma": {"decay": "1s"}}, f"{LB}.peak_ewma.decay", "unknown field"),
]


@pytest.mark.parametrize(("entry", "path", "words"), BAD)
def test_bad_values_name_path_and_rule(entry: dict[str, Any], path: str, words: str) -> None:
    with pytest.raises(ServiceConfigError) as exc:
        parse_service_config({"loadBalancingConfig": [entry]})
    assert exc.value.path == path, str(exc.value)
    assert words in str(exc.value)
    assert str(exc.value).startswith(path)
