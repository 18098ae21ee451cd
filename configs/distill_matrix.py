r"""The teacher × distiller matrix: does the intra-class teacher help every
student, or only KD's?

Two teachers, the plain cross-entropy one (λ = 0) and the intra-class one
(the teacher config's defaults), each distilled into eleven students, every
method with its published CIFAR-100 recipe (docs/distillers.md):

  kd      Hinton et al. (T = 4, γ = 0.1, α = 0.9)
  dkd     decoupled KD (α = 1, β = 8, T = 4, 20 warm-up epochs)
  kd_ls   KD on standardised logits (T = 2, α = 9, γ = 0.1; Sun et al.)
  dist    DIST (β = γ = 2, T = 4)
  crd     contrastive representation distillation (w = 0.8, 16384
          negatives, τ = 0.07; a memory bank per training image)
  reviewkd  knowledge review (w = 5, 20 warm-up epochs; trained fusion
          blocks)
  wttm    weighted transformed teacher matching (γ = 0.2, β = 4)
  ctkd    KD with a learned, adversarial temperature (γ = 0.1, α = 0.9,
          T in (1, 21), λ's cosine curriculum over 10 epochs)
  kd_dot  KD trained with DOT (the task and distillation momenta 0.9 ∓ Δ,
          Δ = 0.075; Zhao et al.), KD's recipe otherwise
  mlkd    multi-level logit distillation on a weak and a RandAugment
          view (T = 4 with 3, 5, 2, 6; γ = 0.1, α = 0.9)
  mlkd_ls MLKD on standardised logits (T = 2, α = 9, γ = 0.1; Sun et al.)

Settings are named TEACHER.STUDENT (ce.kd, icc.crd, ...). The eleven
students of one teacher share its run through the run store (a teacher is
named by its config), so a seed trains two teachers and twenty-two students.

  # the published scale: CIFAR-100, resnet32x4 -> resnet8x4, 240 epochs
  # each, float32, seeds 0-2
  python launch.py --config=configs/distill_matrix.py --workdir=workdirs/matrix
  # one GPU, one seed, 4 workers sharing it (projected time: `_gpu`)
  python launch.py --config=configs/distill_matrix.py:gpu \
      --workdir=workdirs/matrix_gpu
  # tests: one epoch each on the synthetic set, one seed
  python launch.py --config=configs/distill_matrix.py:smoke --workdir=/tmp/mx

Regenerate the report with configs/report.py.
"""

import ml_collections

from configs import sweep_common

TEACHERS = {'ce': 'teacher.icc.lam=0.0', 'icc': ''}
STUDENTS = {
  'kd': 'student.distill.method="kd"',
  'dkd': 'student.distill.method="dkd"',
  # LS's recipe for this pair (icckd_jax/distillers/kd.py).
  'kd_ls': (
    'student.distill.method="kd", '
    'student.distill.standardize_logits=True, '
    'student.distill.temperature=2.0, student.distill.alpha=9.0'
  ),
  'dist': 'student.distill.method="dist"',
  'crd': 'student.distill.method="crd"',
  'reviewkd': 'student.distill.method="reviewkd"',
  'wttm': 'student.distill.method="wttm"',
  'ctkd': 'student.distill.method="ctkd"',
  'kd_dot': 'student.distill.method="kd", student.optimizer="dot"',
  'mlkd': 'student.distill.method="mlkd"',
  # LS's recipe for MLKD (icckd_jax/distillers/mlkd.py).
  'mlkd_ls': (
    'student.distill.method="mlkd", '
    'student.distill.standardize_logits=True, '
    'student.distill.temperature=2.0, student.distill.alpha=9.0'
  ),
}


def settings() -> tuple[str, ...]:
  """'TEACHER.STUDENT: overrides' for every pair, teacher by teacher."""
  return tuple(
    f'{t}.{s}: ' + ', '.join(filter(None, (t_over, s_over)))
    for t, t_over in TEACHERS.items()
    for s, s_over in STUDENTS.items()
  )


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = sweep_common.sweep_config(arg if arg != 'gpu' else None)
  c.settings = settings()
  # Paired by seed: each student of the intra-class teacher against the
  # same student of the CE teacher.
  c.comparisons = ', '.join(f'icc.{s}:ce.{s}' for s in STUDENTS)
  if arg == 'gpu':
    _gpu(c)
  elif arg == 'smoke':
    for stage in (c.base.teacher, c.base.student):
      stage.num_epochs = 1
      stage.lr_decay_epochs = ()
      stage.batch_size = 16
      stage.eval_batch_size = 32
    c.base.teacher.dataset.update(num_train=64, num_test=32, image_size=8)
    # The bank has 64 rows here; 16384 negatives would only cost time.
    c.base.student.distill.crd_negatives = 32
  return c


def _gpu(c: ml_collections.ConfigDict) -> None:
  """CIFAR-100 at the published scale, one seed, 4 workers on one GPU.

  resnet32x4 -> resnet8x4, 240 epochs of 50,000 images (12.0 M images a
  run), float32. Projected on one H100 from the throughputs measured with
  this code (docs/gpu.md, "Measured before"): the CE teacher at
  8,400 img/s takes 24 min, the intra-class teacher at 6,600 img/s (the
  middle of the 6,200-7,000 measured with the feature cache) 30 min, each
  student at the KD student's 17,700 img/s 11 min (DKD, KD + LS and DIST
  cost what KD does, as WTTM and CTKD should: logit losses; CRD's bank
  gather, [64, 16385, 128] floats a step, and ReviewKD's fusion blocks
  were not measured and will be slower; KD + DOT's second backward pass
  cost 1.2-1.4x KD's step on CPU, docs/distillers.md; MLKD's two views,
  each through both networks, and RandAugment about twice KD, 22 min).
  One process: 24 + 30 + 18 × 11 + 4 × 22 = about 5 h 40 min. Four workers
  sharing the GPU gave 1.5x one process's throughput: about 3 h 50 min, plus
  evaluation and the first compiles (10-40 s per distinct step), with the
  two teachers first.
  """
  c.seeds = (0,)
  c.workers = 4
  for stage in (c.base.teacher, c.base.student):
    stage.eval_every_epochs = 10
    stage.log_every_steps = 500
    stage.checkpoint_every_epochs = 10
