"""Runs: what a run is and may be (config schema, validation, run setup, workdir lock, reuse, state, memory)."""
