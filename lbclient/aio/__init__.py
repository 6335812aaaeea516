"""asyncio channels: ``lbclient.aio.insecure_channel`` / ``secure_channel`` implement
``grpc.aio.Channel`` with the same resolvers, balancer, policies and config as the sync
channel."""

from ._channel import LoadBalancedChannel, insecure_channel, secure_channel

__all__ = ["LoadBalancedChannel", "insecure_channel", "secure_channel"]

# Import the built-in policies and resolvers now, not lazily inside the event loop where
# the first channel would otherwise block the loop on module imports.
from ..balancer.policy import registered_policies as _policies  # noqa: E402
from ..resolver.base import registered_schemes as _schemes  # noqa: E402

_policies()
_schemes()
