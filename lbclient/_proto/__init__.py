"""Generated protobuf modules of lbclient (ORCA load reports). Do not edit; run
scripts/gen_protos.sh."""
