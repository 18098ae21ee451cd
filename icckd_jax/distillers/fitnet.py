"""FitNets' hint (Romero et al., ICLR 2015): a trainable regressor maps the
student's hint-stage map onto the teacher's.

  L = w_ce · CE(s, y) + w_fit · mean((R(f^s_h) - f^t_h)²)

R is a convolution, then BatchNorm and ReLU (mdistiller's ConvReg): a 1x1
convolution when the two maps have the same size, else the one of
`Regressor` that matches the sizes. h is the second stage (mdistiller's
HINT_LAYER 2 counts the stem as 0, so feats[2] = `Outputs.stages[1]`). R's
weights are params['distiller'] of the student's state (they train with
the student, in the same optimiser), its BatchNorm statistics
state.cache['batch_stats'], synchronised over the devices like the
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
import ml_collections

from icckd_jax import parallel
from icckd_jax.distillers.outputs import Outputs, Trainable
from icckd_jax.objective import losses

# The config.distill fields this method reads.
FIELDS = ('ce_weight', 'fitnet_weight')
NEEDS_STAGES = True
NEEDS_EPOCH = False
STANDARDIZES = False
TRAINABLE = True
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
    # PyTorch's BatchNorm2d defaults; synchronised over the data-parallel
    # devices so that the statistics are those of the global batch.
    x = nn.BatchNorm(
      use_running_average=not train,
      momentum=0.9,
      epsilon=1e-5,
      axis_name=parallel.DATA if train else None,
    )(x)
    return nn.relu(x)


def options(distill: ml_collections.ConfigDict) -> dict:
  """The static keyword arguments of `init` and `loss` (none)."""
  del distill
  return {}


def _regressor(teacher: Outputs) -> Regressor:
  return Regressor(tuple(teacher.stages[HINT_STAGE].shape[1:]))


def init(
  key: jax.Array,
  student: Outputs,
  teacher: Outputs,
  train_labels,
  teacher_params,
) -> tuple[dict, dict]:
  """(params, buffers) of the regressor, from the two networks' output
  shapes (`student`, `teacher`: Outputs of jax.ShapeDtypeStruct)."""
  del train_labels, teacher_params
  x = jnp.zeros((1, *student.stages[HINT_STAGE].shape[1:]), jnp.float32)
  variables = _regressor(teacher).init(key, x, train=False)
  return variables['params'], {'batch_stats': variables['batch_stats']}


def loss(
  student: Outputs,
  teacher: Outputs,
  labels: jax.Array,
  hp: dict[str, jax.Array],
  gather,
  trainable: Trainable,
) -> tuple[jax.Array, dict, dict]:
  """Per-example terms only (BatchNorm synchronised), so the local batch
  mean is all a device needs. Returns (loss, parts, new buffers)."""
  del gather
  ce = losses.cross_entropy(student.logits, labels).mean()
  hint, new_state = _regressor(teacher).apply(
    {'params': trainable.params, **trainable.buffers},
    student.stages[HINT_STAGE].astype(jnp.float32),
    train=True,
    mutable=['batch_stats'],
  )
  target = teacher.stages[HINT_STAGE].astype(jnp.float32)
  fit = jnp.mean(jnp.square(hint - target))
  return (
    hp['ce_weight'] * ce + hp['fitnet_weight'] * fit,
    {'ce': ce, 'fitnet': fit},
    dict(new_state),
  )
