"""KD plus relational KD on penultimate features: "Ours+RKD" (docs/method.md §4).

  L = γ · CE(s, y) + α · T² · KL(...) + β · RKD(f_s, f_t)

RKD relates the examples of a batch to each other, so the features are
all-gathered and every device evaluates RKD over the global batch (its
gradient reaches each shard through the all-gather's transpose).
"""

from icckd_jax.distillers import contract
from icckd_jax.distillers import kd
from icckd_jax.distillers import rkd
from icckd_jax.distillers.outputs import Batch


def loss(batch: Batch, hp: contract.Hyper) -> contract.Result:
  """KD's per-example terms, plus RKD over the global batch."""
  total, parts, buffers = kd.loss(batch, hp)
  relations = rkd.relations(batch, hp)
  return (
    total + hp['beta'] * relations,
    {**parts, 'rkd': relations},
    buffers,
  )


METHOD = contract.Method(
  shared=('temperature', 'gamma', 'alpha', 'beta', 'w_dist', 'w_angle'),
  loss=loss,
  task_weight='gamma',
)
