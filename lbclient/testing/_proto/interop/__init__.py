"""Generated modules of the gRPC interop test service (proto package ``grpc.testing``,
written for lbclient from gRPC's interop test descriptions; wire-compatible with grpc's).
Do not edit; run scripts/gen_protos.sh."""
