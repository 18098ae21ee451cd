"""The published methods' losses against naive NumPy references.

Each reference is written from the method's equation and the reference code's
reductions (cited in icckd_jax/objective/student_losses.py), in float64 with
one Python loop per index, so that it is obviously right; it shares no code
with the vectorised JAX functions. Random inputs come from a fixed seed.

Tolerance: the JAX side runs in float32 (unit roundoff 6e-8) through
softmaxes, norms and sums of at most a few hundred terms, so its relative
error is a few 1e-7 at worst; rtol 1e-5 leaves a 10x margin. atol 1e-6 covers
losses near 0, where NST's A + B - 2C cancels terms of order 1.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from icckd_jax import distillers
from icckd_jax.objective import student_losses

RTOL, ATOL = 1e-5, 1e-6

# Jitted, each function compiles once per input shape; run op by op, each of
# its operations would compile separately, several times slower on a CPU.
# Hyperparameters are traced, so a new temperature does not recompile.
DKD = jax.jit(student_losses.dkd_loss)
LS = jax.jit(student_losses.standardize_logits)
DIST = jax.jit(student_losses.dist_loss)
AT = jax.jit(student_losses.at_loss)
NST = jax.jit(student_losses.nst_loss)
SP = jax.jit(student_losses.sp_loss)
PKT = jax.jit(student_losses.pkt_loss)


def rng(seed=0):
  return np.random.default_rng(seed)


def close(actual, expected):
  np.testing.assert_allclose(float(actual), expected, rtol=RTOL, atol=ATOL)


# ----------------------------------------------------------------- references


def ref_softmax(row):
  m = max(row)
  exps = [math.exp(v - m) for v in row]
  total = sum(exps)
  return [e / total for e in exps]


def ref_kl(p, q):
  """Σ p log(p / q), with 0 log 0 = 0."""
  return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q) if pi > 0)


def ref_dkd(s, t, labels, alpha, beta, temperature):
  """Batch means of the binary (target / rest) KL and the non-target KL."""
  batch, classes = s.shape
  tckd = nckd = 0.0
  for i in range(batch):
    q = ref_softmax([s[i, c] / temperature for c in range(classes)])
    p = ref_softmax([t[i, c] / temperature for c in range(classes)])
    y = labels[i]
    rest_q = sum(q[c] for c in range(classes) if c != y)
    rest_p = sum(p[c] for c in range(classes) if c != y)
    tckd += ref_kl([p[y], rest_p], [q[y], rest_q])
    nckd += ref_kl(
      [p[c] / rest_p for c in range(classes) if c != y],
      [q[c] / rest_q for c in range(classes) if c != y],
    )
  return temperature**2 * (alpha * tckd + beta * nckd) / batch


def ref_standardize(row):
  k = len(row)
  mean = sum(row) / k
  std = math.sqrt(sum((v - mean) ** 2 for v in row) / (k - 1))
  return [(v - mean) / (std + 1e-7) for v in row]


def ref_pearson(a, b, eps=1e-8):
  ma, mb = sum(a) / len(a), sum(b) / len(b)
  a = [v - ma for v in a]
  b = [v - mb for v in b]
  dot = sum(x * y for x, y in zip(a, b))
  norm_a = math.sqrt(sum(x * x for x in a))
  norm_b = math.sqrt(sum(y * y for y in b))
  return dot / (norm_a * norm_b + eps)


def ref_dist(s, t, beta, gamma, temperature):
  batch, classes = s.shape
  ys = [
    ref_softmax([s[i, c] / temperature for c in range(classes)])
    for i in range(batch)
  ]
  yt = [
    ref_softmax([t[i, c] / temperature for c in range(classes)])
    for i in range(batch)
  ]
  inter = 1 - sum(ref_pearson(ys[i], yt[i]) for i in range(batch)) / batch
  intra = (
    1
    - sum(
      ref_pearson(
        [ys[i][c] for i in range(batch)], [yt[i][c] for i in range(batch)]
      )
      for c in range(classes)
    )
    / classes
  )
  return temperature**2 * (beta * inter + gamma * intra)


def ref_adaptive_pool(x, height, width):
  """NHWC; output cell i averages input cells floor(i n / m) .. ceil(...)."""
  b, h, w, c = x.shape
  out = np.zeros((b, height, width, c))
  for n in range(b):
    for i in range(height):
      h0, h1 = math.floor(i * h / height), math.ceil((i + 1) * h / height)
      for j in range(width):
        w0, w1 = math.floor(j * w / width), math.ceil((j + 1) * w / width)
        for ch in range(c):
          cells = [x[n, a, e, ch] for a in range(h0, h1) for e in range(w0, w1)]
          out[n, i, j, ch] = sum(cells) / len(cells)
  return out


def ref_match(fs, ft):
  height, width = min(fs.shape[1], ft.shape[1]), min(fs.shape[2], ft.shape[2])
  return (
    ref_adaptive_pool(fs, height, width),
    ref_adaptive_pool(ft, height, width),
  )


def ref_unit(v):
  norm = math.sqrt(sum(x * x for x in v))
  return [x / max(norm, 1e-12) for x in v]


def ref_at(fs, ft, p=2):
  fs, ft = ref_match(np.asarray(fs, np.float64), np.asarray(ft, np.float64))
  batch, h, w, _ = fs.shape

  def attention(f, n):
    channels = f.shape[3]
    return ref_unit(
      [
        sum(abs(f[n, i, j, c]) ** p for c in range(channels)) / channels
        for i in range(h)
        for j in range(w)
      ]
    )

  total = 0.0
  for n in range(batch):
    a_s, a_t = attention(fs, n), attention(ft, n)
    total += sum((x - y) ** 2 for x, y in zip(a_s, a_t))
  return total / (batch * h * w)


def ref_nst(fs, ft):
  fs, ft = ref_match(np.asarray(fs, np.float64), np.asarray(ft, np.float64))
  batch, h, w, _ = fs.shape

  def channel_vectors(f, n):
    return [
      ref_unit([f[n, i, j, c] for i in range(h) for j in range(w)])
      for c in range(f.shape[3])
    ]

  def kernel_mean(xs, ys):
    total, count = 0.0, 0
    for n in range(batch):
      for x in xs[n]:
        for y in ys[n]:
          total += sum(a * b for a, b in zip(x, y)) ** 2
          count += 1
    return total / count

  vs = [channel_vectors(fs, n) for n in range(batch)]
  vt = [channel_vectors(ft, n) for n in range(batch)]
  return kernel_mean(vs, vs) + kernel_mean(vt, vt) - 2 * kernel_mean(vs, vt)


def ref_sp(fs, ft):
  batch = fs.shape[0]

  def gram(f):
    rows = [list(np.asarray(f[i], np.float64).ravel()) for i in range(batch)]
    return [
      ref_unit(
        [sum(a * b for a, b in zip(rows[i], rows[j])) for j in range(batch)]
      )
      for i in range(batch)
    ]

  g_s, g_t = gram(fs), gram(ft)
  return (
    sum(
      (g_t[i][j] - g_s[i][j]) ** 2 for i in range(batch) for j in range(batch)
    )
    / batch**2
  )


def ref_pkt(fs, ft, eps=1e-7):
  batch = fs.shape[0]

  def probabilities(f):
    rows = []
    for i in range(batch):
      v = list(np.asarray(f[i], np.float64).ravel())
      norm = math.sqrt(sum(x * x for x in v))
      rows.append([x / (norm + eps) for x in v])
    sim = [
      [
        (sum(a * b for a, b in zip(rows[i], rows[j])) + 1) / 2
        for j in range(batch)
      ]
      for i in range(batch)
    ]
    return [
      [sim[i][j] / sum(sim[i]) for j in range(batch)] for i in range(batch)
    ]

  q, p = probabilities(fs), probabilities(ft)
  return (
    sum(
      p[i][j] * math.log((p[i][j] + eps) / (q[i][j] + eps))
      for i in range(batch)
      for j in range(batch)
    )
    / batch**2
  )


# -------------------------------------------------------------------- inputs


def logits(shape, seed, scale=3.0):
  return (scale * rng(seed).standard_normal(shape)).astype(np.float32)


def feature_maps(shape, seed):
  return rng(seed).standard_normal(shape).astype(np.float32)


LOGIT_SHAPES = [(1, 5), (4, 2), (8, 10), (3, 7)]
MAP_PAIRS = [
  ((2, 4, 4, 3), (2, 4, 4, 5)),  # same size, different channels
  ((1, 3, 3, 2), (1, 3, 3, 2)),  # one sample
  ((2, 6, 6, 3), (2, 3, 3, 4)),  # student larger, divisible
  ((2, 3, 3, 2), (2, 6, 6, 3)),  # teacher larger
  ((2, 5, 5, 2), (2, 3, 3, 2)),  # not divisible: overlapping windows
  ((2, 6, 4, 2), (2, 3, 2, 3)),  # not square
]


# ------------------------------------------------------------------------ DKD


@pytest.mark.parametrize('shape', LOGIT_SHAPES)
@pytest.mark.parametrize('temperature', [1.0, 4.0])
def test_dkd_matches_reference(shape, temperature):
  s, t = logits(shape, 1), logits(shape, 2)
  labels = rng(3).integers(0, shape[1], shape[0])
  got = DKD(s, t, labels, 1.0, 8.0, temperature)
  close(got, ref_dkd(s, t, labels, 1.0, 8.0, temperature))


def test_dkd_is_linear_in_alpha_and_beta():
  s, t = logits((6, 5), 4), logits((6, 5), 5)
  labels = np.array([0, 1, 2, 3, 4, 0])
  tckd = DKD(s, t, labels, 1.0, 0.0, 2.0)
  nckd = DKD(s, t, labels, 0.0, 1.0, 2.0)
  both = DKD(s, t, labels, 0.5, 8.0, 2.0)
  close(tckd, ref_dkd(s, t, labels, 1.0, 0.0, 2.0))
  close(nckd, ref_dkd(s, t, labels, 0.0, 1.0, 2.0))
  close(both, 0.5 * float(tckd) + 8.0 * float(nckd))
  assert float(DKD(s, t, labels, 0.0, 0.0, 2.0)) == 0.0


def test_dkd_with_a_single_label_value():
  s, t = logits((5, 4), 6), logits((5, 4), 7)
  labels = np.full(5, 2)
  close(DKD(s, t, labels, 1.0, 2.0, 3.0), ref_dkd(s, t, labels, 1.0, 2.0, 3.0))


def test_dkd_rejects_one_class():
  x = logits((3, 1), 8)
  with pytest.raises(ValueError, match='at least 2 classes'):
    DKD(x, x, np.zeros(3, np.int32), 1.0, 1.0, 1.0)


# ------------------------------------------------------------------------- LS


@pytest.mark.parametrize('shape', [(1, 5), (4, 2), (3, 10), (2, 3, 6)])
def test_standardize_logits_matches_reference(shape):
  x = logits(shape, 9)
  got = np.asarray(LS(x))
  rows = x.reshape(-1, shape[-1])
  want = np.array([ref_standardize([float(v) for v in row]) for row in rows])
  assert got.shape == shape
  np.testing.assert_allclose(
    got.reshape(rows.shape), want, rtol=RTOL, atol=ATOL
  )


def test_standardize_logits_has_mean_0_and_unbiased_std_1():
  z = np.asarray(LS(logits((6, 10), 10)), np.float64)
  np.testing.assert_allclose(z.mean(axis=-1), 0.0, atol=ATOL)
  # The authors' torch .std() is unbiased: ddof 1 gives 1, ddof 0 does not.
  np.testing.assert_allclose(z.std(axis=-1, ddof=1), 1.0, rtol=RTOL)
  assert np.all(np.abs(z.std(axis=-1, ddof=0) - 1.0) > 1e-2)


def test_standardize_logits_ignores_shift_and_positive_scale():
  x = logits((4, 7), 11)
  base = np.asarray(LS(x))
  for shift, scale in [(5.0, 1.0), (-3.0, 0.25), (0.0, 10.0), (2.0, 3.0)]:
    moved = LS(scale * x + shift)
    np.testing.assert_allclose(moved, base, rtol=RTOL, atol=ATOL)


def test_standardize_logits_constant_rows_and_one_class():
  np.testing.assert_array_equal(LS(np.full((2, 4), 3.0, np.float32)), 0.0)
  with pytest.raises(ValueError, match='at least 2 classes'):
    LS(logits((3, 1), 12))


# ----------------------------------------------------------------------- DIST


@pytest.mark.parametrize('shape', LOGIT_SHAPES + [(5, 1)])
@pytest.mark.parametrize('temperature', [1.0, 4.0])
def test_dist_matches_reference(shape, temperature):
  s, t = logits(shape, 13), logits(shape, 14)
  close(
    DIST(s, t, 1.0, 2.0, temperature), ref_dist(s, t, 1.0, 2.0, temperature)
  )


def test_dist_degenerate_relations():
  # B = 1: each class column is one value, its correlation 0, intra = 1.
  s, t = logits((1, 6), 15), logits((1, 6), 16)
  close(DIST(s, t, 0.0, 1.0, 1.0), 1.0)
  # K = 1: both relations compare constants, so L = (β + γ) T².
  s, t = logits((4, 1), 17), logits((4, 1), 18)
  close(DIST(s, t, 1.0, 2.0, 3.0), 27.0)


# -------------------------------------------------------------------- AT, NST


@pytest.mark.parametrize('shapes', MAP_PAIRS)
def test_at_matches_reference(shapes):
  fs, ft = feature_maps(shapes[0], 19), feature_maps(shapes[1], 20)
  close(AT(fs, ft), ref_at(fs, ft))


@pytest.mark.parametrize('p', [1, 3, 2.5])
def test_at_other_exponents_use_absolute_values(p):
  fs, ft = feature_maps((2, 4, 4, 3), 21), feature_maps((2, 4, 4, 2), 22)
  close(AT(fs, ft, p=p), ref_at(fs, ft, p=p))


@pytest.mark.parametrize('shapes', MAP_PAIRS)
def test_nst_matches_reference(shapes):
  fs, ft = feature_maps(shapes[0], 23), feature_maps(shapes[1], 24)
  close(NST(fs, ft), ref_nst(fs, ft))


@pytest.mark.parametrize('loss', [AT, NST])
def test_larger_map_is_average_pooled_to_the_smaller(loss):
  """Against 2x2 block means, independent of the adaptive-pool reference."""
  big, small = feature_maps((2, 6, 4, 3), 25), feature_maps((2, 3, 2, 3), 26)
  blocks = big.reshape(2, 3, 2, 2, 2, 3).mean(axis=(2, 4))
  close(loss(big, small), float(loss(blocks, small)))
  close(loss(small, big), float(loss(small, blocks)))


# -------------------------------------------------------------------- SP, PKT


FEATURE_PAIRS = [
  ((1, 6), (1, 4)),
  ((5, 8), (5, 3)),
  ((4, 2, 2, 3), (4, 2, 2, 5)),
]


@pytest.mark.parametrize('shapes', FEATURE_PAIRS)
def test_sp_matches_reference(shapes):
  fs, ft = feature_maps(shapes[0], 27), feature_maps(shapes[1], 28)
  close(SP(fs, ft), ref_sp(fs, ft))


@pytest.mark.parametrize('shapes', FEATURE_PAIRS)
def test_pkt_matches_reference(shapes):
  fs, ft = feature_maps(shapes[0], 29), feature_maps(shapes[1], 30)
  close(PKT(fs, ft), ref_pkt(fs, ft))


def test_sp_and_pkt_are_0_for_one_sample():
  fs, ft = feature_maps((1, 6), 31), feature_maps((1, 4), 32)
  assert float(SP(fs, ft)) == pytest.approx(0, abs=ATOL)
  assert float(PKT(fs, ft)) == pytest.approx(0, abs=ATOL)


def test_zero_features_match_reference():
  """All-zero rows: the norms' eps (clamp or addition) decides the value."""
  fs = feature_maps((3, 4), 33)
  fs[1] = 0.0
  ft = feature_maps((3, 4), 34)
  close(SP(fs, ft), ref_sp(fs, ft))
  close(PKT(fs, ft), ref_pkt(fs, ft))


