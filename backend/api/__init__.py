"""lamina's gRPC API (package lamina.v1): the server behind `lamina serve` and a typed client."""
