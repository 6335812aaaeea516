"""What the sync and asyncio call paths share (no threads, no event loop, no I/O).

One call, in the order these pieces are used::

    kinds.CallSite        the multicallable's method (kind, name, serializers), interned
    context.CallContext   what a channel gives its drivers (balancer, method configs,
                          failure codes, listeners, retry gate, replay budget)
    deadline              the call's one deadline (the caller's or the method config's)
    picking               a failed pick: fail now (and why) or wait for the next picker
    attempt               begin an attempt on its endpoint; end it exactly once (stats,
                          the picker's on_done, call listeners)
    retry_plan.RetryPlan  gRFC A6 retry decisions for one call (backoff, pushback,
                          retry gate, commitment, attempts, deadline)
    hedging.HedgePlan     gRFC A6 hedging as a state machine (actions for the driver)
    replay.ReplayCore     request-stream buffering for replay (driver reads the source)
    throttle, budget      the retry gates: gRFC A6's token bucket (and the RetryGate
                          contract), Envoy's and Finagle's retry budgets
    metadata              attempt-count and pushback metadata
    transport             endpoint connection options and connectivity state maps
    channel_base          the channel half both flavours share (config, resolver
                          listener, visibility)

The drivers in ``lbclient._sync`` and ``lbclient._async`` mirror each other file for file
and only loop: they start attempts, wait (threads or the event loop) and carry out what
these pieces decide.
"""
