r"""The margin-threshold ablation (docs/method.md §6): δ swept, plus two controls.

Settings: δ ∈ {0.0, 0.2, 0.4, 0.6, 0.8}, δ = -1 (ungated: every anchor
counts) and λ = 0 (the plain cross-entropy teacher); for each, every seed
trains a teacher and a student distilled from it (KD).

  # the paper's scale (CIFAR-100, resnet32x4 -> resnet8x4, 240 epochs)
  python launch.py --config=configs/ablation_margin.py --workdir=workdirs/margin
  # 2 CPU cores, about an hour: real CIFAR-10, resnet8, 3 + 3 epochs, 2 seeds
  python launch.py --config=configs/ablation_margin.py:cpu \
      --workdir=workdirs/margin_cpu \
      --config.base.teacher.dataset.path=path/to/cifar10-folder.tar.gz
  # a minute, for tests: two settings, one seed, the synthetic set
  python launch.py --config=configs/ablation_margin.py:smoke --workdir=/tmp/m

Restarting skips finished runs and resumes the one in progress. Regenerate
the report of a sweep with configs/report.py.
"""

import ml_collections

from configs import sweep_common

DELTAS = (0.0, 0.2, 0.4, 0.6, 0.8)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = sweep_common.sweep_config(arg)
  c.settings = tuple(f'delta={d}: teacher.icc.delta={d}' for d in DELTAS) + (
      'ungated: teacher.icc.delta=-1.0',
      'ce_teacher: teacher.icc.lam=0.0')
  if arg == 'smoke':
    c.settings = ('delta=0.2: teacher.icc.delta=0.2',
                  'delta=0.6: teacher.icc.delta=0.6')
  return c
