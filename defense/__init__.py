"""Label-only serving of a trained model artifact (docs/architecture.md "gRPC service")."""
