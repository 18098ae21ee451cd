"""What the two stages' steps compute, as pure functions: losses.py (the
teacher's cross-entropy, margin gate and intra-class InfoNCE; KD and RKD of
the paper's student), student_losses.py (the terms of the published
distillation methods), projection.py (the teacher's projection head) and
cache.py (the teacher's ring buffer of past batches). The steps themselves
are the stages' (stages/teacher_step.py, stages/student_step.py)."""
