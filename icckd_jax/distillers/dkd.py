"""Decoupled knowledge distillation, DKD (Zhao et al., CVPR 2022).

  L = w_ce · CE(s, y) + min(e / W, 1) · (α · TCKD + β · NCKD)

the second term `objective.student_losses.dkd_loss` at temperature T, e the
1-based epoch (hp['epoch'], constant within an epoch) and W the warm-up in
epochs (W = 0: no warm-up).

Recipe (CIFAR-100, resnet32x4 → resnet8x4): w_ce = 1, α = 1, β = 8, T = 4,
W = 20. Source: megvii-research/mdistiller, mdistiller/engine/cfg.py
(CFG.DKD: CE_WEIGHT 1, ALPHA 1, BETA 8, T 4, WARMUP 20), which
configs/cifar100/dkd/res32x4_res8x4.yaml keeps (its other pairs change β
only: 2 for resnet56 → resnet20 and resnet110 → resnet32, 6 for
vgg13 → vgg8, vgg13 → MobileNetV2 and wrn_40_2 → wrn_16_2 / wrn_40_1);
mdistiller/distillers/DKD.py applies min(epoch / WARMUP, 1) with the
trainer's epoch counted from 1 (mdistiller/engine/trainer.py).
Config: `ce_weight`, `dkd_alpha`, `dkd_beta`, `temperature`,
`dkd_warmup_epochs`.

With config.distill.standardize_logits, DKD compares standardised logits
(CE keeps the raw ones), as the authors' mdistiller/distillers/DKD.py does.
Their recipe for this pair (sunshangquan/logit-standardization-KD,
tools/train.py `--logit-stand --base-temp 2 --kd-weight 9`: T = 2 and α, β
multiplied by 9) is T = 2, α = 9, β = 72, w_ce = 1, W = 20:

  --config.distill.standardize_logits=True --config.distill.temperature=2 \
      --config.distill.dkd_alpha=9 --config.distill.dkd_beta=72
"""

import jax
import jax.numpy as jnp

from icckd_jax.distillers import contract
from icckd_jax.distillers import kd
from icckd_jax.distillers import settings
from icckd_jax.distillers.outputs import Batch
from icckd_jax.objective import student_losses


def warmup(epoch: jax.Array, warmup_epochs: jax.Array) -> jax.Array:
  """[] min(epoch / warmup_epochs, 1), and 1 for warmup_epochs <= 0."""
  ramp = epoch / jnp.where(warmup_epochs > 0, warmup_epochs, 1.0)
  return jnp.where(warmup_epochs > 0, jnp.minimum(ramp, 1.0), 1.0)


def loss(
  batch: Batch, hp: contract.Hyper, *, standardize: bool = False
) -> contract.Result:
  """Per-example terms only, so the local batch mean is all a device needs."""
  ce = contract.cross_entropy(batch)
  s, t = kd.soft_targets(batch.student, batch.teacher, standardize)
  dkd = student_losses.dkd_loss(
    s, t, batch.labels, hp['dkd_alpha'], hp['dkd_beta'], hp['temperature']
  )
  factor = warmup(hp['epoch'], hp['dkd_warmup_epochs'])
  return (
    hp['ce_weight'] * ce + factor * dkd,
    {'ce': ce, 'dkd': dkd, 'dkd_warmup': factor},
    batch.trainable.buffers,
  )


METHOD = contract.Method(
  shared=('temperature', 'ce_weight', 'standardize_logits'),
  own={
    'dkd_alpha': settings.weight(1.0, "α, TCKD's weight (CFG.DKD.ALPHA)"),
    'dkd_beta': settings.weight(8.0, "β, NCKD's weight (CFG.DKD.BETA)"),
    'dkd_warmup_epochs': settings.weight(
      20.0, 'W, the warm-up in epochs (CFG.DKD.WARMUP)'
    ),
  },
  loss=loss,
  reads=contract.Reads(epoch=True),
  options=contract.standardize_option,
)
