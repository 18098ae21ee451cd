"""Interoperability with other frameworks' files: PyTorch checkpoints without PyTorch."""