# -------------------------------------------------- all losses, shared checks


def test_losses_live_in_objective_student_losses_only():
  """The methods import them from there; the registry re-exports none."""
  for name in (
    'dkd_loss',
    'standardize_logits',
    'dist_loss',
    'at_loss',
    'nst_loss',
    'sp_loss',
    'pkt_loss',
  ):
    assert hasattr(student_losses, name)
    assert name not in distillers.__all__
    assert not hasattr(distillers, name)


def _pair_losses(seed):
  """name -> (loss(student, teacher), student, teacher), nothing degenerate."""
  s, t = logits((4, 5), seed), logits((4, 5), seed + 1)
  labels = np.array([0, 3, 3, 1])
  fs, ft = feature_maps((3, 4, 4, 2), seed), feature_maps((3, 2, 2, 3), seed)
  vs, vt = feature_maps((3, 6), seed + 2), feature_maps((3, 4), seed + 3)
  return {
    'dkd': (lambda a, b: DKD(a, b, labels, 1.0, 8.0, 4.0), s, t),
    'dist': (lambda a, b: DIST(a, b, 1.0, 2.0, 4.0), s, t),
    'at': (AT, fs, ft),
    'nst': (NST, fs, ft),
    'sp': (SP, vs, vt),
    'pkt': (PKT, vs, vt),
  }


