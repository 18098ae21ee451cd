"""Contrastive representation distillation, CRD (Tian et al., ICLR 2020).

Each network's pooled features are embedded (a trainable linear map, then
l2-normalised: e_s, e_t [b, d]). A memory bank holds one embedding per
training example for each network (M_s, M_t [N, d]). For the example of
index i, K negatives j_1..j_K are drawn uniformly among the training
examples of other classes (the authors' 'exact' sampling), and

  P_t(k) = exp(<M_s[k], e_t> / τ) / Z_t,   P_s(k) = exp(<M_t[k], e_s> / τ) / Z_s

for k in (i, j_1..j_K), with Z the mean of exp(·/τ) over the first step's
scores times N, fixed from then on. The loss is the NCE one of each side,

  NCE(P) = -[log(P(i) / (P(i) + K/N)) + Σ_j log((K/N) / (P(j) + K/N))],

  L = w_ce · CE(s, y) + w_crd · mean_batch(NCE(P_s) + NCE(P_t)).

After the scores, the bank's rows of the batch move towards the new
embeddings: M[i] <- normalise(m·M[i] + (1 - m)·e), momentum m.

Here the embeddings' weights are params['distiller'] (trained with the
student), and the banks, Z and the sampling tables
state.distiller_buffers, checkpointed with the state. The bank costs N × d × 4 bytes × 2 (both
networks): 51 MB for CIFAR-100 (N = 50,000, d = 128), 1.31 GB at
ImageNet size (N = 1,281,167). Negatives are drawn with
fold_in(fold_in(key, step), i), the key from the run's seed: the same
for any device count, and a resumed run draws what an uninterrupted one
would. Every device applies the global batch's bank update (all-gathered),
so the replicated banks stay equal.

Recipe (CIFAR-100, resnet32x4 → resnet8x4): w_ce = 1, w_crd = 0.8, d = 128,
K = 16384, τ = 0.07, m = 0.5. Source: megvii-research/mdistiller,
mdistiller/engine/cfg.py (CFG.CRD: FEAT.DIM 128, LOSS.CE_WEIGHT 1,
LOSS.FEAT_WEIGHT 0.8, NCE.K 16384, NCE.MOMENTUM 0.5, NCE.TEMPERATURE 0.07;
configs/cifar100/crd.yaml keeps them), mdistiller/distillers/CRD.py and
its CIFAR-100 instance sampler (mdistiller/dataset/cifar100.py). Config:
`ce_weight`, `crd_weight`, `crd_temperature`, `crd_momentum` (traced),
`crd_dim`, `crd_negatives` (static).
"""

from collections.abc import Mapping
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from icckd_jax.distillers import contract
from icckd_jax.distillers import settings
from icckd_jax.distillers.outputs import Batch, Outputs

EPS = 1e-7  # the authors' ContrastLoss epsilon
# Streams of the run's seed (the model's init uses the seed's key itself).
_INIT_STREAM = 11
_NEGATIVES_STREAM = 12


class Embed(nn.Module):
  """[b, D] features -> [b, d] unit embeddings (linear, then l2 norm)."""

  dim: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    e = nn.Dense(self.dim)(x.astype(jnp.float32))
    return e / jnp.linalg.norm(e, axis=-1, keepdims=True)


def options(distill: Mapping[str, Any]) -> dict:
  """The static keyword arguments of `init` and `loss`."""
  return {
    'dim': int(distill['crd_dim']),
    'negatives': int(distill['crd_negatives']),
  }


def _class_tables(train_labels) -> dict[str, jax.Array]:
  """The split's indices sorted by class ('order' [N]), and each class's
  first position in it and count ([classes] each), to draw other-class
  examples uniformly (`_negatives`)."""
  labels = np.asarray(train_labels)
  order = np.argsort(labels, kind='stable').astype(np.int32)
  count = np.bincount(labels, minlength=labels.max() + 1).astype(np.int32)
  start = (np.cumsum(count) - count).astype(np.int32)
  return {
    'order': jnp.asarray(order),
    'class_start': jnp.asarray(start),
    'class_count': jnp.asarray(count),
  }


def init(
  key: jax.Array,
  student: Outputs,
  teacher: Outputs,
  train_labels,
  teacher_params,
  *,
  dim: int,
  negatives: int,
) -> tuple[dict, dict]:
  """(params, buffers): the two embeddings' weights; the banks [N, d] each
  uniform in ±1/sqrt(d / 3) (as the authors'), Z unset (-1), the sampling
  tables, and the negatives' key (raw uint32 key data, so Orbax stores it).

  `key` is the run's seed's key; `student`, `teacher` Outputs of
  jax.ShapeDtypeStruct.
  """
  del teacher_params, negatives
  n = len(train_labels)
  k_init = jax.random.fold_in(key, _INIT_STREAM)
  k_s, k_t, k_ms, k_mt = jax.random.split(k_init, 4)
  embed = Embed(dim)
  params = {
    'embed_s': embed.init(k_s, jnp.zeros((1, student.features.shape[-1]))),
    'embed_t': embed.init(k_t, jnp.zeros((1, teacher.features.shape[-1]))),
  }
  params = {name: p['params'] for name, p in params.items()}
  bound = 1.0 / math.sqrt(dim / 3)
  bank = lambda k: jax.random.uniform(k, (n, dim), jnp.float32, -bound, bound)
  buffers = {
    'memory_s': bank(k_ms),
    'memory_t': bank(k_mt),
    'z': jnp.full((2,), -1.0, jnp.float32),  # (Z_s, Z_t)
    'key': jax.random.key_data(jax.random.fold_in(key, _NEGATIVES_STREAM)),
    **_class_tables(train_labels),
  }
  return params, buffers


