"""The asyncio call path: ``lbclient.aio.LoadBalancedChannel`` and its drivers.

Mirrors ``lbclient._sync`` file for file over the shared pieces in ``lbclient._core``:

    channel     the grpc.aio.Channel: loop scheduler, endpoint connections, balancer
    calls       grpc.aio's four multicallables (the per-call entry points)
    attempt     one attempt on a picked endpoint (grpc.aio's own call object)
    picking     waiting (on the loop) for a picker that can place a call
    future      DeferredCall: a call that waits for placement, as a grpc.aio call
    retry       gRFC A6 retries of unary-response calls (RetriedCall and its loop)
    hedge       gRFC A6 hedging of unary calls (HedgePlan's actions on the loop)
    stream      retried response streams
    replay      request replay for retried request streams (ReplayCore on the loop)
    subchannel  one grpc.aio channel per endpoint and a task watching its connectivity
    health      grpc.health.v1 probing as tasks
    scheduler   timers on the loop
    errors      AioRpcError for lbclient's own failures
    status      how a grpc.aio call ended, read from its done callback
"""
