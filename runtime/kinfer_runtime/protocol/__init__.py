"""Open Inference Protocol v2: wire types, codec, a transport-free data plane, REST and gRPC."""
