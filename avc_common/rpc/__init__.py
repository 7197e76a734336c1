"""The label-only gRPC contract: stubs generated from ``proto/defense.proto`` and its one client."""
