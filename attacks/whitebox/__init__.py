"""What the harness computes with gradients: surrogate models it owns, and the white-box reference."""
