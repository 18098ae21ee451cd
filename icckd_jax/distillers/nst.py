"""Neuron selectivity transfer, NST (Huang & Wang, 2017).

  L = w_ce · CE(s, y) + w_nst · Σ_k NST(f^s_k, f^t_k)

NST = `objective.student_losses.nst_loss` (polynomial-kernel MMD between the
channels' normalised activation maps), summed over the stage maps f_k
(`Outputs.stages`, paired by position: mdistiller's `feats["feats"][1:]`).

Recipe (CIFAR-100, resnet32x4 → resnet8x4): w_ce = 1, w_nst = 50. Source:
megvii-research/mdistiller, mdistiller/engine/cfg.py (CFG.NST:
LOSS.CE_WEIGHT 1, LOSS.FEAT_WEIGHT 50; configs/cifar100/nst.yaml keeps
them) and mdistiller/distillers/NST.py. Config: `ce_weight`, `nst_weight`.
"""

import jax

from icckd_jax.distillers import contract
from icckd_jax.distillers import settings
from icckd_jax.distillers.outputs import Batch, summed_over_stages
from icckd_jax.objective import student_losses


def selectivity(batch: Batch, hp: contract.Hyper) -> jax.Array:
  """[] Σ_k NST(f^s_k, f^t_k): per-example terms only, so the local batch
  mean is all a device needs."""
  del hp
  return summed_over_stages(
    student_losses.nst_loss, batch.student, batch.teacher
  )


METHOD = contract.one_term(
  'nst',
  selectivity,
  {
    'nst_weight': settings.weight(50.0, 'its weight (CFG.NST.LOSS.FEAT_WEIGHT)')
  },
  reads=contract.Reads(stages=True),
)
