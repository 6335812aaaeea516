"""Built-in load-balancing policies: one module per algorithm (the contract is in
``lbclient.balancer.policy``). Importing this package registers every built-in policy;
``import lbclient`` does."""

from . import (  # noqa: F401 - each module registers its PolicySpec(s)
    least_connections,
    least_request,
    maglev,
    outlier_detection,
    peak_ewma,
    pick_first,
    priority,
    random_policy,
    ring_hash,
    round_robin,
    sticky,
    subsetting_deterministic,
    subsetting_random,
    weighted_round_robin,
    weighted_target,
    zone_aware,
)
