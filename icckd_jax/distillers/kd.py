"""Hinton et al.'s knowledge distillation (docs/method.md §4 with β = 0).

  L = γ · CE(s, y) + α · T² · KL(softmax(t / T) || softmax(s / T))
"""

import jax

from icckd_jax.objective import losses
from icckd_jax.distillers.outputs import Outputs


def loss(student: Outputs, teacher: Outputs, labels: jax.Array,
         hp: dict[str, jax.Array], gather) -> tuple[jax.Array, dict]:
  """Per-example terms only, so the local batch mean is all a device needs."""
  del gather
  ce = losses.cross_entropy(student.logits, labels).mean()
  kd = losses.kd_loss(student.logits, teacher.logits, hp['temperature'])
  return hp['gamma'] * ce + hp['alpha'] * kd, {'ce': ce, 'kd': kd}
