"""Label-only serving of a trained model artifact (see DESIGN.md)."""
