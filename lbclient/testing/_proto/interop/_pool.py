"""The descriptor pool of the generated interop modules (not the default pool, so grpc's
own grpc.testing modules can be imported in the same process). Written by
scripts/gen_protos.sh; do not edit."""

from google.protobuf import descriptor_pool

POOL = descriptor_pool.DescriptorPool()
