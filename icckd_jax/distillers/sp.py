"""Similarity-preserving KD, SP (Tung & Mori, ICCV 2019).

  L = w_ce · CE(s, y) + w_sp · SP(f^s_N, f^t_N)

SP = `objective.student_losses.sp_loss` (the batch's row-normalised Gram
matrices compared) on the last stage's map f_N (`Outputs.stages[-1]`,
mdistiller's `feats["feats"][-1]`, flattened per example).

Recipe (CIFAR-100, resnet32x4 → resnet8x4): w_ce = 1, w_sp = 3000.
Source: megvii-research/mdistiller, mdistiller/engine/cfg.py (CFG.SP:
LOSS.CE_WEIGHT 1, LOSS.FEAT_WEIGHT 3000; configs/cifar100/sp.yaml keeps
them) and mdistiller/distillers/SP.py. Config: `ce_weight`, `sp_weight`.

The Gram matrix relates the examples of a batch to each other: the maps
are all-gathered and SP is evaluated over the global batch.
"""

import jax

from icckd_jax.distillers import contract
from icckd_jax.distillers import settings
from icckd_jax.distillers.outputs import Batch, last_stages
from icckd_jax.objective import student_losses


def similarity(batch: Batch, hp: contract.Hyper) -> jax.Array:
  """[] SP of the last stage maps, over the global batch."""
  del hp
  s, t = last_stages(batch.student, batch.teacher)
  return student_losses.sp_loss(batch.gather(s), batch.gather(t))


METHOD = contract.one_term(
  'sp',
  similarity,
  {
    'sp_weight': settings.weight(3000.0, 'its weight (CFG.SP.LOSS.FEAT_WEIGHT)')
  },
  reads=contract.Reads(stages=True),
)
