"""asyncio channels: ``lbclient.aio.insecure_channel`` / ``secure_channel`` implement
``grpc.aio.Channel`` with the same resolvers, balancer, policies and config as the sync
channel (implemented in ``lbclient._async``)."""

from .._async.channel import LoadBalancedChannel, insecure_channel, secure_channel

# Import the built-in policies (and, through lbclient.resolver, the resolvers) now, not
# lazily inside the event loop where the first channel would block it on imports.
from ..balancer.policy import registered_policies as _policies  # noqa: E402

__all__ = ["LoadBalancedChannel", "insecure_channel", "secure_channel"]

_policies()
