"""KD plus relational KD on penultimate features: "Ours+RKD" (docs/method.md §4).

  L = γ · CE(s, y) + α · T² · KL(...) + β · RKD(f_s, f_t)

RKD relates the examples of a batch to each other, so the features are
all-gathered and every device evaluates RKD over the global batch (its
gradient reaches each shard through the all-gather's transpose).
"""

import jax

from icckd_jax.objective import losses
from icckd_jax.distillers import kd
from icckd_jax.distillers.outputs import Outputs

# The config.distill fields this method reads.
FIELDS = ('temperature', 'gamma', 'alpha', 'beta', 'w_dist', 'w_angle')
NEEDS_STAGES = False
NEEDS_EPOCH = False
STANDARDIZES = False


def loss(
  student: Outputs,
  teacher: Outputs,
  labels: jax.Array,
  hp: dict[str, jax.Array],
  gather,
) -> tuple[jax.Array, dict]:
  total, parts = kd.loss(student, teacher, labels, hp, gather)
  rkd = losses.rkd_loss(
    gather(student.features),
    gather(teacher.features),
    w_dist=hp['w_dist'],
    w_angle=hp['w_angle'],
  )
  return total + hp['beta'] * rkd, {**parts, 'rkd': rkd}
