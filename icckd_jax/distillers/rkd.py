"""Relational knowledge distillation alone, RKD (Park et al., CVPR 2019), as
mdistiller's RKD distiller: cross-entropy plus RKD on the pooled
penultimate features, without the soft-target term.

  L = w_ce · CE(s, y) + β · (w_dist · L_dist + w_angle · L_angle)

Recipe (CIFAR-100, resnet32x4 → resnet8x4): w_ce = 1, β = 1, w_dist = 25,
w_angle = 50, on the pooled features (`pooled_feat`), distances not
squared, eps 1e-12. Source: megvii-research/mdistiller,
mdistiller/engine/cfg.py (CFG.RKD: DISTANCE_WEIGHT 25, ANGLE_WEIGHT 50,
LOSS.CE_WEIGHT 1, LOSS.FEAT_WEIGHT 1, PDIST.SQUARED False, EPSILON 1e-12;
configs/cifar100/rkd.yaml keeps them) and mdistiller/distillers/RKD.py.
Config: `ce_weight`, `beta`, `w_dist`, `w_angle` (β and the two RKD
weights are shared with kd_rkd, whose defaults are the same).

RKD relates the examples of a batch to each other: the features are
all-gathered and the loss is over the global batch (see kd_rkd).
"""

import jax

from icckd_jax.distillers import contract
from icckd_jax.distillers.outputs import Batch
from icckd_jax.objective import losses


def relations(batch: Batch, hp: contract.Hyper) -> jax.Array:
  """[] RKD of the pooled features, over the global batch (kd_rkd's term
  too)."""
  return losses.rkd_loss(
    batch.gather(batch.student.features),
    batch.gather(batch.teacher.features),
    w_dist=hp['w_dist'],
    w_angle=hp['w_angle'],
  )


METHOD = contract.one_term(
  'rkd',
  relations,
  {},
  shared=('beta', 'w_dist', 'w_angle'),
  weight='beta',
)
