"""Data: the loaders of each source, their caches, and the ArrayRecord format and converter."""
