r"""The study: δ and the pipeline cache measured where the gate acts
(docs/results/regime_cpu/design.md has the pre-registered design).

One sweep holds both ablations and their controls, so that every arm has a
control differing from it in one thing only:

  ce_teacher      λ = 0: one view, BatchNorm over B images
  two_view_null   λ > 0, δ = 1: no anchor passes, so the intra-class gradient
                  is zero while BatchNorm, compute, data and cache match the
                  intra-class teachers (the control of every arm below)
  delta=D         δ ∈ {0, 0.2, 0.4, 0.6, 0.8}, feature cache (the default)
  ungated         δ = -1: every anchor passes
  no_cache        δ = 0.4, cache.size = 0 (the cache removed)
  image_cache     δ = 0.4, cache.store = 'images' (fresh embeddings)

The cache ablation's feature-cache arm *is* delta=0.4. The primary
comparison (ce_teacher, two_view_null, delta=0.4) runs `primary_seeds`, the
other settings `seeds`. Every run: a teacher, then a KD student from its last
checkpoint; headline figures are the last epoch on the whole test split.

  # 2 CPU cores: Fashion-MNIST (Debian's dataset-fashion-mnist), 500
  # training images, batch 16, resnet8 -> resnet8; about 90 minutes
  python launch.py --config=configs/study.py:cpu --workdir=workdirs/study
  # one GPU, CIFAR-10 from an image-folder archive, resnet32x4 -> resnet8x4
  # in bfloat16, about 8.5 minutes on one H100 (docs/gpu.md, projected)
  python launch.py --config=configs/study.py:gpu --workdir=workdirs/study_gpu \
      --config.base.teacher.dataset.path=path/to/cifar10-folder.tar.gz
  # the paper's scale: CIFAR-100, resnet32x4 -> resnet8x4, 240 epochs
  python launch.py --config=configs/study.py --workdir=workdirs/study_full
  # tests: two seeds, tiny runs on the synthetic set
  python launch.py --config=configs/study.py:smoke --workdir=/tmp/study

The capacity study (docs/results/capacity/design.md, as amended on
2026-12-05): a teacher with 6.1x the student's parameters, and a student
trained from scratch beside the KD students, in two stages. Stage 1 finds a
student recipe under which KD transfers (the declared rule,
icckd_jax/experiments/transfer_rule.py); stage 2, the main study, reads it
from stage 1's records (--config.transfer_from, required):

  # stage 1, one GPU: CIFAR-10, one CE resnet32x4 teacher per seed, six
  # resnet8x4 students (two KD recipes and scratch, 20 and 40 epochs), 2
  # seeds; about 3 minutes on one H100 (projected, docs/gpu.md)
  python launch.py --config=configs/study.py:capacity_transfer \
      --workdir=workdirs/capacity_transfer \
      --config.base.teacher.dataset.path=path/to/cifar10-folder.tar.gz
  # stage 2, one GPU: δ = 0.4, the two-view null and scratch, 12 seeds;
  # about 6 minutes at a 20-epoch recipe, 8.4 at 40 (projected)
  python launch.py --config=configs/study.py:capacity \
      --workdir=workdirs/capacity \
      --config.transfer_from=workdirs/capacity_transfer \
      --config.base.teacher.dataset.path=path/to/cifar10-folder.tar.gz
  # the pilot on 2 CPU cores (before the amendment): Fashion-MNIST,
  # resnet20 -> resnet8, 4 arms, 3 seeds
  python launch.py --config=configs/study.py:capacity_pilot \
      --workdir=workdirs/capacity_pilot
  # tests: both stages on the synthetic set, two seeds, tiny runs
  python launch.py --config=configs/study.py:capacity_transfer_smoke \
      --workdir=/tmp/cap1
  python launch.py --config=configs/study.py:capacity_smoke \
      --workdir=/tmp/cap2 --config.transfer_from=/tmp/cap1

Regenerate the report with configs/report.py.
"""

import ml_collections
from ml_collections import config_dict

from configs import pipeline
from configs import sweep_common

DELTAS = (0.0, 0.2, 0.4, 0.6, 0.8)
CONTROLS = ('ce_teacher', 'two_view_null')
PRIMARY = ('ce_teacher', 'two_view_null', 'delta=0.4')


ARGUMENTS = (
  None,
  'cpu',
  'gpu',
  'smoke',
  'capacity',
  'capacity_pilot',
  'capacity_smoke',
  'capacity_transfer',
  'capacity_transfer_smoke',
)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  if arg not in ARGUMENTS:
    raise ValueError(
      f'unknown config argument {arg!r}; valid: '
      + ', '.join(a for a in ARGUMENTS if a)
    )
  c = _capacity(arg) if arg and arg.startswith('capacity') else _study(arg)
  sweep_common.add_executor(c)
  return c


