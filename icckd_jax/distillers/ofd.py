"""Overhaul of feature distillation, OFD (Heo et al., ICCV 2019).

Each student pre-ReLU stage map (`Outputs.preact_stages`, mdistiller's
`feats["preact_feats"][1:]`; the last ones when the counts differ) goes
through a trainable connector (1x1 convolution without bias, then
BatchNorm) to the teacher's channels, and is compared with the teacher's
pre-ReLU map by the partial L2 distance with margin m (per channel):

  d(s, t) = (s - m)² [s > m, t <= m] + (s - t)² [s > t, m < t <= 0]
            + (s - t)² [t > 0]

summed over C, H, W and averaged over the batch; stage i of n weighs
1 / 2^(n - 1 - i) (the last stage most).

  L = w_ce · CE(s, y) + w_ofd · Σ_i d_i / 2^(n - 1 - i)

m is the expectation of the teacher's pre-ReLU value where it is negative,
from the BatchNorm before the ReLU of each stage's last block (scale γ,
shift β; σ = |γ|): m = β - σ · φ(β/σ) / Φ(-β/σ), or -3σ when Φ(-β/σ) <=
0.001. It is computed once, when the student's state is initialised, from
the teacher's parameters, and kept as a buffer (state.distiller_buffers['margins']),
with the connectors' BatchNorm statistics (synchronised over the devices).
The teacher must be a ResNet: of basic blocks, whose BatchNorm before the
ReLU is 'bn2' (resnet8 ... resnet110, resnet8x4, resnet32x4,
imagenet_resnet18/34), or of bottlenecks, whose is 'bn3' (ResNet50,
imagenet_resnet50), as mdistiller's `get_bn_before_relu`; the other
families' BatchNorm before the ReLU is not mapped here. The teacher's map is pooled to the student's size when
larger (mdistiller also stretches a smaller one; equal in every pair of
the benchmark).

Recipe (CIFAR-100, resnet32x4 → resnet8x4): w_ce = 1, w_ofd = 0.001,
connector kernel 1. Source: megvii-research/mdistiller,
mdistiller/engine/cfg.py (CFG.OFD: LOSS.CE_WEIGHT 1, LOSS.FEAT_WEIGHT
0.001, CONNECTOR.KERNEL_SIZE 1; configs/cifar100/ofd.yaml keeps them),
mdistiller/distillers/OFD.py and models/cifar/resnet.py
(get_bn_before_relu). Config: `ce_weight`, `ofd_weight`.
"""

import math
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.scipy.special import ndtr

from icckd_jax.distillers import contract
from icckd_jax.distillers import layers
from icckd_jax.distillers import settings
from icckd_jax.distillers.outputs import Batch, Outputs
from icckd_jax.errors import UserError
from icckd_jax.objective import student_losses

_INIT_STREAM = 14  # a stream of the run's seed (crd.py 11-12, vid.py 13)
_BLOCK = re.compile(r'layer(\d+)_(\d+)$')


class Connector(nn.Module):
  """[b, H, W, C_s] -> [b, H, W, C_t]: 1x1 conv (He-normal over fan-out,
  as the authors'), BatchNorm."""

  channels: int

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    x = nn.Conv(
      self.channels,
      (1, 1),
      use_bias=False,
      kernel_init=nn.initializers.normal(math.sqrt(2.0 / self.channels)),
    )(x)
    return layers.batch_norm(train)(x)


def _bn_before_relu(teacher_params) -> list[dict]:
  """Each stage's last block's BatchNorm before the ReLU, stage by stage: a
  bottleneck's 'bn3', a basic block's 'bn2'."""
  last = {}
  for name in teacher_params:
    match = _BLOCK.match(name)
    if match and 'bn2' in teacher_params[name]:
      stage, block = map(int, match.groups())
      last[stage] = max(last.get(stage, -1), block)
  if not last:
    raise UserError(
      'config.distill.method=ofd needs a ResNet teacher (resnet8 ... '
      'resnet110, resnet8x4, resnet32x4, ResNet50, imagenet_resnet18, '
      'imagenet_resnet34, imagenet_resnet50)'
    )
  blocks = [teacher_params[f'layer{s}_{last[s]}'] for s in sorted(last)]
  return [block.get('bn3', block['bn2']) for block in blocks]


