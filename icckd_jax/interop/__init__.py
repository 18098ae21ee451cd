"""Other frameworks' files: PyTorch checkpoints read without PyTorch, and a
plain parameters file."""
