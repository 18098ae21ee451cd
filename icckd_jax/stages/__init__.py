"""Stages: the teacher and the student, their jitted steps, the teacher source and their preflight."""
