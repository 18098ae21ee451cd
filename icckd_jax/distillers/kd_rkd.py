"""KD plus relational KD on penultimate features: "Ours+RKD" (docs/method.md §4).

  L = γ · CE(s, y) + α · T² · KL(...) + β · RKD(f_s, f_t)

RKD relates the examples of a batch to each other, so the features are
all-gathered and every device evaluates RKD over the global batch (its
gradient reaches each shard through the all-gather's transpose).
"""

from icckd_jax.distillers import contract
from icckd_jax.distillers import kd
from icckd_jax.distillers.outputs import Outputs, Trainable
from icckd_jax.objective import losses


def loss(
  student: Outputs, teacher: Outputs, labels, hp, gather, trainable: Trainable
) -> contract.Result:
  total, parts, buffers = kd.loss(
    student, teacher, labels, hp, gather, trainable
  )
  rkd = losses.rkd_loss(
    gather(student.features),
    gather(teacher.features),
    w_dist=hp['w_dist'],
    w_angle=hp['w_angle'],
  )
  return total + hp['beta'] * rkd, {**parts, 'rkd': rkd}, buffers


METHOD = contract.Method(
  fields=('temperature', 'gamma', 'alpha', 'beta', 'w_dist', 'w_angle'),
  loss=loss,
)
