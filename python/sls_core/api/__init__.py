"""The gRPC API of sls_core: generated protobuf modules (``v1``) of proto/sls/v1."""
