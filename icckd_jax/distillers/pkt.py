"""Probabilistic knowledge transfer, PKT (Passalis & Tefas, ECCV 2018).

  L = w_ce · CE(s, y) + w_pkt · PKT(f_s, f_t)

PKT = `objective.student_losses.pkt_loss` (KL between the batch's
cosine-similarity distributions) on the pooled penultimate features
(`Outputs.features`, mdistiller's `pooled_feat`).

Recipe (CIFAR-100, resnet32x4 → resnet8x4): w_ce = 1, w_pkt = 30000.
Source: megvii-research/mdistiller, mdistiller/engine/cfg.py (CFG.PKT:
LOSS.CE_WEIGHT 1, LOSS.FEAT_WEIGHT 30000; configs/cifar100/pkt.yaml keeps
them) and mdistiller/distillers/PKT.py. Config: `ce_weight`, `pkt_weight`.

The similarities relate the examples of a batch to each other: the
features are all-gathered and PKT is evaluated over the global batch.
"""

import jax

from icckd_jax.distillers import contract
from icckd_jax.distillers import settings
from icckd_jax.distillers.outputs import Batch
from icckd_jax.objective import student_losses


def transfer(batch: Batch, hp: contract.Hyper) -> jax.Array:
  """[] PKT of the pooled features, over the global batch."""
  del hp
  return student_losses.pkt_loss(
    batch.gather(batch.student.features), batch.gather(batch.teacher.features)
  )


METHOD = contract.one_term(
  'pkt',
  transfer,
  {
    'pkt_weight': settings.weight(
      30000.0, 'its weight (CFG.PKT.LOSS.FEAT_WEIGHT)'
    )
  },
)
