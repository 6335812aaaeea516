"""Generated Echo protobuf/grpc modules. Do not edit; run scripts/gen_protos.sh."""
