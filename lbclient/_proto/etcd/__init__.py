"""Generated etcd v3 API messages (a subset). Do not edit; run scripts/gen_protos.sh."""
