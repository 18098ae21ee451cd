"""Similarity-preserving KD, SP (Tung & Mori, ICCV 2019).

  L = w_ce · CE(s, y) + w_sp · SP(f^s_N, f^t_N)

SP = `objective.distillation.sp_loss` (the batch's row-normalised Gram
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

from icckd_jax.distillers.outputs import Outputs, last_stages
from icckd_jax.objective import distillation
from icckd_jax.objective import losses

# The config.distill fields this method reads.
FIELDS = ('ce_weight', 'sp_weight')
NEEDS_STAGES = True
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
  s, t = last_stages(student, teacher)
  sp = distillation.sp_loss(gather(s), gather(t))
  return hp['ce_weight'] * ce + hp['sp_weight'] * sp, {'ce': ce, 'sp': sp}