def _study(arg: str | None) -> ml_collections.ConfigDict:
  """The δ and cache study (this module's docstring)."""
  c = ml_collections.ConfigDict()
  c.mode = 'sweep'
  c.workdir = config_dict.placeholder(str)
  c.base = pipeline.get_config('smoke' if arg == 'smoke' else None)
  c.store = config_dict.placeholder(str)
  c.workers = 1
  c.estimate = True
  # Epochs to reach this train accuracy: one threshold for every run.
  c.reach_train_accuracy = 0.5
  c.settings = (
    'ce_teacher: teacher.icc.lam=0.0',
    'two_view_null: teacher.icc.delta=1.0',
    *(f'delta={d}: teacher.icc.delta={d}' for d in DELTAS),
    'ungated: teacher.icc.delta=-1.0',
    'no_cache: teacher.cache.size=0',
    'image_cache: teacher.cache.store="images"',
  )
  c.controls = CONTROLS
  # The cache ablation against the arm it changes (the feature cache).
  c.comparisons = 'no_cache:delta=0.4, image_cache:delta=0.4'
  c.primary_settings = PRIMARY
  c.primary_seeds = tuple(range(10))
  c.seeds = tuple(range(5))
  if arg == 'cpu':
    _cpu(c)
  elif arg == 'gpu':
    _gpu(c)
  elif arg == 'smoke':
    c.estimate = False
    c.primary_seeds = (0, 1, 2)
    c.seeds = (0, 1)
    c.settings = (
      c.settings[0],
      c.settings[1],
      'delta=0.4: teacher.icc.delta=0.4',
      'delta=0.0: teacher.icc.delta=0.0',
      'no_cache: teacher.cache.size=0',
    )
    for stage in (c.base.teacher, c.base.student):
      stage.num_epochs = 2
      stage.lr_decay_epochs = (1,)
  return c


def _cpu(c: ml_collections.ConfigDict) -> None:
  """Fashion-MNIST on 2 CPU cores, in the regime (design.md).

  500 training images (a fixed subset), the whole 10,000-image test split,
  resnet8 teacher and student, batch 16: with 10 classes an anchor has 1.5
  same-class partners in its batch on average and about one in five has
  none, so the cache ablation shares the δ sweep's runs and controls.
  Learning rate 0.05; teachers 30 epochs, ×0.1 at 22 and 27; students 10
  epochs, ×0.1 at 7 and 9. Crop padding 2 (of 28 pixels). The pilots
  (design.md) sized it: at batch 8, or with padding 4, the δ = 0 teacher
  ended at 0.79 train accuracy; this one reached 0.82. The whole test split
  costs about three teacher epochs here, so it is evaluated at the last
  epoch only.
  """
  t, s = c.base.teacher, c.base.student
  t.dataset.name = 'fashion_mnist'
  t.dataset.train_subset = 500
  t.model = s.model = 'resnet8'
  for stage, epochs, decay in ((t, 30, (22, 27)), (s, 10, (7, 9))):
    stage.batch_size = 16
    stage.learning_rate = 0.05
    stage.crop_padding = 2
    stage.num_epochs = epochs
    stage.lr_decay_epochs = decay
    stage.eval_every_epochs = epochs
    stage.log_every_steps = 500
    stage.checkpoint_every_epochs = 12
  c.workers = 2
  c.reach_train_accuracy = 0.7


def _gpu(c: ml_collections.ConfigDict) -> None:
  """The same design at GPU scale: resnet32x4 -> resnet8x4 in bfloat16,
  batch 64, on CIFAR-10 from an image-folder archive
  (--config.base.teacher.dataset.path=...): a fixed 6,000-image training
  subset, the whole test split, teachers 10 epochs (×0.1 at 7 and 9),
  students 5 (×0.1 at 3 and 4), 4 workers sharing the GPU. On CIFAR-10 at
  batch 64 an anchor has 6.3 same-class partners in its batch, so the cache
  matters less than on CIFAR-100 (0.6): for CIFAR-100 set
  --config.base.teacher.dataset.name=cifar100. docs/gpu.md derives its
  projected time (about 8.5 minutes on one H100) from measured throughputs.
  """
  t, s = c.base.teacher, c.base.student
  t.dataset.name = 'image_folder'
  t.dataset.train_subset = 6000
  for stage, epochs, decay in ((t, 10, (7, 9)), (s, 5, (3, 4))):
    stage.dtype = 'bfloat16'
    stage.num_epochs = epochs
    stage.lr_decay_epochs = decay
    stage.eval_every_epochs = epochs
    stage.log_every_steps = 200
    stage.checkpoint_every_epochs = epochs
  c.workers = 4


