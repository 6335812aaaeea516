"""``lbclient.LoadBalancedChannel``, ``insecure_channel`` and ``secure_channel``: the sync
channel (implemented in ``lbclient._sync``)."""

from ._sync.channel import LoadBalancedChannel, insecure_channel, secure_channel

__all__ = ["LoadBalancedChannel", "insecure_channel", "secure_channel"]
