r"""The margin-threshold ablation (docs/method.md §6): δ swept, plus two controls.

Settings: δ ∈ {0.0, 0.2, 0.4, 0.6, 0.8}, δ = -1 (ungated: every anchor
counts) and λ = 0 (the plain cross-entropy teacher); for each, every seed
trains a teacher and a student distilled from it (KD).

  # the paper's scale (CIFAR-100, resnet32x4 -> resnet8x4, 240 epochs)
  python launch.py --config=configs/ablation_margin.py --workdir=workdirs/margin
  # 2 CPU cores, converged: real CIFAR-10 (1,600 images), resnet8, 8 + 8
  # epochs at batch 8, 3 seeds, 2 workers; one store shared with the cache
  # ablation, which then reuses the δ = 0.4 runs as its feature-cache runs
  python launch.py --config=configs/ablation_margin.py:cpu \
      --workdir=workdirs/margin --config.store=workdirs/store \
      --config.base.teacher.dataset.path=path/to/cifar10-folder.tar.gz
  # one GPU, full CIFAR-10, resnet32x4 -> resnet8x4, bfloat16, 4 workers,
  # 1 seed: about 7.5 minutes on one H100 (computed, README)
  python launch.py --config=configs/ablation_margin.py:gpu \
      --workdir=workdirs/margin_gpu \
      --config.base.teacher.dataset.path=path/to/cifar10-folder.tar.gz
  # a minute, for tests: two settings, one seed, the synthetic set
  python launch.py --config=configs/ablation_margin.py:smoke --workdir=/tmp/m

Restarting skips finished runs and resumes those in progress; several
commands (machines) may work on one workdir at once (sweep/runner.py). Regenerate
the report of a sweep with configs/report.py.
"""

import ml_collections

from configs import sweep_common

DELTAS = (0.0, 0.2, 0.4, 0.6, 0.8)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = sweep_common.sweep_config(arg)
  c.settings = tuple(f'delta={d}: teacher.icc.delta={d}' for d in DELTAS) + (
    'ungated: teacher.icc.delta=-1.0',
    'ce_teacher: teacher.icc.lam=0.0',
  )
  if arg == 'smoke':
    c.settings = (
      'delta=0.2: teacher.icc.delta=0.2',
      'delta=0.6: teacher.icc.delta=0.6',
    )
  return c
