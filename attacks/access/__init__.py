"""The attacks' view of a model and the per-image query ledger every attack goes through."""
