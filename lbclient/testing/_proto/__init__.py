"""Generated protobuf/grpc modules of lbclient.testing (Echo here, the gRPC interop test
service in ``interop``). Do not edit; run scripts/gen_protos.sh."""
