"""asyncio channels: ``lbclient.aio.insecure_channel`` / ``secure_channel`` implement
``grpc.aio.Channel`` with the same resolvers, balancer, policies and config as the sync
channel."""

from ._channel import LoadBalancedChannel, insecure_channel, secure_channel

__all__ = ["LoadBalancedChannel", "insecure_channel", "secure_channel"]
