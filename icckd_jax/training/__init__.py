"""Training: the loop, state, optimiser, mesh, checkpoints, evaluation."""
