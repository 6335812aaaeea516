"""The etcd test cluster lives in lbclient.testing.etcd (users and benchmarks use it too)."""

from lbclient.testing.etcd import ETCD, ETCDCTL, EtcdCluster, Member, ServerTLS, require_etcd

__all__ = ["ETCD", "ETCDCTL", "EtcdCluster", "Member", "ServerTLS", "require_etcd"]
