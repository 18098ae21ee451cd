"""Experiments: the teacher-to-student pipeline, sweeps, metrics, reports."""
