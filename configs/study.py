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

The capacity study (docs/results/capacity/design.md): a teacher with 6.1x
the student's parameters, and a student trained from scratch beside the KD
students, so that the study first shows that distillation transfers:

  # one GPU: CIFAR-10, resnet32x4 -> resnet8x4, bfloat16, 12 seeds; about
  # 7 minutes on one H100 (projected in the design)
  python launch.py --config=configs/study.py:capacity \
      --workdir=workdirs/capacity \
      --config.base.teacher.dataset.path=path/to/cifar10-folder.tar.gz
  # its pilot on 2 CPU cores: Fashion-MNIST, resnet20 -> resnet8, 3 seeds
  python launch.py --config=configs/study.py:capacity_pilot \
      --workdir=workdirs/capacity_pilot
  # tests: the same sweep on the synthetic set, two seeds
  python launch.py --config=configs/study.py:capacity_smoke --workdir=/tmp/cap

Regenerate the report with configs/report.py.
"""

import ml_collections
from ml_collections import config_dict

from configs import pipeline

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
)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  if arg not in ARGUMENTS:
    raise ValueError(
      f'unknown config argument {arg!r}; valid: '
      + ', '.join(a for a in ARGUMENTS if a)
    )
  if arg and arg.startswith('capacity'):
    return _capacity(arg)
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
  """The capacity study (docs/results/capacity/design.md).

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
  c = ml_collections.ConfigDict()
  c.mode = 'sweep'
  c.workdir = config_dict.placeholder(str)
  c.base = pipeline.get_config('smoke' if arg == 'capacity_smoke' else None)
  c.compilation_cache = c.base.compilation_cache
  c.store = config_dict.placeholder(str)
  c.workers = 4
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
  # (b) KD transfers: ce_teacher's KD student beats scratch by at least
  # this much (top-1, a fraction), with a 95% interval above 0.
  c.transfer_check = 'ce_teacher:scratch >= 0.01'
  # (a) the gate acts at δ = 0.4; (c) every student has trained: its train
  # accuracy moved less than a point over its last fifth of epochs.
  c.regime_checks = (
    'delta=0.4: teacher_gate_pass_rate_last_quarter >= 0.5',
    '*: student_train_accuracy_change_last_fifth < 0.01',
  )
  # Declared before any run: the primary difference is "equivalent" only
  # if a paired TOST at ±1 point of top-1 rejects both sides.
  c.equivalence_margin = 0.01
  c.seeds = tuple(range(12))
  c.primary_seeds = c.seeds
  t, s = c.base.teacher, c.base.student
  if arg == 'capacity':
    # CIFAR-10 from an image-folder archive (--config.base.teacher.dataset.
    # path=...): a fixed 5,000-image training subset, the whole test split.
    t.dataset.name = 'image_folder'
    t.dataset.train_subset = 5000
    # 7.41 M and 1.21 M parameters at 10 classes: 6.1x.
    t.model, s.model = 'resnet32x4', 'resnet8x4'
    schedule = ((t, 15, (10, 13)), (s, 10, (7, 9)))
    for stage, _, _ in schedule:
      stage.dtype = 'bfloat16'
      stage.log_every_steps = 200
    c.reach_train_accuracy = 0.6
  else:
    c.workers = 2
    if arg == 'capacity_pilot':
      # Fashion-MNIST (Debian's dataset-fashion-mnist): 2,000 training
      # images, the whole test split, resnet20 -> resnet8 (3.5x).
      t.dataset.name = 'fashion_mnist'
      t.dataset.train_subset = 2000
      t.model, s.model = 'resnet20', 'resnet8'  # 0.27 M, 0.078 M
      schedule = ((t, 6, (4, 5)), (s, 5, (3, 4)))
      for stage, _, _ in schedule:
        stage.crop_padding = 2
        stage.log_every_steps = 50
      c.seeds = c.primary_seeds = (0, 1, 2)
      c.reach_train_accuracy = 0.75
    else:  # capacity_smoke: the synthetic set, two epochs each
      c.estimate = False
      schedule = ((t, 2, (1,)), (s, 2, (1,)))
      c.seeds = c.primary_seeds = (0, 1)
      c.reach_train_accuracy = 0.2
  for stage, epochs, decay in schedule:
    stage.num_epochs = epochs
    stage.lr_decay_epochs = decay
    stage.eval_every_epochs = epochs
    stage.checkpoint_every_epochs = epochs
  return c