def _capacity(arg: str) -> ml_collections.ConfigDict:
  """The capacity study's sweeps (docs/results/capacity/design.md): its
  CPU pilot as committed, and the two stages of the 2026-12-05 amendment."""
  if arg == 'capacity_pilot':
    return _capacity_pilot()
  smoke = arg.endswith('_smoke')
  c = _sweep('smoke' if smoke else None)
  c.workers = 2 if smoke else 4
  c.estimate = not smoke
  t, s = c.base.teacher, c.base.student
  if smoke:  # the synthetic set, tiny runs
    teacher_schedule = (2, (1,))
    c.reach_train_accuracy = 0.2
  else:
    # CIFAR-10 from an image-folder archive (--config.base.teacher.dataset.
    # path=...): a fixed 5,000-image training subset, the whole test split.
    t.dataset.name = 'image_folder'
    t.dataset.train_subset = 5000
    # 7.41 M and 1.21 M parameters at 10 classes: 6.1x.
    t.model, s.model = 'resnet32x4', 'resnet8x4'
    teacher_schedule = (15, (10, 13))
    for stage in (t, s):
      stage.dtype = 'bfloat16'
      stage.log_every_steps = 200
    c.reach_train_accuracy = 0.6
  _schedule(t, *teacher_schedule)
  # (c) every student has trained: its train accuracy moved less than a
  # point over its last fifth of epochs, which every student schedule here
  # keeps after its last learning-rate drop (a plateau, not the drop).
  c.regime_checks = ('*: student_train_accuracy_change_last_fifth < 0.01',)
  if arg.startswith('capacity_transfer'):
    _capacity_transfer(c, (2, 4) if smoke else (20, 40))
  else:
    _capacity_main(c, 2 if smoke else 12)
  return c


def _sweep(base_arg: str | None) -> ml_collections.ConfigDict:
  """A capacity sweep's frame: the pipeline config `base_arg` as its base,
  the workdir, the run store and the compilation cache."""
  c = ml_collections.ConfigDict()
  c.mode = 'sweep'
  c.workdir = config_dict.placeholder(str)
  c.base = pipeline.get_config(base_arg)
  c.compilation_cache = c.base.compilation_cache
  c.store = config_dict.placeholder(str)
  return c


def _schedule(stage, epochs: int, decays: tuple) -> None:
  """`epochs` epochs, ×0.1 at `decays`, the test split at the last only."""
  stage.num_epochs = epochs
  stage.lr_decay_epochs = decays
  stage.eval_every_epochs = epochs
  stage.checkpoint_every_epochs = epochs


def student_decays(epochs: int) -> tuple[int, ...]:
  """The amended students' learning-rate drops: ×0.1 at 60% and 75% of
  their epochs (20: 12, 15), so that their last fifth is a plateau."""
  return tuple(sorted({int(0.6 * epochs), int(0.75 * epochs)}))


# Stage 1's students, (name, γ, α) at T = 4: two KD weightings and scratch
# (no distillation term).
TRANSFER_STUDENTS = (
  ('kd_g0.1_a0.9', 0.1, 0.9),
  ('kd_g1_a1', 1.0, 1.0),
  ('scratch', 1.0, 0.0),
)


def _capacity_transfer(c: ml_collections.ConfigDict, epochs: tuple) -> None:
  """Stage 1: does KD transfer, and under which recipe?

  One cross-entropy teacher per seed (every setting asks for the same one,
  trained once), and six students from it: each of TRANSFER_STUDENTS for
  each of `epochs`. The declared rule (experiments/transfer_rule.py) picks
  the first of `transfer_candidates` whose KD − scratch student top-1 is
  at least `transfer_minimum` on both seeds; configs/study.py:capacity
  reads it from this sweep's records (--config.transfer_from).
  """
  c.settings = tuple(
    f'{name}@{e}: teacher.icc.lam=0.0, student.distill.gamma={gamma}, '
    f'student.distill.alpha={alpha}, student.num_epochs={e}, '
    f'student.lr_decay_epochs={student_decays(e)}, '
    f'student.eval_every_epochs={e}, student.checkpoint_every_epochs={e}'
    for e in epochs
    for name, gamma, alpha in TRANSFER_STUDENTS
  )
  c.transfer_candidates = ', '.join(
    f'{name}@{e}:scratch@{e}'
    for e in epochs
    for name, _, _ in TRANSFER_STUDENTS[:2]
  )
  c.transfer_minimum = 0.015
  # Disjoint from stage 2's seeds 0-11: its transfer check is not measured
  # on the seeds that chose the recipe.
  c.seeds = c.primary_seeds = (12, 13)