def _negatives(
  buffers: dict,
  labels: jax.Array,
  indices: jax.Array,
  step: jax.Array,
  negatives: int,
) -> jax.Array:
  """[b, K] int32: K indices per example, uniform over the examples of the
  other classes, from fold_in(fold_in(key, step), index)."""
  step_key = jax.random.fold_in(jax.random.wrap_key_data(buffers['key']), step)
  n = buffers['order'].shape[0]

  def draw(label, index):
    start, count = buffers['class_start'][label], buffers['class_count'][label]
    u = jax.random.randint(
      jax.random.fold_in(step_key, index), (negatives,), 0, n - count
    )
    # Skip the anchor's class block in the class-sorted order.
    return buffers['order'][u + count * (u >= start)]

  return jax.vmap(draw)(labels, indices)


def _nce(p: jax.Array, noise: float) -> jax.Array:
  """[b] the NCE loss of scores p [b, 1 + K] (positive first), noise
  K / N."""
  pos = jnp.log(p[:, 0] / (p[:, 0] + noise + EPS))
  neg = jnp.log(noise / (p[:, 1:] + noise + EPS)).sum(-1)
  return -(pos + neg)


def _update_bank(
  bank: jax.Array, indices: jax.Array, e: jax.Array, momentum: jax.Array
) -> jax.Array:
  """The bank with rows `indices` [B] moved towards `e` [B, d], renormed.
  The indices of one batch are distinct (an epoch is a permutation)."""
  rows = momentum * bank[indices] + (1 - momentum) * e
  return bank.at[indices].set(
    rows / jnp.linalg.norm(rows, axis=-1, keepdims=True)
  )


def _scores(
  bank: jax.Array, ids: jax.Array, e: jax.Array, temperature: jax.Array
) -> jax.Array:
  """[b, 1 + K] exp(<bank[ids], e> / τ); the bank's rows carry no
  gradient."""
  rows = jax.lax.stop_gradient(bank[ids])  # [b, 1 + K, d]
  return jnp.exp(jnp.einsum('bkd,bd->bk', rows, e) / temperature)


def _normalizers(
  z: jax.Array, scores: tuple[jax.Array, jax.Array], n: int, gather
) -> jax.Array:
  """(Z_s, Z_t): the stored ones, or at the first step the global mean
  score times N (a constant, as the authors' `.item()`)."""
  first = jnp.stack([gather(s.mean(-1)).mean() for s in scores]) * n
  return jnp.where(z < 0, jax.lax.stop_gradient(first), z)


def loss(
  batch: Batch, hp: contract.Hyper, *, dim: int, negatives: int
) -> contract.Result:
  """Per-example terms against replicated banks, so the local batch mean is
  all a device needs. Returns (loss, parts, new buffers)."""
  trainable, gather = batch.trainable, batch.gather
  buffers, indices = trainable.buffers, trainable.indices
  params = trainable.params
  embed = Embed(dim)
  e_s = embed.apply({'params': params['embed_s']}, batch.student.features)
  e_t = embed.apply({'params': params['embed_t']}, batch.teacher.features)
  n = buffers['memory_s'].shape[0]
  ids = jnp.concatenate(
    [
      indices[:, None],
      _negatives(buffers, batch.labels, indices, trainable.step, negatives),
    ],
    1,
  )
  tau = hp['crd_temperature']
  p_s = _scores(buffers['memory_t'], ids, e_s, tau)  # student vs teacher bank
  p_t = _scores(buffers['memory_s'], ids, e_t, tau)  # teacher vs student bank
  z = _normalizers(buffers['z'], (p_s, p_t), n, gather)
  noise = negatives / n
  crd = jnp.mean(_nce(p_s / z[0], noise) + _nce(p_t / z[1], noise))
  every = gather(indices)
  momentum = hp['crd_momentum']
  new_buffers = {
    **buffers,
    'z': z,
    'memory_s': _update_bank(
      buffers['memory_s'], every, gather(jax.lax.stop_gradient(e_s)), momentum
    ),
    'memory_t': _update_bank(
      buffers['memory_t'], every, gather(jax.lax.stop_gradient(e_t)), momentum
    ),
  }
  return contract.weighted(batch, hp, 'crd', crd, hp['crd_weight'], new_buffers)


METHOD = contract.Method(
  shared=('ce_weight',),
  own={
    'crd_weight': settings.weight(0.8, 'its weight (CFG.CRD.LOSS.FEAT_WEIGHT)'),
    'crd_temperature': settings.Setting(
      0.07, 'τ (CFG.CRD.NCE.TEMPERATURE)', rule=settings.POSITIVE
    ),
    'crd_momentum': settings.Setting(
      0.5,
      "m, the banks' momentum (CFG.CRD.NCE.MOMENTUM)",
      rule=settings.FRACTION,
    ),
    # The embedding's width and the negatives' count shape the step.
    'crd_dim': settings.static(
      128, 'd, the embedding width (CFG.CRD.FEAT.DIM)', settings.at_least(1)
    ),
    'crd_negatives': settings.static(
      16384,
      'K, the negatives per example (CFG.CRD.NCE.K)',
      settings.at_least(1),
    ),
  },
  loss=loss,
  options=options,
  init=init,
)
