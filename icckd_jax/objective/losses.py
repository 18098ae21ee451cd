"""Losses of the intra-class contrastive teacher and of the distilled student.

Every function is pure and jit-able with static shapes. They have
single-device semantics: they compute on exactly the arrays they are given.
Under data parallelism the trainer all-gathers keys, labels and margins across
devices first, so that the results do not depend on the device count.

Reductions that decide which terms count (same-class negatives, valid cache
slots, the margin gate) are masks applied with `jnp.where`, never Python
branches, so one compiled program serves every batch.
"""

from typing import Optional

import jax
import jax.numpy as jnp
import optax

MARGIN_KINDS = ('prob', 'logit')


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
  """Scales the last axis to unit Euclidean norm.

  x / max(||x||_2, eps), with x: [..., d] -> [..., d].

  The norm is sqrt(max(||x||^2, eps^2)) rather than max(sqrt(||x||^2), eps):
  sqrt has an infinite derivative at 0, so clamping before it keeps the
  gradient of an all-zero row finite (it is 0 / eps there).

  Args:
    x: [..., d] array.
    eps: lower bound on the norm.

  Returns:
    [..., d] array of the dtype of `x`.
  """
  sq = jnp.sum(jnp.square(x.astype(jnp.float32)), axis=-1, keepdims=True)
  inv = jax.lax.rsqrt(jnp.maximum(sq, eps * eps))
  return (x * inv).astype(x.dtype)


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Per-example softmax cross-entropy with integer labels.

  CE_i = -log softmax(logits_i)[y_i] = logsumexp(logits_i) - logits_i[y_i].

  Args:
    logits: [B, C] of any float dtype; the math runs in float32 so that
      bfloat16 logits do not lose the small differences CE depends on.
    labels: [B] int class indices in [0, C).

  Returns:
    [B] float32 losses.
  """
  return optax.softmax_cross_entropy_with_integer_labels(
    logits.astype(jnp.float32), labels
  )


def margin(
  logits: jax.Array, labels: jax.Array, kind: str = 'prob'
) -> jax.Array:
  """Per-example margin of the true class over the best other class.

  m_i = s_i[y_i] - max_{j != y_i} s_i[j], with s_i = softmax(logits_i) for
  kind='prob' or s_i = logits_i for kind='logit'. Probability margins lie in
  (-1, 1]: -1 is excluded exactly, also where float32 softmax saturates.

  The margin gates the contrastive loss and is never trained through, so the
  result is under stop_gradient.

  Args:
    logits: [B, C] with C >= 2.
    labels: [B] int class indices.
    kind: 'prob' or 'logit'.

  Returns:
    [B] float32 margins.

  Raises:
    ValueError: `kind` is not one of MARGIN_KINDS.
  """
  if kind not in MARGIN_KINDS:
    raise ValueError(
      f'margin kind={kind!r} is unknown; choose one of {MARGIN_KINDS}'
    )
  scores = jax.lax.stop_gradient(logits).astype(jnp.float32)
  if kind == 'prob':
    scores = jax.nn.softmax(scores, axis=-1)
  is_true = jax.nn.one_hot(labels, scores.shape[-1], dtype=jnp.bool_)
  true_score = jnp.sum(jnp.where(is_true, scores, 0.0), axis=-1)
  best_other = jnp.max(jnp.where(is_true, -jnp.inf, scores), axis=-1)
  m = true_score - best_other
  if kind == 'prob':
    # With finite logits p_{y_i} > 0, so the exact margin is > -1, but float32
    # rounds it to -1 once p_{y_i} < 2^-24. Rounding up to the next float
    # instead keeps "δ = -1 passes every anchor" exact.
    m = jnp.maximum(m, jnp.nextafter(jnp.float32(-1), jnp.float32(0)))
  return m


def _masked_logsumexp(x: jax.Array, mask: jax.Array) -> jax.Array:
  """log Σ_{j: mask_j} exp(x_j) over the last axis.

  Every row must keep at least one entry (the contrastive loss always keeps
  its positive), so the shift, the largest kept entry, is finite. Masked
  entries never enter arithmetic (double where): they are replaced by the
  shift before `exp` and their exponentials by 0 after it. Feeding them to
  `exp` directly could overflow to inf, and the gradient of the second where
  would then be 0 · inf = NaN. The shift is a constant for the derivative.

  Args:
    x: [..., n] float32.
    mask: [..., n] bool, True for the entries to include.

  Returns:
    [...] float32.
  """
  shift = jnp.max(jnp.where(mask, x, -jnp.inf), axis=-1, keepdims=True)
  shift = jax.lax.stop_gradient(shift)
  safe_x = jnp.where(mask, x, shift)
  total = jnp.sum(jnp.where(mask, jnp.exp(safe_x - shift), 0.0), axis=-1)
  return jnp.log(total) + shift[..., 0]


def _cache_label_mask(
  labels: jax.Array,
  cache_labels: Optional[jax.Array],
  cache_valid: Optional[jax.Array],
) -> Optional[jax.Array]:
  """[B, M] bool: cache entry c is valid and has the anchor's label.

  Returns None when there is no cache (all of `cache_labels`, `cache_valid`
  None). Raises ValueError when only one of them is given.
  """
  if (cache_labels is None) != (cache_valid is None):
    raise ValueError('cache_labels and cache_valid must be given together')
  if cache_labels is None:
    return None
  return cache_valid[None, :] & (labels[:, None] == cache_labels[None, :])


def _batch_negative_mask(labels: jax.Array) -> jax.Array:
  """[B, B] bool: j is an in-batch negative of i (y_j = y_i and j != i)."""
  same = labels[:, None] == labels[None, :]
  return same & ~jnp.eye(labels.shape[0], dtype=jnp.bool_)


def intra_class_contrastive(
  anchors: jax.Array,
  keys: jax.Array,
  labels: jax.Array,
  temperature: float,
  cache_keys: Optional[jax.Array] = None,
  cache_labels: Optional[jax.Array] = None,
  cache_valid: Optional[jax.Array] = None,
) -> jax.Array:
  """Per-anchor InfoNCE with same-class negatives (docs/method.md §3).

  With s(u, v) = u·v / τ, positive k_i and negatives
  N_i = {k_j : y_j = y_i, j != i} ∪ {c : cache_valid_c, cache_label_c = y_i},

    l_i = -log( exp(s(q_i, k_i)) /
                (exp(s(q_i, k_i)) + Σ_{n ∈ N_i} exp(s(q_i, n))) )
        = logsumexp({s(q_i, k_i)} ∪ {s(q_i, n) : n ∈ N_i}) - s(q_i, k_i).

  l_i = 0 exactly when N_i is empty (with only the positive in the
  denominator the ratio is 1); the gradient is then 0 and finite. In-batch
  negatives k_j carry gradient; cache entries are stale or recomputed
  embeddings and are held constant (stop_gradient).

  Args:
    anchors: [B, d] L2-normalised anchor embeddings q.
    keys: [B, d] L2-normalised key embeddings k; keys[i] is the positive of
      anchors[i].
    labels: [B] int labels.
    temperature: τ > 0.
    cache_keys: [M, d] cached key embeddings, or None for no cache.
    cache_labels: [M] int labels of the cache entries, or None.
    cache_valid: [M] bool, False for slots not yet written, or None.

  Returns:
    [B] float32 per-anchor losses.
  """
  q = anchors.astype(jnp.float32)
  k = keys.astype(jnp.float32)
  pos = jnp.sum(q * k, axis=-1) / temperature
  logits = [pos[:, None], q @ k.T / temperature]
  masks = [
    jnp.ones_like(pos, dtype=jnp.bool_)[:, None],
    _batch_negative_mask(labels),
  ]
  cache_mask = _cache_label_mask(labels, cache_labels, cache_valid)
  if cache_mask is not None:
    c = jax.lax.stop_gradient(cache_keys).astype(jnp.float32)
    logits.append(q @ c.T / temperature)
    masks.append(cache_mask)
  # Column 0, the positive, is always kept, so no row is empty. A row with
  # nothing else kept has its lse shifted by exactly pos: lse = log(1) + pos,
  # so l_i is exactly 0 and so is its gradient.
  mask = jnp.concatenate(masks, axis=1)
  return _masked_logsumexp(jnp.concatenate(logits, axis=1), mask) - pos


def negative_counts(
  labels: jax.Array,
  cache_labels: Optional[jax.Array] = None,
  cache_valid: Optional[jax.Array] = None,
) -> tuple[jax.Array, jax.Array]:
  """Sizes of the two parts of N_i, for the "negatives per anchor" metric.

  in_batch_i = |{j : y_j = y_i, j != i}|,
  cache_i = |{c : cache_valid_c, cache_label_c = y_i}| (0 without a cache).

  Args:
    labels: [B] int labels.
    cache_labels: [M] int labels of the cache entries, or None.
    cache_valid: [M] bool validity of the cache entries, or None.

  Returns:
    (in_batch, cache), each [B] int32.
  """
  in_batch = jnp.sum(_batch_negative_mask(labels), axis=1, dtype=jnp.int32)
  cache_mask = _cache_label_mask(labels, cache_labels, cache_valid)
  if cache_mask is None:
    return in_batch, jnp.zeros_like(in_batch)
  return in_batch, jnp.sum(cache_mask, axis=1, dtype=jnp.int32)


EMPTY_ANCHORS = ('exclude', 'count')


def gated_mean(
  per_anchor: jax.Array,
  margins: jax.Array,
  delta: float,
  has_negatives: Optional[jax.Array] = None,
) -> jax.Array:
  """Mean of the per-anchor losses over the anchors whose margin exceeds δ.

  gate_i = m_i > δ;  L = Σ_i gate_i·l_i / max(Σ_i gate_i, 1).

  With `has_negatives` (docs/method.md §3, "anchors without negatives"), an
  anchor counts only if it also has at least one negative:
  c_i = gate_i ∧ |N_i| > 0 and L = Σ_i c_i·l_i / max(Σ_i c_i, 1). Such an
  anchor's l_i is 0 anyway; leaving it in the denominator would shrink the
  term's weight by the share of anchors without a same-class partner, which
  is what removing the cache changes.

  Probability margins from `margin` lie in (-1, 1], so δ = -1 (and any
  δ < -1) passes every anchor, and δ >= 1 passes none (L = 0). Gated-off
  terms are removed with `jnp.where`, not multiplied by 0, so a non-finite
  loss of a gated-off anchor cannot leak into L or its gradient.

  Args:
    per_anchor: [B] losses l_i.
    margins: [B] margins m_i.
    delta: the threshold δ (a Python float or a traced scalar).
    has_negatives: [B] bool, |N_i| > 0, or None to count every passing
      anchor.

  Returns:
    [] float32.
  """
  counted = margins > delta
  if has_negatives is not None:
    counted = counted & has_negatives
  total = jnp.sum(jnp.where(counted, per_anchor.astype(jnp.float32), 0.0))
  return total / jnp.maximum(jnp.sum(counted, dtype=jnp.float32), 1.0)


def effective_weight(
  margins: jax.Array, delta: float, has_negatives: jax.Array
) -> jax.Array:
  """The share of anchors whose loss reaches L_intra: (1/B)·Σ_i gate_i ∧ |N_i| > 0.

  Args:
    margins: [B] margins m_i.
    delta: the threshold δ.
    has_negatives: [B] bool, |N_i| > 0.

  Returns:
    [] float32 in [0, 1].
  """
  return jnp.mean(((margins > delta) & has_negatives).astype(jnp.float32))


def kd_loss(
  student_logits: jax.Array, teacher_logits: jax.Array, temperature: float
) -> jax.Array:
  """Hinton distillation loss, scaled so its gradient is T-independent.

  L = T² · mean_i Σ_c p_ic (log p_ic - log s_ic),
  p_i = softmax(t_i / T), s_i = softmax(s_i / T); teacher under stop_gradient.

  Args:
    student_logits: [B, C].
    teacher_logits: [B, C].
    temperature: T > 0.

  Returns:
    [] float32.
  """
  t = jax.lax.stop_gradient(teacher_logits).astype(jnp.float32)
  log_p = jax.nn.log_softmax(t / temperature, axis=-1)
  log_s = jax.nn.log_softmax(
    student_logits.astype(jnp.float32) / temperature, axis=-1
  )
  kl = jnp.sum(jnp.exp(log_p) * (log_p - log_s), axis=-1)
  return temperature**2 * jnp.mean(kl)


def _pairwise_distances(x: jax.Array, eps: float) -> jax.Array:
  """[B, d] -> [B, B] Euclidean distances, 0 on the diagonal.

  d_ij = sqrt(max(||x_i - x_j||², eps)). The clamp keeps the derivative of
  sqrt finite for coincident points (there it is 0); the diagonal is then set
  to 0 with `jnp.where`, which passes it no gradient.
  """
  diff = x[:, None, :] - x[None, :, :]
  dist = jnp.sqrt(jnp.maximum(jnp.sum(jnp.square(diff), axis=-1), eps))
  return jnp.where(jnp.eye(x.shape[0], dtype=jnp.bool_), 0.0, dist)


def _normalized_distances(x: jax.Array, eps: float) -> jax.Array:
  """[B, d] -> [B, B] distances divided by their mean over pairs i != j.

  Requires B >= 2. The mean is clamped at eps so that a batch of identical
  points gives zeros instead of NaN.
  """
  n = x.shape[0]
  dist = _pairwise_distances(x, eps)
  mean = jnp.sum(dist) / (n * (n - 1))
  return dist / jnp.maximum(mean, eps)


def _triplet_cosines(x: jax.Array, eps: float) -> jax.Array:
  """[B, d] -> [B, B, B]: a_ijk = cos of the angle at x_i between x_j, x_k.

  a_ijk = <e_ij, e_ik>, e_ij = l2_normalize(x_j - x_i); entries with j = i or
  k = i have a zero vector and are 0.
  """
  unit = l2_normalize(x[None, :, :] - x[:, None, :], eps)
  return jnp.einsum('ijd,ikd->ijk', unit, unit)


def rkd_loss(
  student_feats: jax.Array,
  teacher_feats: jax.Array,
  w_dist: float = 25.0,
  w_angle: float = 50.0,
  eps: float = 1e-12,
) -> jax.Array:
  """Relational KD (Park et al., CVPR 2019): distance plus angle loss.

  With ψ_D(i, j) = d_ij / μ, μ = mean_{i != j} d_ij, and
  ψ_A(i, j, k) = cos∠(x_j - x_i, x_k - x_i),

    L = w_dist · mean_{i,j} H(ψ_D^s - ψ_D^t)
      + w_angle · mean_{i,j,k} H(ψ_A^s - ψ_A^t),

  H the Huber (smooth-L1) loss with delta 1. The means run over all B² pairs
  and B³ triplets, the degenerate ones included (they are 0 on both sides),
  as in the authors' reference code, so that w_dist = 25 and w_angle = 50
  keep their published scale. Teacher features are under stop_gradient.
  Memory is O(B² d + B³).

  Args:
    student_feats: [B, d_s] penultimate student features, B >= 2.
    teacher_feats: [B, d_t] penultimate teacher features.
    w_dist: weight of the distance loss.
    w_angle: weight of the angle loss.
    eps: clamp for squared distances, norms and the mean distance.

  Returns:
    [] float32.
  """
  s = student_feats.astype(jnp.float32)
  t = jax.lax.stop_gradient(teacher_feats).astype(jnp.float32)
  dist_loss = jnp.mean(
    optax.huber_loss(
      _normalized_distances(s, eps), _normalized_distances(t, eps)
    )
  )
  angle_loss = jnp.mean(
    optax.huber_loss(_triplet_cosines(s, eps), _triplet_cosines(t, eps))
  )
  return w_dist * dist_loss + w_angle * angle_loss
