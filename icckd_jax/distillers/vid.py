"""Variational information distillation, VID (Ahn et al., CVPR 2019).

For each stage pair k (`Outputs.stages`, paired by position: mdistiller's
`feats["feats"][1:]`), the larger map is average-pooled to the smaller's
size, a trainable regressor μ_k (three 1x1 convolutions without bias, ReLU
between) predicts the teacher's map from the student's, and a trainable
per-channel variance σ²_k = softplus(v_k) + ε makes it a Gaussian:

  L = w_ce · CE(s, y) + w_vid · Σ_k mean(½ · ((μ_k(f^s_k) - f^t_k)² / σ²_k
                                              + log σ²_k))

v_k starts where σ² = 5 (softplus(v) = 5 - ε). The regressors and the v_k
are params['distiller']; the method keeps no buffers. mdistiller keeps
the v_k in a plain list, outside its optimiser, so they stay at their
initial value there; RepDistiller (whose run gives the published figure)
trains them, as here.

Recipe (CIFAR-100, resnet32x4 → resnet8x4): w_ce = 1, w_vid = 1,
initial variance 5, ε = 1e-5. Source: megvii-research/mdistiller,
mdistiller/engine/cfg.py (CFG.VID: LOSS.CE_WEIGHT 1, LOSS.FEAT_WEIGHT 1,
INIT_PRED_VAR 5, EPS 1e-5; configs/cifar100/vid.yaml keeps them) and
mdistiller/distillers/VID.py. Config: `ce_weight`, `vid_weight`.
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from icckd_jax.distillers import contract
from icckd_jax.distillers import settings
from icckd_jax.distillers.outputs import Batch, Outputs, stage_pairs
from icckd_jax.objective import student_losses

INIT_VARIANCE = 5.0  # mdistiller's CFG.VID.INIT_PRED_VAR
EPS = 1e-5  # mdistiller's CFG.VID.EPS
_INIT_STREAM = 13  # a stream of the run's seed (crd.py uses 11, 12)


class Regressor(nn.Module):
  """[b, H, W, C_s] -> [b, H, W, C_t]: three 1x1 convolutions, ReLU
  between."""

  channels: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    for i in range(3):
      if i:
        x = nn.relu(x)
      x = nn.Conv(self.channels, (1, 1), use_bias=False)(x)
    return x


def init(
  key, student: Outputs, teacher: Outputs, train_labels, teacher_params
) -> tuple[dict, dict | None]:
  """(params, None): each stage pair's regressor and v [C_t], from the
  maps' shapes (`student`, `teacher`: Outputs of jax.ShapeDtypeStruct)."""
  del train_labels, teacher_params
  params = {}
  keys = jax.random.split(
    jax.random.fold_in(key, _INIT_STREAM), len(student.stages)
  )
  for k, (s, t) in enumerate(stage_pairs(student, teacher)):
    h, w = min(s.shape[1], t.shape[1]), min(s.shape[2], t.shape[2])
    x = jnp.zeros((1, h, w, s.shape[-1]), jnp.float32)
    params[f'regressor_{k}'] = Regressor(t.shape[-1]).init(keys[k], x)['params']
    # softplus(v) + ε = INIT_VARIANCE.
    params[f'log_scale_{k}'] = jnp.full(
      (t.shape[-1],), math.log(math.expm1(INIT_VARIANCE - EPS)), jnp.float32
    )
  return params, None


def loss(batch: Batch, hp: contract.Hyper) -> contract.Result:
  """Per-example terms only, so the local batch mean is all a device needs.
  Returns (loss, parts, None)."""
  params, vid = batch.trainable.params, 0.0
  for k, (s, t) in enumerate(stage_pairs(batch.student, batch.teacher)):
    s, t = student_losses.match_spatial(
      s.astype(jnp.float32), t.astype(jnp.float32)
    )
    mean = Regressor(t.shape[-1]).apply({'params': params[f'regressor_{k}']}, s)
    variance = jax.nn.softplus(params[f'log_scale_{k}']) + EPS
    vid += jnp.mean(0.5 * (jnp.square(mean - t) / variance + jnp.log(variance)))
  return contract.weighted(batch, hp, 'vid', vid, hp['vid_weight'])


METHOD = contract.Method(
  shared=('ce_weight',),
  own={
    'vid_weight': settings.weight(1.0, 'its weight (CFG.VID.LOSS.FEAT_WEIGHT)')
  },
  loss=loss,
  reads=contract.Reads(stages=True),
  init=init,
)
