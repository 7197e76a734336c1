"""Building blocks of the decision-based attacks: directions, label-only gradient estimates, line searches."""