def _capacity_main(c: ml_collections.ConfigDict, seeds: int) -> None:
  """Stage 2, the main study: three arms paired by seed, each a teacher
  and a student from it, the students on the recipe stage 1 chose
  (--config.transfer_from=DIR, stage 1's workdir; required):
    delta=0.4      the intra-class teacher (δ = 0.4, feature cache)
    two_view_null  its one-change control (δ = 1: no anchor passes)
    scratch        a student with no distillation term (γ 1, α 0) on the
                   null's teacher, the same run, so that nothing else
                   differs from the null's KD student: the same
                   initialisation, data order and augmentation.
  Primary: student top-1 of delta=0.4 − two_view_null. Regime checks come
  first: the gate acts, KD transfers (two_view_null − scratch), and the
  students trained.
  """
  c.transfer_from = config_dict.placeholder(str)
  c.settings = (
    'two_view_null: teacher.icc.delta=1.0',
    'delta=0.4: teacher.icc.delta=0.4',
    'scratch: teacher.icc.delta=1.0, student.distill.gamma=1.0, '
    'student.distill.alpha=0.0',
  )
  c.controls = ('two_view_null',)
  c.primary_settings = ('delta=0.4', 'two_view_null')
  # (b) KD transfers: the null's KD student beats scratch by at least this
  # much (top-1, a fraction), with a 95% interval above 0.
  c.transfer_check = 'two_view_null:scratch >= 0.01'
  # (a) the gate acts at δ = 0.4.
  c.regime_checks = (
    'delta=0.4: teacher_gate_pass_rate_last_quarter >= 0.5',
    *c.regime_checks,
  )
  # Declared before any run: the primary difference is "equivalent" only
  # if a paired TOST at ±1 point of top-1 rejects both sides.
  c.equivalence_margin = 0.01
  c.seeds = c.primary_seeds = tuple(range(seeds))


def _capacity_pilot() -> ml_collections.ConfigDict:
  """The capacity study's CPU pilot, as designed before the amendment.

  Arms, each a teacher and a student from it, paired by seed:
    delta=0.4      the intra-class teacher (δ = 0.4, feature cache)
    two_view_null  its one-change control (δ = 1: no anchor passes)
    ce_teacher     λ = 0, a cross-entropy teacher
    scratch        the student with cross-entropy alone (weight 1, no
                   distillation term: α = 0), on ce_teacher's teacher so
                   that nothing else differs from ce_teacher's KD student:
                   the same initialisation, data order and augmentation.
                   The teacher's forward pass still runs; no loss reads it.
  Primary: student top-1 of delta=0.4 − two_view_null. Regime checks come
  first: the gate acts, KD transfers (ce_teacher − scratch), and the
  students trained.
  """
  c = _sweep(None)
  c.workers = 2
  c.estimate = True
  c.settings = (
    'ce_teacher: teacher.icc.lam=0.0',
    'two_view_null: teacher.icc.delta=1.0',
    'delta=0.4: teacher.icc.delta=0.4',
    'scratch: teacher.icc.lam=0.0, student.distill.gamma=1.0, '
    'student.distill.alpha=0.0',
  )
  c.controls = ('two_view_null',)
  c.primary_settings = ('delta=0.4', 'two_view_null')
  c.comparisons = 'delta=0.4:ce_teacher, ce_teacher:scratch'
  c.transfer_check = 'ce_teacher:scratch >= 0.01'
  c.regime_checks = (
    'delta=0.4: teacher_gate_pass_rate_last_quarter >= 0.5',
    '*: student_train_accuracy_change_last_fifth < 0.01',
  )
  c.equivalence_margin = 0.01
  c.seeds = c.primary_seeds = (0, 1, 2)
  t, s = c.base.teacher, c.base.student
  # Fashion-MNIST (Debian's dataset-fashion-mnist): 2,000 training images,
  # the whole test split, resnet20 -> resnet8 (3.5x).
  t.dataset.name = 'fashion_mnist'
  t.dataset.train_subset = 2000
  t.model, s.model = 'resnet20', 'resnet8'  # 0.27 M, 0.078 M
  for stage, epochs, decays in ((t, 6, (4, 5)), (s, 5, (3, 4))):
    stage.crop_padding = 2
    stage.log_every_steps = 50
    _schedule(stage, epochs, decays)
  c.reach_train_accuracy = 0.75
  return c
