"""Attention transfer, AT (Zagoruyko & Komodakis, ICLR 2017).

  L = w_ce · CE(s, y) + w_at · Σ_k AT(f^s_k, f^t_k)

AT = `objective.student_losses.at_loss` with p = 2, summed over the stage
maps f_k (`Outputs.stages`, paired by position: mdistiller's
`feats["feats"][1:]`, every stage after the stem).

Recipe (CIFAR-100, resnet32x4 → resnet8x4): w_ce = 1, w_at = 1000, p = 2.
Source: megvii-research/mdistiller, mdistiller/engine/cfg.py (CFG.AT: P 2,
LOSS.CE_WEIGHT 1, LOSS.FEAT_WEIGHT 1000; configs/cifar100/at.yaml keeps
them) and mdistiller/distillers/AT.py. Config: `ce_weight`, `at_weight`
(p is fixed at the recipe's 2).
"""

import jax

from icckd_jax.distillers import contract
from icckd_jax.distillers import settings
from icckd_jax.distillers.outputs import Batch, summed_over_stages
from icckd_jax.objective import student_losses

P = 2  # mdistiller's CFG.AT.P


def attention(batch: Batch, hp: contract.Hyper) -> jax.Array:
  """[] Σ_k AT(f^s_k, f^t_k): per-example terms only, so the local batch
  mean is all a device needs."""
  del hp
  return summed_over_stages(
    lambda s, t: student_losses.at_loss(s, t, P), batch.student, batch.teacher
  )


METHOD = contract.one_term(
  'at',
  attention,
  {
    'at_weight': settings.weight(1000.0, 'its weight (CFG.AT.LOSS.FEAT_WEIGHT)')
  },
  reads=contract.Reads(stages=True),
)
