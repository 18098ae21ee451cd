"""Probabilistic knowledge transfer, PKT (Passalis & Tefas, ECCV 2018).

  L = w_ce · CE(s, y) + w_pkt · PKT(f_s, f_t)

PKT = `objective.distillation.pkt_loss` (KL between the batch's
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

from icckd_jax.distillers.outputs import Outputs
from icckd_jax.objective import distillation
from icckd_jax.objective import losses

# The config.distill fields this method reads.
FIELDS = ('ce_weight', 'pkt_weight')
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
  ce = losses.cross_entropy(student.logits, labels).mean()
  pkt = distillation.pkt_loss(
    gather(student.features), gather(teacher.features)
  )
  return (hp['ce_weight'] * ce + hp['pkt_weight'] * pkt, {'ce': ce, 'pkt': pkt})
