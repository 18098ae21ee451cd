"""Self-supervised KD with singular value decomposition, KDSVD (Lee et al.,
ECCV 2018).

Each stage map (`Outputs.stages`, paired by position) is read as a
[H·W, C] matrix per example and decomposed; the leading right singular
vectors (K of the teacher's, K + 3 of the student's, each normalised) are
sign-aligned (each teacher vector takes the student vector of largest
|cosine|, with that cosine's sign) and scaled by the teacher's normalised
singular values, giving v [b, C, K] per stage. Between consecutive stages
i - 1, i, an RBF compares every channel pair,

  R_i = exp(-(v_i[:, c, None] - v_{i-1}[:, None, c'])² / 8)  [b, C_i, C_{i-1}, K],

and the loss is the squared difference of the student's and the teacher's
R_i (non-finite entries dropped), summed and divided by the batch size:

  L = w_ce · CE(s, y) + w_svd · Σ_{i>0} Σ (R^s_i - R^t_i)² / b

The matrix is the original's NHWC [H·W, C] (sseung0703/SSKD_SVD);
mdistiller reshapes its NCHW maps to [C·H, W] instead, which relates
columns rather than channels (both fit resnet32x4 → resnet8x4, whose
stages agree in size and channels).

Recipe (CIFAR-100, resnet32x4 → resnet8x4): w_ce = 1, w_svd = 1, K = 1.
Source: megvii-research/mdistiller, mdistiller/engine/cfg.py (CFG.KDSVD:
K 1, LOSS.CE_WEIGHT 1, LOSS.FEAT_WEIGHT 1; configs/cifar100/kdsvd.yaml
keeps them) and mdistiller/distillers/KDSVD.py. Config: `ce_weight`,
`kdsvd_weight`.
"""

import jax
import jax.numpy as jnp

from icckd_jax.distillers import contract
from icckd_jax.distillers import settings
from icckd_jax.distillers.outputs import Batch, Outputs, stage_pairs

K = 1  # mdistiller's CFG.KDSVD.K


def check(student: Outputs, teacher: Outputs) -> str | None:
  """What keeps these networks (Outputs of shapes) from being paired, or
  None: the singular vectors of stages paired by position are compared
  channel by channel, with no connector between them."""
  for k, (s, t) in enumerate(stage_pairs(student, teacher)):
    if s.shape[-1] != t.shape[-1]:
      return (
        f'stage {k + 1} has {s.shape[-1]} channels in the student but '
        f'{t.shape[-1]} in the teacher, and kdsvd compares them one to '
        'one, without a connector'
      )
  return None


def _finite(x: jax.Array) -> jax.Array:
  return jnp.where(jnp.isfinite(x), x, 0.0)


def _normalize(x: jax.Array, axis: int) -> jax.Array:
  """x / max(||x||, 1e-12) along `axis` (torch's F.normalize)."""
  return x / jnp.maximum(jnp.linalg.norm(x, axis=axis, keepdims=True), 1e-12)


def svd(feature_map: jax.Array, n: int) -> tuple[jax.Array, jax.Array]:
  """(v [b, C, n], s [b, n]): the leading right singular vectors of each
  example's [H·W, C] matrix, each unit-norm, and its singular values,
  normalised over the n."""
  b, h, w, c = feature_map.shape
  _, s, vh = jnp.linalg.svd(
    feature_map.reshape(b, h * w, c).astype(jnp.float32), full_matrices=False
  )
  v = _finite(jnp.swapaxes(vh, -1, -2))
  return _normalize(v[..., :n], 1), _normalize(_finite(s)[:, :n], 1)


def align(student_v: jax.Array, teacher_v: jax.Array) -> jax.Array:
  """[b, C, K]: for each of the teacher's K vectors, the student's vector
  (of its K + 3) of largest |cosine|, times that cosine's sign."""
  cosine = jnp.einsum('bcm,bck->bmk', student_v, teacher_v)
  best = jnp.abs(cosine) == jnp.max(jnp.abs(cosine), axis=1, keepdims=True)
  return jnp.einsum(
    'bcm,bmk->bck', student_v, jnp.where(best, jnp.sign(cosine), 0.0)
  )


def _rbf(v: jax.Array, previous: jax.Array) -> jax.Array:
  return jnp.exp(-jnp.square(v[:, :, None] - previous[:, None]) / 8)


def kdsvd_loss(student: Outputs, teacher: Outputs) -> jax.Array:
  """[] Σ over consecutive stage pairs of the RBF matrices' squared
  difference, divided by the batch size."""
  total, previous = 0.0, None
  for s_map, t_map in stage_pairs(student, teacher):
    v_t, s_t = svd(t_map, K)
    v_s, _ = svd(s_map, K + 3)
    v_t = v_t * s_t[:, None]
    v_s = align(v_s, v_t) * s_t[:, None]
    if previous is not None:
      diff = jnp.square(
        _rbf(v_s, previous[0]) - jax.lax.stop_gradient(_rbf(v_t, previous[1]))
      )
      total += jnp.sum(_finite(diff))
    previous = (v_s, v_t)
  return total / student.logits.shape[0]


def _term(batch: Batch, hp: contract.Hyper) -> jax.Array:
  """`kdsvd_loss`: per-example terms only, so the local batch mean is all
  a device needs."""
  del hp
  return kdsvd_loss(batch.student, batch.teacher)


METHOD = contract.one_term(
  'kdsvd',
  _term,
  {
    'kdsvd_weight': settings.weight(
      1.0, 'its weight (CFG.KDSVD.LOSS.FEAT_WEIGHT)'
    )
  },
  reads=contract.Reads(stages=True),
  check=check,
)
