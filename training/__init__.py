"""TRADES and baseline training, white-box evaluation and artifact export."""