def margin(bn: dict) -> jax.Array:
  """[C] the expected negative response of a BatchNorm's output (OFD)."""
  sigma, mu = jnp.abs(bn['scale']), bn['bias']
  tail = ndtr(-mu / sigma)
  expected = (
    -sigma
    * jnp.exp(-jnp.square(mu / sigma) / 2)
    / math.sqrt(2 * math.pi)
    / jnp.maximum(tail, 1e-3)
    + mu
  )
  return jnp.where(tail > 1e-3, expected, -3 * sigma)


def _aligned(student: Outputs, teacher: Outputs):
  """The last min(count) pre-ReLU maps of each network, paired."""
  n = min(len(student.preact_stages), len(teacher.preact_stages))
  return list(zip(student.preact_stages[-n:], teacher.preact_stages[-n:]))


def init(
  key, student: Outputs, teacher: Outputs, train_labels, teacher_params
) -> tuple[dict, dict | None]:
  """(params, buffers): a connector per stage pair; its BatchNorm
  statistics and the teacher's margins."""
  del train_labels
  margins = [margin(bn) for bn in _bn_before_relu(teacher_params)]
  pairs = _aligned(student, teacher)
  keys = jax.random.split(jax.random.fold_in(key, _INIT_STREAM), len(pairs))
  params, stats = {}, {}
  for i, (s, t) in enumerate(pairs):
    x = jnp.zeros((1, *s.shape[1:]), jnp.float32)
    variables = Connector(t.shape[-1]).init(keys[i], x, train=False)
    params[f'connector_{i}'] = variables['params']
    stats[f'connector_{i}'] = variables['batch_stats']
  # A dict, not a tuple: Orbax restores dicts as they were saved.
  return params, {
    'batch_stats': stats,
    'margins': {
      f'connector_{i}': m for i, m in enumerate(margins[-len(pairs) :])
    },
  }


def partial_l2(source: jax.Array, target: jax.Array, m: jax.Array) -> jax.Array:
  """[] OFD's distance of [b, H, W, C] maps with margin m [C], summed over
  H, W, C and averaged over the batch."""
  d = (
    jnp.square(source - m) * ((source > m) & (target <= m))
    + jnp.square(source - target)
    * ((source > target) & (target > m) & (target <= 0))
    + jnp.square(source - target) * (target > 0)
  )
  return jnp.sum(jnp.mean(d, axis=0))


def loss(batch: Batch, hp: contract.Hyper) -> contract.Result:
  """Per-example terms only (BatchNorm synchronised), so the local batch
  mean is all a device needs. Returns (loss, parts, new buffers)."""
  trainable = batch.trainable
  pairs = _aligned(batch.student, batch.teacher)
  ofd, stats = 0.0, {}
  for i, (s, t) in enumerate(pairs):
    name = f'connector_{i}'
    out, stats[name] = layers.apply_training(
      Connector(t.shape[-1]),
      trainable.params[name],
      trainable.buffers['batch_stats'][name],
      s.astype(jnp.float32),
    )
    out, t = student_losses.match_spatial(out, t.astype(jnp.float32))
    ofd += partial_l2(out, t, trainable.buffers['margins'][name]) / 2 ** (
      len(pairs) - 1 - i
    )
  return contract.weighted(
    batch,
    hp,
    'ofd',
    ofd,
    hp['ofd_weight'],
    {**trainable.buffers, 'batch_stats': stats},
  )


METHOD = contract.Method(
  shared=('ce_weight',),
  own={
    'ofd_weight': settings.weight(
      0.001, 'its weight (CFG.OFD.LOSS.FEAT_WEIGHT)'
    )
  },
  loss=loss,
  reads=contract.Reads(stages=True),
  init=init,
)
