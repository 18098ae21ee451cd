"""Hinton et al.'s knowledge distillation (docs/method.md §4 with β = 0).

  L = γ · CE(s, y) + α · T² · KL(softmax(t / T) || softmax(s / T))

Recipe (CIFAR-100, resnet32x4 → resnet8x4): T = 4, γ = 0.1, α = 0.9, the
defaults of these shared settings (settings.py). Source:
megvii-research/mdistiller, mdistiller/engine/cfg.py (CFG.KD: TEMPERATURE
4, CE_WEIGHT 0.1, KD_WEIGHT 0.9; configs/cifar100/kd.yaml keeps them) and
mdistiller/distillers/KD.py.

With config.distill.standardize_logits, the KL term compares
standardize_logits(s) and standardize_logits(t) (Sun et al., CVPR 2024);
CE keeps the raw logits, as in the authors' mdistiller/distillers/KD.py.
Their recipe for this pair (sunshangquan/logit-standardization-KD, README
and tools/train.py `--logit-stand --base-temp 2 --kd-weight 9`) is T = 2,
α = 9, γ = 0.1:

  --config.distill.standardize_logits=True --config.distill.temperature=2 \
      --config.distill.alpha=9
"""

import jax

from icckd_jax.distillers import contract
from icckd_jax.distillers.outputs import Batch, Outputs
from icckd_jax.objective import student_losses
from icckd_jax.objective import losses


def soft_targets(
  student: Outputs, teacher: Outputs, standardize: bool
) -> tuple[jax.Array, jax.Array]:
  """The ([b, K], [b, K]) logits the soft-target term compares: raw, or
  each row standardised (logit standardisation, before the temperature)."""
  if not standardize:
    return student.logits, teacher.logits
  return (
    student_losses.standardize_logits(student.logits),
    student_losses.standardize_logits(teacher.logits),
  )


def loss(
  batch: Batch, hp: contract.Hyper, *, standardize: bool = False
) -> contract.Result:
  """Per-example terms only, so the local batch mean is all a device needs."""
  ce = contract.cross_entropy(batch)
  s, t = soft_targets(batch.student, batch.teacher, standardize)
  kd = losses.kd_loss(s, t, hp['temperature'])
  return (
    hp['gamma'] * ce + hp['alpha'] * kd,
    {'ce': ce, 'kd': kd},
    batch.trainable.buffers,
  )


METHOD = contract.Method(
  shared=('temperature', 'gamma', 'alpha', 'standardize_logits'),
  loss=loss,
  options=contract.standardize_option,
  task_weight='gamma',
)
