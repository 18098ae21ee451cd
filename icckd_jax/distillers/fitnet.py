"""FitNets' hint (Romero et al., ICLR 2015): a trainable regressor maps the
student's hint-stage map onto the teacher's.

  L = w_ce · CE(s, y) + w_fit · mean((R(f^s_h) - f^t_h)²)

R is a convolution, then BatchNorm and ReLU (mdistiller's ConvReg): a 1x1
convolution when the two maps have the same size, else the one of
`Regressor` that matches the sizes. h is the second stage (mdistiller's
HINT_LAYER 2 counts the stem as 0, so feats[2] = `Outputs.stages[1]`). R's
weights are params['distiller'] of the student's state (they train with
the student, in the same optimiser), its BatchNorm statistics
state.distiller_buffers['batch_stats'], synchronised over the devices like the
student's own.

Recipe (CIFAR-100, resnet32x4 → resnet8x4): w_ce = 1, w_fit = 100, hint
layer 2. Source: megvii-research/mdistiller, mdistiller/engine/cfg.py
(CFG.FITNET: HINT_LAYER 2, LOSS.CE_WEIGHT 1, LOSS.FEAT_WEIGHT 100;
configs/cifar100/fitnet.yaml keeps them), mdistiller/distillers/FitNet.py
and _common.py (ConvReg). Config: `ce_weight`, `fitnet_weight`.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from icckd_jax.distillers import contract
from icckd_jax.distillers import layers
from icckd_jax.distillers import settings
from icckd_jax.distillers.outputs import Batch, Outputs

HINT_STAGE = 1  # Outputs.stages[1] = mdistiller's feats[HINT_LAYER = 2]


class Regressor(nn.Module):
  """[b, H_s, W_s, C_s] -> [b, H_t, W_t, C_t]: conv, BatchNorm, ReLU.

  The convolution by the sizes' ratio, as ConvReg: a 3x3 stride-2 one when
  the student's map is twice the teacher's, a 4x4 stride-2 transposed one
  when half, else a valid one of kernel 1 + H_s - H_t (1x1 for equal sizes).
  """

  out_shape: tuple[int, int, int]  # the teacher's (H_t, W_t, C_t)

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    (h_s, w_s), (h_t, w_t, c_t) = x.shape[1:3], self.out_shape
    if h_s == 2 * h_t:
      x = nn.Conv(c_t, (3, 3), strides=2, padding=1)(x)
    elif 2 * h_s == h_t:
      x = nn.ConvTranspose(c_t, (4, 4), strides=(2, 2), padding='SAME')(x)
    elif h_s >= h_t:
      x = nn.Conv(c_t, (1 + h_s - h_t, 1 + w_s - w_t), padding='VALID')(x)
    else:
      raise ValueError(
        f'no hint regressor from a {h_s}x{w_s} map to a {h_t}x{w_t} one'
      )
    return nn.relu(layers.batch_norm(train)(x))


def _regressor(teacher: Outputs) -> Regressor:
  return Regressor(tuple(teacher.stages[HINT_STAGE].shape[1:]))


def init(
  key, student: Outputs, teacher: Outputs, train_labels, teacher_params
) -> tuple[dict, dict | None]:
  """(params, buffers) of the regressor, from the two networks' output
  shapes (`student`, `teacher`: Outputs of jax.ShapeDtypeStruct)."""
  del train_labels, teacher_params
  x = jnp.zeros((1, *student.stages[HINT_STAGE].shape[1:]), jnp.float32)
  variables = _regressor(teacher).init(key, x, train=False)
  return variables['params'], {'batch_stats': variables['batch_stats']}


def loss(batch: Batch, hp: contract.Hyper) -> contract.Result:
  """Per-example terms only (BatchNorm synchronised), so the local batch
  mean is all a device needs. Returns (loss, parts, new buffers)."""
  hint, stats = layers.apply_training(
    _regressor(batch.teacher),
    batch.trainable.params,
    batch.trainable.buffers['batch_stats'],
    batch.student.stages[HINT_STAGE].astype(jnp.float32),
  )
  target = batch.teacher.stages[HINT_STAGE].astype(jnp.float32)
  fit = jnp.mean(jnp.square(hint - target))
  return contract.weighted(
    batch, hp, 'fitnet', fit, hp['fitnet_weight'], {'batch_stats': stats}
  )


METHOD = contract.Method(
  shared=('ce_weight',),
  own={
    'fitnet_weight': settings.weight(
      100.0, 'its weight (CFG.FITNET.LOSS.FEAT_WEIGHT)'
    )
  },
  loss=loss,
  reads=contract.Reads(stages=True),
  init=init,
)
