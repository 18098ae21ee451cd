"""Knowledge review, ReviewKD (Chen et al., CVPR 2021).

The student's stage maps and its pooled features (as a 1x1 map), f_1 ..
f_n, are fused from the deepest level up by trainable attention-based
fusion blocks (ABF): level k's map goes through a 1x1 convolution and
BatchNorm to `mid` channels; except at the deepest level, the fused map of
the level below, upsampled (nearest) to this size, is mixed in with two
attention maps (sigmoid of a 1x1 convolution of both); a 3x3 convolution
and BatchNorm then give the output at the teacher's channel count. Each
output is compared with the teacher's pre-ReLU stage map (its pooled
features at the deepest level) by the hierarchical context loss (HCL):
the MSE at full size plus the MSEs after adaptive pooling to 4x4, 2x2, 1x1
(those smaller than the map), weighted 1, 1/2, 1/4, 1/8 and normalised by
the weights' sum, summed over the levels.

  L = w_ce · CE(s, y) + w_rev · min(epoch / warm-up, 1) · Σ_k HCL_k

mid = min(max_mid, the student's deepest channel count). The ABFs are
params['distiller'], their BatchNorm statistics
state.distiller_buffers (synchronised over the devices). The student's maps are its post-ReLU
stages (mdistiller's STU_PREACT False), or its pre-ReLU ones with
`reviewkd_student_preact` (STU_PREACT True, its ImageNet recipes);
mdistiller also passes the stem's map, which no ABF takes for these pairs
(its zip drops it).

Recipe (CIFAR-100, resnet32x4 → resnet8x4): w_ce = 1, w_rev = 5, warm-up
20 epochs, max_mid 512 (so mid 256), post-ReLU student maps. Source:
megvii-research/mdistiller, mdistiller/engine/cfg.py (CFG.REVIEWKD:
CE_WEIGHT 1, WARMUP_EPOCHS 20, MAX_MID_CHANNEL 512, STU_PREACT False),
configs/cifar100/reviewkd.yaml (REVIEWKD_WEIGHT 5) and
mdistiller/distillers/ReviewKD.py. Config: `ce_weight`, `reviewkd_weight`,
`reviewkd_warmup_epochs`, `reviewkd_max_mid`, `reviewkd_student_preact`.
"""

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from icckd_jax.distillers import contract
from icckd_jax.distillers import layers
from icckd_jax.distillers import settings
from icckd_jax.distillers.outputs import Batch, Outputs
from icckd_jax.objective import student_losses

MAX_MID = 512  # mdistiller's CFG.REVIEWKD.MAX_MID_CHANNEL default
PYRAMID = (4, 2, 1)  # HCL's pooled sizes
_INIT_STREAM = 15  # a stream of the run's seed (crd 11-12, vid 13, ofd 14)
# kaiming_uniform_(a=1): gain 1, uniform over fan-in.
_KAIMING_A1 = nn.initializers.variance_scaling(1.0, 'fan_in', 'uniform')


