"""The label-only gRPC contract: stubs generated from ``proto/defense.proto`` and its one client."""

# gRPC's trailing-metadata key for "retry this call after N ms" (gRFC A6): the server sends it with
# every busy refusal (RESOURCE_EXHAUSTED, not charged), and the client waits that long and sends again.
PUSHBACK_KEY = "grpc-retry-pushback-ms"
