"""Generated gRPC and protobuf code (see generate.py); installed as lamina.protos."""
