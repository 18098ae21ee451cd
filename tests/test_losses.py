"""Losses against naive NumPy references with explicit loops (docs/method.md §7.4).

The references are deliberately naive (float64, one Python loop per index of
the equation) so that they are obviously right; the library code is masked and
vectorised, and must agree with them.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from icckd_jax.objective import cache as cache_lib
from icckd_jax.objective import losses

TAU = 0.1


# ----------------------------------------------------------------- references


def ref_log_softmax(row):
  m = max(row)
  lse = m + math.log(sum(math.exp(v - m) for v in row))
  return [v - lse for v in row]


def ref_cross_entropy(logits, labels):
  return np.array(
    [-ref_log_softmax(list(logits[i]))[labels[i]] for i in range(len(labels))]
  )


def ref_margin(logits, labels, kind):
  out = []
  for i in range(len(labels)):
    row = list(logits[i])
    if kind == 'prob':
      row = [math.exp(v) for v in ref_log_softmax(row)]
    others = [row[c] for c in range(len(row)) if c != labels[i]]
    out.append(row[labels[i]] - max(others))
  return np.array(out)


def ref_negatives(labels, cache_labels=None, cache_valid=None):
  """Per anchor: the in-batch and the cache indices of its negatives."""
  batch, cache = [], []
  for i in range(len(labels)):
    batch.append(
      [j for j in range(len(labels)) if j != i and labels[j] == labels[i]]
    )
    cache.append(
      []
      if cache_labels is None
      else [
        c
        for c in range(len(cache_labels))
        if cache_valid[c] and cache_labels[c] == labels[i]
      ]
    )
  return batch, cache


def ref_contrastive(q, k, labels, tau, ck=None, cl=None, cv=None):
  q, k = np.asarray(q, np.float64), np.asarray(k, np.float64)
  batch, cache = ref_negatives(labels, cl, cv)
  out = []
  for i in range(len(labels)):
    pos = math.exp(np.dot(q[i], k[i]) / tau)
    neg = sum(math.exp(np.dot(q[i], k[j]) / tau) for j in batch[i])
    neg += sum(
      math.exp(np.dot(q[i], np.asarray(ck[c], np.float64)) / tau)
      for c in cache[i]
    )
    has_negative = batch[i] or cache[i]
    out.append(-math.log(pos / (pos + neg)) if has_negative else 0.0)
  return np.array(out)


def ref_gated_mean(per_anchor, margins, delta):
  total, count = 0.0, 0
  for l, m in zip(per_anchor, margins):
    if m > delta:
      total += l
      count += 1
  return total / max(count, 1)


def ref_kd(s, t, temp):
  total = 0.0
  for i in range(len(s)):
    log_p = ref_log_softmax([v / temp for v in t[i]])
    log_s = ref_log_softmax([v / temp for v in s[i]])
    total += sum(math.exp(a) * (a - b) for a, b in zip(log_p, log_s))
  return temp**2 * total / len(s)


def ref_huber(x):
  return 0.5 * x * x if abs(x) <= 1 else abs(x) - 0.5


def ref_rkd(s, t, w_dist, w_angle):
  s, t = np.asarray(s, np.float64), np.asarray(t, np.float64)
  n = len(s)

  def dist(x):
    d = [
      [float(np.linalg.norm(x[i] - x[j])) for j in range(n)] for i in range(n)
    ]
    mean = sum(d[i][j] for i in range(n) for j in range(n) if i != j)
    mean /= n * (n - 1)
    return [[d[i][j] / mean for j in range(n)] for i in range(n)]

  def angle(x):
    a = np.zeros((n, n, n))
    for i in range(n):
      for j in range(n):
        for k in range(n):
          if j != i and k != i:
            u, v = x[j] - x[i], x[k] - x[i]
            a[i, j, k] = np.dot(u, v) / np.linalg.norm(u) / np.linalg.norm(v)
    return a

  ds, dt = dist(s), dist(t)
  d_loss = (
    sum(ref_huber(ds[i][j] - dt[i][j]) for i in range(n) for j in range(n))
    / n**2
  )
  as_, at = angle(s), angle(t)
  a_loss = (
    sum(
      ref_huber(as_[i, j, k] - at[i, j, k])
      for i in range(n)
      for j in range(n)
      for k in range(n)
    )
    / n**3
  )
  return w_dist * d_loss + w_angle * a_loss


# ---------------------------------------------------------------- fixtures


def unit_rows(rng, n, d):
  x = rng.normal(size=(n, d)).astype(np.float32)
  return x / np.linalg.norm(x, axis=1, keepdims=True)


def assert_finite_tree(tree):
  for leaf in jax.tree_util.tree_leaves(tree):
    assert np.all(np.isfinite(np.asarray(leaf)))


# Labels with a singleton class (anchor 5: no in-batch negative) and pairs.
LABELS = np.array([0, 1, 0, 2, 1, 3, 0, 2], np.int32)
B, D = len(LABELS), 5


def contrastive_case(name):
  """(anchors, keys, labels, cache_keys, cache_labels, cache_valid)."""
  rng = np.random.default_rng(0)
  q, k = unit_rows(rng, B, D), unit_rows(rng, B, D)
  if name == 'no_cache':
    return q, k, LABELS, None, None, None
  if name == 'all_singletons':
    return q, k, np.arange(B, dtype=np.int32), None, None, None
  if name == 'partly_filled':
    # Three slots, two written. The unwritten slot holds the anchors
    # themselves with their labels: similarity 1/τ, which would dominate every
    # loss were it not masked.
    c = cache_lib.create(3, B, (D,), jnp.float32)
    c = cache_lib.push(c, unit_rows(rng, B, D), rng.permutation(LABELS))
    c = cache_lib.push(c, unit_rows(rng, B, D), rng.integers(0, 3, B))
    c = c.replace(items=c.items.at[2].set(q), labels=c.labels.at[2].set(LABELS))
    ck, cl, cv = (np.asarray(a) for a in cache_lib.entries(c))
    assert cv.sum() == 2 * B
    return q, k, LABELS, ck, cl, cv
  if name == 'other_classes':
    # Valid cache entries, none of an anchor's class.
    cl = np.full(2 * B, 9, np.int32)
    return q, k, LABELS, q.repeat(2, axis=0), cl, np.ones(2 * B, bool)
  raise KeyError(name)


CASES = ['no_cache', 'all_singletons', 'partly_filled', 'other_classes']


# --------------------------------------------------------- cross_entropy


def test_cross_entropy_matches_reference():
  rng = np.random.default_rng(1)
  logits = rng.normal(scale=3.0, size=(6, 7)).astype(np.float32)
  labels = rng.integers(0, 7, 6)
  got = losses.cross_entropy(logits, labels)
  np.testing.assert_allclose(
    got, ref_cross_entropy(logits, labels), rtol=1e-5, atol=1e-6
  )
  np.testing.assert_allclose(
    jax.jit(losses.cross_entropy)(logits, labels), got, rtol=1e-6
  )


def test_cross_entropy_bf16_logits_computes_in_float32():
  rng = np.random.default_rng(2)
  logits = jnp.asarray(rng.normal(scale=3.0, size=(6, 7)), jnp.bfloat16)
  labels = rng.integers(0, 7, 6)
  got = losses.cross_entropy(logits, labels)
  assert got.dtype == jnp.float32
  exact = ref_cross_entropy(np.asarray(logits, np.float64), labels)
  np.testing.assert_allclose(got, exact, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------ margin


@pytest.mark.parametrize('kind', ['prob', 'logit'])
def test_margin_matches_reference(kind):
  rng = np.random.default_rng(3)
  logits = rng.normal(scale=2.0, size=(9, 5)).astype(np.float32)
  labels = rng.integers(0, 5, 9)
  got = losses.margin(logits, labels, kind)
  np.testing.assert_allclose(
    got, ref_margin(logits, labels, kind), rtol=1e-5, atol=1e-6
  )
  jitted = jax.jit(losses.margin, static_argnames='kind')(
    logits, labels, kind=kind
  )
  np.testing.assert_allclose(jitted, got, rtol=1e-6)


@pytest.mark.parametrize('kind', ['prob', 'logit'])
def test_margin_is_not_trained_through(kind):
  rng = np.random.default_rng(4)
  logits = rng.normal(size=(4, 3)).astype(np.float32)
  grad = jax.grad(
    lambda x: losses.margin(x, np.array([0, 1, 2, 0]), kind).sum()
  )(logits)
  np.testing.assert_array_equal(grad, 0.0)


def test_margin_unknown_kind_names_the_valid_ones():
  with pytest.raises(ValueError, match=r"'prob'.*'logit'"):
    losses.margin(jnp.zeros((2, 3)), jnp.zeros(2, jnp.int32), 'softmax')


def test_prob_margin_stays_above_minus_one_when_softmax_saturates():
  # p_true = e^-30 rounds -1 + p_true to -1 in float32; the margin must still
  # pass δ = -1, and a saturated correct prediction must not pass δ = 1.
  logits = np.array([[0.0, 30.0], [0.0, 200.0], [200.0, 0.0]], np.float32)
  m = losses.margin(logits, np.zeros(3, np.int32), 'prob')
  assert np.all(np.asarray(m) > -1.0)
  assert np.all(np.asarray(m) <= 1.0)
  np.testing.assert_allclose(m, [-1.0, -1.0, 1.0], atol=1e-7)


# ------------------------------------------------- intra_class_contrastive


def contrastive(q, k, y, ck, cl, cv):
  return losses.intra_class_contrastive(q, k, y, TAU, ck, cl, cv)


@pytest.mark.parametrize('name', CASES)
def test_contrastive_matches_reference(name):
  q, k, y, ck, cl, cv = contrastive_case(name)
  got = contrastive(q, k, y, ck, cl, cv)
  want = ref_contrastive(q, k, y, TAU, ck, cl, cv)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(
    jax.jit(contrastive)(q, k, y, ck, cl, cv), got, rtol=1e-6, atol=1e-6
  )


@pytest.mark.parametrize('name', CASES)
def test_contrastive_is_exactly_zero_without_negatives(name):
  q, k, y, ck, cl, cv = contrastive_case(name)
  batch, cache = ref_negatives(y, cl, cv)
  lonely = np.array([not (b or c) for b, c in zip(batch, cache)])
  got = np.asarray(contrastive(q, k, y, ck, cl, cv))
  assert np.all(got[lonely] == 0.0)
  assert np.all(got[~lonely] > 0.0)
  if name == 'partly_filled':
    # The cache gave the singleton anchor 5 negatives.
    assert not lonely[5]
  else:
    assert lonely[5]


@pytest.mark.parametrize('name', CASES)
def test_contrastive_gradients_are_finite_and_correct(name):
  q, k, y, ck, cl, cv = contrastive_case(name)
  weights = np.random.default_rng(5).uniform(0.5, 1.5, B)

  def total(q, k, ck):
    return jnp.sum(weights * contrastive(q, k, y, ck, cl, cv))

  grads = jax.grad(total, argnums=(0, 1))(q, k, ck)
  assert_finite_tree(grads)
  jit_grads = jax.jit(jax.grad(total, argnums=(0, 1)))(q, k, ck)
  for a, b in zip(grads, jit_grads):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)

  # Directional derivative against a float64 central difference of the
  # reference (cache held fixed: it is a constant for the loss).
  rng = np.random.default_rng(6)
  dq, dk = rng.normal(size=q.shape), rng.normal(size=k.shape)
  h = 1e-4

  def ref_total(eps):
    return np.sum(
      weights * ref_contrastive(q + eps * dq, k + eps * dk, y, TAU, ck, cl, cv)
    )

  numeric = (ref_total(h) - ref_total(-h)) / (2 * h)
  analytic = np.sum(grads[0] * dq) + np.sum(grads[1] * dk)
  np.testing.assert_allclose(analytic, numeric, rtol=1e-3, atol=1e-3)
  if name == 'all_singletons':
    np.testing.assert_array_equal(grads[0], 0.0)
    np.testing.assert_array_equal(grads[1], 0.0)


def test_contrastive_cache_is_not_trained_through():
  q, k, y, ck, cl, cv = contrastive_case('partly_filled')
  grad = jax.grad(lambda c: contrastive(q, k, y, c, cl, cv).sum())(ck)
  np.testing.assert_array_equal(grad, 0.0)


def test_contrastive_other_class_cache_equals_no_cache():
  q, k, y, ck, cl, cv = contrastive_case('other_classes')
  np.testing.assert_array_equal(
    contrastive(q, k, y, ck, cl, cv), contrastive(q, k, y, None, None, None)
  )


def test_contrastive_with_an_empty_cache_equals_no_cache():
  # cache.size = 0 hands the loss arrays with M = 0 entries.
  q, k, y, _, _, _ = contrastive_case('no_cache')
  ck, cl, cv = cache_lib.entries(cache_lib.create(0, B, (D,), jnp.float32))
  np.testing.assert_array_equal(
    contrastive(q, k, y, ck, cl, cv), contrastive(q, k, y, None, None, None)
  )
  counts = losses.negative_counts(y, cl, cv)
  np.testing.assert_array_equal(counts[1], 0)


def test_contrastive_extreme_similarities_stay_finite():
  # Similarities of ±1/τ = ±100: exp(100) overflows float32 without the max
  # shift. Anchor 0 has two negatives 200 above its positive; anchors 1 and 2
  # each have one negative tying the positive and one 200 below it
  # (e^-200 is 0 in float32).
  q = np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]], np.float32)
  k = np.array([[-1.0, 0.0], [1.0, 0.0], [1.0, 0.0]], np.float32)
  y = np.array([0, 0, 0], np.int32)
  f = lambda q, k: losses.intra_class_contrastive(q, k, y, 0.01)
  got = f(q, k)
  log2 = math.log(2.0)
  np.testing.assert_allclose(got, [200.0 + log2, log2, log2], rtol=1e-5)
  assert_finite_tree(jax.grad(lambda q, k: f(q, k).sum(), (0, 1))(q, k))


def test_contrastive_masked_entries_far_above_the_kept_ones_stay_finite():
  # Masked similarities 200 above every kept one (τ = 0.01): exp of them would
  # overflow, and inf · 0 would put NaN into the anchor gradient unless they
  # are replaced before exp (the double where).
  q = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
  k = -q
  y = np.array([0, 1], np.int32)
  ck = np.concatenate([q, q])  # similarity +1 to their anchor
  cl = np.array([0, 1, 0, 1], np.int32)
  cv = np.array([False, False, True, True])
  cv_none = np.zeros(4, bool)

  def total(q, valid):
    return losses.intra_class_contrastive(q, k, y, 0.01, ck, cl, valid).sum()

  assert float(total(q, cv_none)) == 0.0
  for valid in (cv, cv_none):
    assert_finite_tree(jax.grad(total)(q, valid))
  labels_only = cl + 5  # valid entries of other classes are masked too
  grad = jax.grad(
    lambda q: losses.intra_class_contrastive(
      q, k, y, 0.01, ck, labels_only, np.ones(4, bool)
    ).sum()
  )(q)
  np.testing.assert_array_equal(grad, 0.0)


def test_contrastive_needs_cache_labels_and_valid_together():
  q, k, y, ck, cl, _ = contrastive_case('partly_filled')
  with pytest.raises(ValueError, match='together'):
    losses.intra_class_contrastive(q, k, y, TAU, ck, cl, None)


# --------------------------------------------------------- negative_counts


@pytest.mark.parametrize('name', CASES)
def test_negative_counts_match_reference(name):
  _, _, y, _, cl, cv = contrastive_case(name)
  batch, cache = ref_negatives(y, cl, cv)
  got_batch, got_cache = losses.negative_counts(y, cl, cv)
  np.testing.assert_array_equal(got_batch, [len(b) for b in batch])
  np.testing.assert_array_equal(got_cache, [len(c) for c in cache])
  jit_batch, jit_cache = jax.jit(losses.negative_counts)(y, cl, cv)
  np.testing.assert_array_equal(jit_batch, got_batch)
  np.testing.assert_array_equal(jit_cache, got_cache)


# -------------------------------------------------------------- gated_mean


PER_ANCHOR = np.array([0.5, 1.5, 0.0, 2.0, 3.0, 0.7], np.float32)
MARGINS = np.array([-0.9, 0.2, 0.45, 0.39, 0.99, -0.2], np.float32)


@pytest.mark.parametrize(
  'delta', [-5.0, -1.0, -0.5, 0.0, 0.4, 0.9, 0.99, 1.0, 2.0]
)
def test_gated_mean_matches_reference(delta):
  got = losses.gated_mean(PER_ANCHOR, MARGINS, delta)
  want = ref_gated_mean(PER_ANCHOR, MARGINS, delta)
  np.testing.assert_allclose(got, want, rtol=1e-6)
  np.testing.assert_allclose(
    jax.jit(losses.gated_mean)(PER_ANCHOR, MARGINS, delta), got, rtol=1e-6
  )


HAS_NEGATIVES = np.array([True, True, False, True, False, True])


@pytest.mark.parametrize('delta', [-1.0, 0.0, 0.3, 0.4])
def test_gated_mean_leaves_out_anchors_without_negatives(delta):
  """'exclude': an anchor with no negative (l_i = 0) is neither summed nor
  counted, so the mean is over the anchors that pass and have negatives."""
  total, count = 0.0, 0
  for l, m, h in zip(PER_ANCHOR, MARGINS, HAS_NEGATIVES):
    if m > delta and h:
      total, count = total + float(l), count + 1
  got = losses.gated_mean(PER_ANCHOR, MARGINS, delta, HAS_NEGATIVES)
  np.testing.assert_allclose(got, total / max(count, 1), rtol=1e-6)
  # The effective weight counts the same anchors, over all of them.
  np.testing.assert_allclose(
    losses.effective_weight(MARGINS, delta, HAS_NEGATIVES), count / 6, rtol=1e-6
  )


def test_excluding_empty_anchors_undoes_the_dilution():
  """With half the passing anchors lacking a negative, counting them halves
  the term; excluding them restores it (the cache ablation's confound)."""
  per_anchor = np.array([2.0, 0.0, 2.0, 0.0], np.float32)
  margins = np.ones(4, np.float32) * 0.9
  has = np.array([True, False, True, False])
  assert float(losses.gated_mean(per_anchor, margins, 0.4)) == 1.0
  assert float(losses.gated_mean(per_anchor, margins, 0.4, has)) == 2.0


def test_gated_mean_delta_minus_one_passes_every_anchor():
  # Margins from `margin`, including a saturated wrong prediction.
  rng = np.random.default_rng(7)
  logits = rng.normal(scale=3.0, size=(6, 4)).astype(np.float32)
  logits[0] = [0.0, 300.0, 0.0, 0.0]
  m = losses.margin(logits, np.zeros(6, np.int32), 'prob')
  got = losses.gated_mean(PER_ANCHOR, m, -1.0)
  np.testing.assert_allclose(got, PER_ANCHOR.mean(), rtol=1e-6)


@pytest.mark.parametrize('delta', [1.0, 1.5])
def test_gated_mean_delta_at_least_one_passes_none(delta):
  # A saturated correct prediction has a margin of exactly 1.
  logits = np.array([[300.0, 0.0]] * 6, np.float32)
  m = losses.margin(logits, np.zeros(6, np.int32), 'prob')
  assert np.all(np.asarray(m) == 1.0)
  assert float(losses.gated_mean(PER_ANCHOR, m, delta)) == 0.0


def test_gated_mean_all_gated_off_is_zero_with_finite_gradient():
  per_anchor = PER_ANCHOR.copy()
  per_anchor[0] = np.nan  # a gated-off anchor's loss must not leak
  f = lambda l: losses.gated_mean(l, MARGINS, 0.995)
  assert float(f(per_anchor)) == 0.0
  np.testing.assert_array_equal(jax.grad(f)(per_anchor), 0.0)


def test_gated_mean_gradient_reaches_only_gated_anchors():
  per_anchor = PER_ANCHOR.copy()
  per_anchor[0] = np.inf
  grad = jax.grad(lambda l: losses.gated_mean(l, MARGINS, 0.4))(per_anchor)
  gate = MARGINS > 0.4
  np.testing.assert_allclose(grad, np.where(gate, 1.0 / gate.sum(), 0.0))


def test_gated_contrastive_gradients_finite_when_all_gated_off():
  q, k, y, ck, cl, cv = contrastive_case('partly_filled')

  def loss(q, k):
    per_anchor = contrastive(q, k, y, ck, cl, cv)
    return losses.gated_mean(per_anchor, np.zeros(B, np.float32), 1.0)

  grads = jax.grad(loss, (0, 1))(q, k)
  assert_finite_tree(grads)
  np.testing.assert_array_equal(grads[0], 0.0)


# ------------------------------------------------------------------ kd_loss


def test_kd_loss_matches_reference():
  rng = np.random.default_rng(8)
  s = rng.normal(scale=3.0, size=(5, 6)).astype(np.float32)
  t = rng.normal(scale=3.0, size=(5, 6)).astype(np.float32)
  got = losses.kd_loss(s, t, 4.0)
  np.testing.assert_allclose(got, ref_kd(s, t, 4.0), rtol=1e-5)
  np.testing.assert_allclose(jax.jit(losses.kd_loss)(s, t, 4.0), got, rtol=1e-6)
  assert float(got) > 0.0


def test_kd_loss_is_zero_for_identical_logits():
  s = np.random.default_rng(9).normal(size=(5, 6)).astype(np.float32)
  assert abs(float(losses.kd_loss(s, s, 4.0))) < 1e-6


def test_kd_loss_trains_the_student_only():
  rng = np.random.default_rng(10)
  s = rng.normal(size=(5, 6)).astype(np.float32)
  t = rng.normal(size=(5, 6)).astype(np.float32)
  gs, gt = jax.grad(losses.kd_loss, (0, 1))(s, t, 4.0)
  np.testing.assert_array_equal(gt, 0.0)
  assert_finite_tree(gs)
  assert np.abs(gs).max() > 0.0


# ----------------------------------------------------------------- rkd_loss


def test_rkd_loss_matches_reference():
  rng = np.random.default_rng(11)
  s = rng.normal(size=(6, 4)).astype(np.float32)
  t = rng.normal(size=(6, 7)).astype(np.float32)
  got = losses.rkd_loss(s, t)
  np.testing.assert_allclose(got, ref_rkd(s, t, 25.0, 50.0), rtol=1e-4)
  np.testing.assert_allclose(jax.jit(losses.rkd_loss)(s, t), got, rtol=1e-5)
  parts = (losses.rkd_loss(s, t, 1.0, 0.0), losses.rkd_loss(s, t, 0.0, 1.0))
  np.testing.assert_allclose(
    parts, [ref_rkd(s, t, 1.0, 0.0), ref_rkd(s, t, 0.0, 1.0)], rtol=1e-4
  )
  # Large distance differences exercise the linear branch of smooth-L1.
  t_far = t.copy()
  t_far[0] *= 50.0
  np.testing.assert_allclose(
    losses.rkd_loss(s, t_far), ref_rkd(s, t_far, 25.0, 50.0), rtol=1e-4
  )


def test_rkd_loss_is_zero_for_scaled_and_shifted_copies():
  s = np.random.default_rng(12).normal(size=(6, 4)).astype(np.float32)
  assert abs(float(losses.rkd_loss(s, 3.0 * s + 1.0))) < 1e-5


def test_rkd_loss_gradients_finite_with_coincident_points():
  rng = np.random.default_rng(13)
  s = rng.normal(size=(6, 4)).astype(np.float32)
  s[3] = s[1]  # a zero distance and a zero difference vector off the diagonal
  t = rng.normal(size=(6, 5)).astype(np.float32)
  gs, gt = jax.jit(jax.grad(losses.rkd_loss, (0, 1)))(s, t)
  assert_finite_tree(gs)
  assert np.abs(gs).max() > 0.0
  np.testing.assert_array_equal(gt, 0.0)
  all_equal = np.zeros((4, 3), np.float32)
  assert_finite_tree(jax.jit(jax.grad(losses.rkd_loss))(all_equal, t[:4]))


# ------------------------------------------------------------- l2_normalize


def test_l2_normalize_unit_rows_and_finite_gradient_at_zero():
  x = np.array([[3.0, 4.0], [0.0, 0.0]], np.float32)
  np.testing.assert_allclose(losses.l2_normalize(x), [[0.6, 0.8], [0.0, 0.0]])
  assert_finite_tree(jax.grad(lambda x: losses.l2_normalize(x).sum())(x))
