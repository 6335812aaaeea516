"""Built-in load-balancing policies: one module per algorithm (see balancer.policy)."""
