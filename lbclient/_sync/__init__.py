"""The sync call path: ``lbclient.LoadBalancedChannel`` and its drivers.

Mirrors ``lbclient._async`` file for file over the shared pieces in ``lbclient._core``:

    channel     the grpc.Channel: scheduler, endpoint connections, balancer, resolver
    calls       grpc's four multicallables (the per-call entry points)
    attempt     one attempt on a picked endpoint (blocking, future, response stream)
    picking     waiting for a picker that can place a call (blocking, or queued)
    future      CallFuture: a unary-response call of several steps as a grpc.Future
    retry       gRFC A6 retries of unary-response calls (blocking loop and future)
    hedge       gRFC A6 hedging of unary calls (HedgePlan's actions on timers/callbacks)
    stream      response streams that wait for placement or are retried
    replay      request replay for retried request streams (a thread-safe ReplayCore)
    subchannel  one grpc channel per endpoint, its connectivity and connection errors
    health      grpc.health.v1 probing of an endpoint's connection
    scheduler   the channel's timer thread
    errors      LocalRpcError: lbclient's own failures shaped like grpc's
"""