def test_identical_inputs_give_0_except_dist():
  """DKD, AT, NST, SP and PKT are 0 when student and teacher agree.

  DIST is not: its Pearson eps leaves T² (β + γ) eps / ‖y - ȳ‖² or so, here
  about 2e-5. float32 cannot resolve that: 1 - ρ with ρ near 1 is exact only
  to a few ulp(1) = 1.2e-7, times T² (β + γ) = 48, so only the size is
  checked.
  """
  for name, (loss, s, _) in _pair_losses(35).items():
    value = float(loss(s, s))
    if name == 'dist':
      assert 0.0 < ref_dist(s, s, 1.0, 2.0, 4.0) < 1e-4
      assert abs(value) < 1e-4
    else:
      assert value == pytest.approx(0.0, abs=ATOL), name


def _gradients(loss, s, t):
  return jax.jit(jax.grad(loss, argnums=(0, 1)))(s, t)


def test_gradients_are_finite_and_only_reach_the_student():
  for name, (loss, s, t) in _pair_losses(41).items():
    grad_s, grad_t = _gradients(loss, s, t)
    assert grad_s.shape == s.shape, name
    assert np.all(np.isfinite(grad_s)), name
    # Non-zero: a loss that ignored its student would pass the rest.
    assert np.any(np.asarray(grad_s) != 0.0), name
    np.testing.assert_array_equal(grad_t, 0.0, err_msg=name)


def test_gradients_are_finite_where_a_norm_or_std_is_0():
  """Where a plain sqrt would give an infinite derivative, hence NaN."""
  zeros = np.zeros((3, 4, 4, 2), np.float32)
  one = logits((1, 5), 45)
  weights = logits((2, 5), 46)
  cases = {
    'at': (AT, zeros, zeros),
    'nst': (NST, zeros, zeros),
    'sp': (SP, zeros, zeros),
    'pkt': (PKT, zeros, zeros),
    # One sample: every centred class column of DIST's intra term is 0.
    'dist': (lambda a, b: DIST(a, b, 1.0, 1.0, 2.0), one, one),
    # Constant rows: the std is 0.
    'standardize': (
      lambda a, b: jnp.sum(b * LS(a)),
      np.ones((2, 5), np.float32),
      weights,
    ),
  }
  for name, (loss, s, t) in cases.items():
    grad_s, _ = _gradients(loss, s, t)
    assert np.all(np.isfinite(grad_s)), name
