"""Training: the loop and its parts (checkpoints, evaluation, metrics, step scaffold, clocks)."""