def _upsample(y: jax.Array, height: int, width: int) -> jax.Array:
  """Nearest-neighbour upsampling of [b, h, w, C] by whole factors."""
  return jnp.repeat(
    jnp.repeat(y, height // y.shape[1], axis=1), width // y.shape[2], axis=2
  )


class ABF(nn.Module):
  """One level's attention-based fusion: (its output [b, H, W, C_t], the
  fused map [b, H, W, mid] handed to the level above)."""

  mid: int
  channels: int
  fuse: bool

  @nn.compact
  def __call__(
    self, x: jax.Array, below: jax.Array | None, train: bool
  ) -> tuple[jax.Array, jax.Array]:
    x = layers.batch_norm(train)(
      nn.Conv(self.mid, (1, 1), use_bias=False, kernel_init=_KAIMING_A1)(x)
    )
    if self.fuse:
      y = _upsample(below, x.shape[1], x.shape[2])
      z = nn.sigmoid(nn.Conv(2, (1, 1))(jnp.concatenate([x, y], -1)))
      x = x * z[..., :1] + y * z[..., 1:]
    out = layers.batch_norm(train)(
      nn.Conv(
        self.channels,
        (3, 3),
        padding=1,
        use_bias=False,
        kernel_init=_KAIMING_A1,
      )(x)
    )
    return out, x


def options(distill: Mapping[str, Any]) -> dict:
  """The static keyword arguments of `init` and `loss`: the fusion width's
  cap and which student maps are fused."""
  return {
    'max_mid': int(distill.get('reviewkd_max_mid', MAX_MID)),
    'student_preact': bool(distill.get('reviewkd_student_preact', False)),
  }


def _levels(student: Outputs, teacher: Outputs, student_preact: bool):
  """[(student map, teacher map)] of every level, the deepest first: the
  stages paired by position, then the pooled features as 1x1 maps."""
  maps = student.preact_stages if student_preact else student.stages
  pairs = list(zip(maps, teacher.preact_stages))
  pairs.append(
    (student.features[:, None, None, :], teacher.features[:, None, None, :])
  )
  return pairs[::-1]


def check(student: Outputs, teacher: Outputs) -> str | None:
  """What keeps these networks (Outputs of shapes) from being paired, or
  None: each student stage's fused output is compared with the teacher's
  stage of the same position at its own spatial size (the ABFs adapt
  channels, not sizes)."""
  for k, (s, t) in enumerate(zip(student.stages, teacher.preact_stages)):
    if s.shape[1:3] != t.shape[1:3]:
      return (
        f'stage {k + 1} is {s.shape[1]}x{s.shape[2]} in the student but '
        f'{t.shape[1]}x{t.shape[2]} in the teacher, and the review '
        'connectors adapt channels, not spatial sizes'
      )
  return None


def _abfs(levels, max_mid: int) -> list[ABF]:
  mid = min(max_mid, levels[0][0].shape[-1])
  return [ABF(mid, t.shape[-1], fuse=k > 0) for k, (_, t) in enumerate(levels)]


def init(
  key: jax.Array,
  student: Outputs,
  teacher: Outputs,
  train_labels,
  teacher_params,
  max_mid: int = MAX_MID,
  student_preact: bool = False,
) -> tuple[dict, dict]:
  """(params, buffers): the ABFs' weights and BatchNorm statistics, sized by
  the networks' output shapes (Outputs of jax.ShapeDtypeStruct)."""
  del train_labels, teacher_params
  # Zeros of the outputs' shapes (batch 1), to reshape and apply on.
  student, teacher = jax.tree.map(
    lambda s: jnp.zeros(s.shape, jnp.float32), (student, teacher)
  )
  levels = _levels(student, teacher, student_preact)
  keys = jax.random.split(jax.random.fold_in(key, _INIT_STREAM), len(levels))
  params, stats, below = {}, {}, None
  for k, (abf, (x, _)) in enumerate(zip(_abfs(levels, max_mid), levels)):
    variables = abf.init(keys[k], x, below, train=False)
    _, below = abf.apply(variables, x, below, train=False)
    params[f'abf_{k}'] = variables['params']
    stats[f'abf_{k}'] = variables['batch_stats']
  return params, {'batch_stats': stats}


def hcl(student_map: jax.Array, teacher_map: jax.Array) -> jax.Array:
  """[] the hierarchical context loss of two [b, H, W, C] maps."""
  loss = jnp.mean(jnp.square(student_map - teacher_map))
  weight = total = 1.0
  for size in PYRAMID:
    if size >= student_map.shape[1]:
      continue
    weight /= 2
    pooled = [
      student_losses.pool_to(m, size, size) for m in (student_map, teacher_map)
    ]
    loss += weight * jnp.mean(jnp.square(pooled[0] - pooled[1]))
    total += weight
  return loss / total


def loss(
  batch: Batch,
  hp: contract.Hyper,
  max_mid: int = MAX_MID,
  student_preact: bool = False,
) -> contract.Result:
  """Per-example terms only (BatchNorm synchronised), so the local batch
  mean is all a device needs. Returns (loss, parts, new buffers)."""
  ce = contract.cross_entropy(batch)
  trainable, review, stats, below = batch.trainable, 0.0, {}, None
  levels = _levels(batch.student, batch.teacher, student_preact)
  for k, (abf, (s, t)) in enumerate(zip(_abfs(levels, max_mid), levels)):
    name = f'abf_{k}'
    (out, below), stats[name] = layers.apply_training(
      abf,
      trainable.params[name],
      trainable.buffers['batch_stats'][name],
      s.astype(jnp.float32),
      below,
    )
    review += hcl(out, t.astype(jnp.float32))
  warmup = jnp.minimum(hp['epoch'] / hp['reviewkd_warmup_epochs'], 1.0)
  return (
    hp['ce_weight'] * ce + hp['reviewkd_weight'] * warmup * review,
    {'ce': ce, 'reviewkd': review},
    {'batch_stats': stats},
  )


METHOD = contract.Method(
  shared=('ce_weight',),
  own={
    'reviewkd_weight': settings.weight(
      5.0, 'its weight (cifar100/reviewkd.yaml REVIEWKD_WEIGHT)'
    ),
    'reviewkd_warmup_epochs': settings.weight(
      20.0, 'the warm-up in epochs (CFG.REVIEWKD.WARMUP_EPOCHS)'
    ),
    # Runs saved before these two existed fused post-ReLU maps at 512.
    'reviewkd_max_mid': settings.static(
      MAX_MID,
      'the cap of the fusion width (CFG.REVIEWKD.MAX_MID_CHANNEL)',
      settings.at_least(1),
      added_default=MAX_MID,
    ),
    'reviewkd_student_preact': settings.static(
      False,
      'fuse pre-ReLU student maps (CFG.REVIEWKD.STU_PREACT)',
      added_default=False,
    ),
  },
  loss=loss,
  reads=contract.Reads(stages=True, epoch=True),
  options=options,
  init=init,
  check=check,
)
