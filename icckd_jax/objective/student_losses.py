"""The student's losses: the terms of published distillation methods (DKD,
logit standardisation, DIST, AT, NST, SP, PKT), as pure functions, and the
pooling that brings two feature maps to one size. The distillers
(icckd_jax/distillers/) weigh and combine them.

Each function is the loss term of one method, written to give the value of
the authors' or mdistiller's PyTorch code (cited in its docstring) on the
same inputs, with its eps and reductions. Weights that schedule a term over
training (DKD's warm-up) and the cross-entropy on the labels belong to the
distiller that calls these functions, not here.

Conventions: the math runs in float32; the teacher's inputs are under
stop_gradient (the reference code computes the teacher under
torch.no_grad); feature maps are NHWC, as our models produce them, where
PyTorch's are NCHW; square roots of sums of squares that can be 0 are taken
with a double `where`, which gives the same value as a plain sqrt and a
finite gradient at 0.
"""

import jax
import jax.numpy as jnp
import numpy as np

from icckd_jax.objective.losses import l2_normalize


def _safe_sqrt(x: jax.Array) -> jax.Array:
  """sqrt(x) for x >= 0, whose derivative at x = 0 is 0 instead of inf."""
  positive = x > 0
  return jnp.where(positive, jnp.sqrt(jnp.where(positive, x, 1.0)), 0.0)


def _check_classes(logits: jax.Array, name: str) -> int:
  """K of [..., K] logits; raises ValueError for K < 2, where there is no
  second class to compare (the reference code gives NaN)."""
  num_classes = logits.shape[-1]
  if num_classes < 2:
    raise ValueError(f'{name} needs at least 2 classes, got {num_classes}')
  return num_classes


def _float32_pair(
  student: jax.Array, teacher: jax.Array
) -> tuple[jax.Array, jax.Array]:
  """The two networks' arrays in float32, the teacher's under
  stop_gradient (the reference computes it under torch.no_grad)."""
  return (
    student.astype(jnp.float32),
    jax.lax.stop_gradient(teacher).astype(jnp.float32),
  )


def _kl_rows(
  log_p: jax.Array, log_q: jax.Array, where: jax.Array | None = None
) -> jax.Array:
  """Σ_c p_c (log p_c - log q_c) over the last axis, entries not in `where`
  left out. [..., K] -> [...]."""
  terms = jnp.exp(log_p) * (log_p - log_q)
  if where is not None:
    terms = jnp.where(where, terms, 0.0)
  return jnp.sum(terms, axis=-1)


def _target_vs_rest(log_p: jax.Array, is_target: jax.Array) -> jax.Array:
  """[B, K] log-probabilities -> [B, 2]: log p_y and log Σ_{c != y} p_c.

  The rest's mass is a log-sum-exp of log-probabilities, not log(1 - p_y),
  which would round to log 0 once p_y is within float32 precision of 1.
  """
  log_target = jnp.sum(jnp.where(is_target, log_p, 0.0), axis=-1)
  log_rest = jax.nn.logsumexp(log_p, axis=-1, where=~is_target)
  return jnp.stack([log_target, log_rest], axis=-1)


def dkd_loss(
  student_logits: jax.Array,
  teacher_logits: jax.Array,
  labels: jax.Array,
  alpha: float,
  beta: float,
  temperature: float,
) -> jax.Array:
  """Decoupled knowledge distillation (Zhao et al., CVPR 2022).

  With p = softmax(t / T), q = softmax(s / T), the binary split
  b(p) = (p_y, Σ_{c != y} p_c) and the non-target distribution
  p̂_c = p_c / Σ_{c' != y} p_c' for c != y,

    TCKD = T² · mean_i KL(b(p_i) || b(q_i)),
    NCKD = T² · mean_i KL(p̂_i || q̂_i),
    L = α · TCKD + β · NCKD.

  Source: megvii-research/mdistiller, mdistiller/distillers/DKD.py
  (`dkd_loss`): each KL is summed over classes and divided by the batch
  size (`size_average=False`, `/ target.shape[0]`), i.e. the batch mean of
  per-sample sums. The reference removes the target class from the
  non-target softmax by subtracting 1000 from its logit / T; here it is
  masked out exactly, which gives the same float32 value (its e^-1000
  residual is 0 in float32).

  Not included: DKD's warm-up factor min(epoch / warmup, 1) and the
  cross-entropy on the labels. mdistiller applies both in the distiller
  (`DKD.forward_train`), and so does ours.

  Args:
    student_logits: [B, K] with K >= 2.
    teacher_logits: [B, K], under stop_gradient.
    labels: [B] int class indices in [0, K).
    alpha: weight α of TCKD.
    beta: weight β of NCKD.
    temperature: T > 0.

  Returns:
    [] float32.

  Raises:
    ValueError: K < 2; there is no non-target class, and the reference code
      gives NaN (0 · log 0 in the rest's KL term).
  """
  num_classes = _check_classes(student_logits, 'dkd_loss')
  s, t = _float32_pair(student_logits, teacher_logits)
  log_q = jax.nn.log_softmax(s / temperature, axis=-1)
  log_p = jax.nn.log_softmax(t / temperature, axis=-1)
  is_target = jax.nn.one_hot(labels, num_classes, dtype=jnp.bool_)
  b_p = _target_vs_rest(log_p, is_target)
  b_q = _target_vs_rest(log_q, is_target)
  tckd = _kl_rows(b_p, b_q)
  # log p̂_c = log p_c - log Σ_{c' != y} p_c'; the target's entry is masked.
  nckd = _kl_rows(log_p - b_p[:, 1:], log_q - b_q[:, 1:], where=~is_target)
  return temperature**2 * (alpha * jnp.mean(tckd) + beta * jnp.mean(nckd))


def standardize_logits(logits: jax.Array) -> jax.Array:
  """Logit standardisation (Sun et al., CVPR 2024, "Logit Standardization in
  Knowledge Distillation").

  z̃ = (z - mean(z)) / (std(z) + 1e-7), over the last axis, where std is the
  unbiased (ddof = 1) standard deviation.

  Source: sunshangquan/logit-standardization-KD,
  mdistiller/distillers/KD.py (`normalize`): `logit.std(dim=-1)`, which is
  PyTorch's unbiased estimate, and eps 1e-7 added to the std (not to the
  variance). So the output's unbiased std is 1 (up to eps), its population
  std sqrt((K - 1) / K). A sample with all logits equal maps to zeros.

  Args:
    logits: [..., K] with K >= 2.

  Returns:
    [..., K] float32.

  Raises:
    ValueError: K < 2; the unbiased std of one value is undefined (NaN in
      the reference code).
  """
  num_classes = _check_classes(logits, 'standardize_logits')
  z = logits.astype(jnp.float32)
  centred = z - jnp.mean(z, axis=-1, keepdims=True)
  var = jnp.sum(jnp.square(centred), axis=-1, keepdims=True) / (num_classes - 1)
  return centred / (_safe_sqrt(var) + 1e-7)


def _pearson_rows(a: jax.Array, b: jax.Array, eps: float = 1e-8) -> jax.Array:
  """[N, M], [N, M] -> [N]: per row, ⟨a - ā, b - b̄⟩ / (‖a - ā‖ ‖b - b̄‖ + eps).

  A constant row has correlation 0 (numerator 0, denominator eps).
  """
  a = a - jnp.mean(a, axis=-1, keepdims=True)
  b = b - jnp.mean(b, axis=-1, keepdims=True)
  norms = _safe_sqrt(jnp.sum(jnp.square(a), axis=-1)) * _safe_sqrt(
    jnp.sum(jnp.square(b), axis=-1)
  )
  return jnp.sum(a * b, axis=-1) / (norms + eps)


def dist_loss(
  student_logits: jax.Array,
  teacher_logits: jax.Array,
  beta: float,
  gamma: float,
  temperature: float,
) -> jax.Array:
  """DIST, "Knowledge Distillation from A Stronger Teacher" (Huang et al.,
  NeurIPS 2022).

  With Y^s = softmax(s / T), Y^t = softmax(t / T) row-wise, [B, K], and
  ρ the Pearson correlation with eps 1e-8 in the denominator,

    inter = 1 - mean_i ρ(Y^s_i,:, Y^t_i,:)   (each sample, across classes),
    intra = 1 - mean_c ρ(Y^s_:,c, Y^t_:,c)   (each class, across the batch),
    L = T² · (β · inter + γ · intra).

  Source: hunto/image_classification_sota, lib/models/losses/dist_kd.py
  (`DIST`, the DIST_KD repository's classification code;
  yoshitomo-matsubara/torchdistill's `DISTLoss` is the same): the means are
  plain means over samples / classes, and ρ = ⟨a, b⟩ / (‖a‖ ‖b‖ + 1e-8) of
  the centred vectors. Because of that eps, identical inputs give a loss
  slightly above 0 (about eps / ‖Y - Ȳ‖², per row). With B = 1 every class
  column is constant, so intra = 1 with zero gradient; with K = 1 both
  relations are 1.

  Args:
    student_logits: [B, K].
    teacher_logits: [B, K], under stop_gradient.
    beta: weight β of the inter-class relation.
    gamma: weight γ of the intra-class relation.
    temperature: T > 0.

  Returns:
    [] float32.
  """
  s, t = _float32_pair(student_logits, teacher_logits)
  y_s = jax.nn.softmax(s / temperature, -1)
  y_t = jax.nn.softmax(t / temperature, -1)
  inter = 1.0 - jnp.mean(_pearson_rows(y_s, y_t))
  intra = 1.0 - jnp.mean(_pearson_rows(y_s.T, y_t.T))
  return temperature**2 * (beta * inter + gamma * intra)


def _adaptive_pool_matrix(size_in: int, size_out: int) -> np.ndarray:
  """[size_out, size_in] weights of PyTorch's adaptive average pooling.

  Output cell i averages input cells floor(i·n/m) .. ceil((i+1)·n/m) - 1
  (n = size_in, m = size_out), as `torch.nn.AdaptiveAvgPool*d` does; when m
  divides n that is plain n/m-wide average pooling.
  """
  out = np.arange(size_out)
  starts = out * size_in // size_out
  ends = -(-(out + 1) * size_in // size_out)
  cells = np.arange(size_in)
  inside = (cells >= starts[:, None]) & (cells < ends[:, None])
  return (inside / inside.sum(axis=1, keepdims=True)).astype(np.float32)


def _pool_to(x: jax.Array, height: int, width: int) -> jax.Array:
  """Adaptive average pooling of NHWC [B, H, W, C] to [B, height, width, C]."""
  if x.shape[1:3] == (height, width):
    return x
  rows = _adaptive_pool_matrix(x.shape[1], height)
  cols = _adaptive_pool_matrix(x.shape[2], width)
  return jnp.einsum('ih,jw,bhwc->bijc', rows, cols, x)


def _match_spatial(
  student_map: jax.Array, teacher_map: jax.Array
) -> tuple[jax.Array, jax.Array]:
  """Pools the larger of two NHWC maps down to the other's spatial size.

  Each spatial axis goes to the smaller of the two sizes. mdistiller
  compares only H and pools to a square (its maps are square); for square
  maps the two agree.
  """
  height = min(student_map.shape[1], teacher_map.shape[1])
  width = min(student_map.shape[2], teacher_map.shape[2])
  return (
    _pool_to(student_map, height, width),
    _pool_to(teacher_map, height, width),
  )


def pool_to(x: jax.Array, height: int, width: int) -> jax.Array:
  """PyTorch's adaptive average pooling of NHWC [B, H, W, C] to [B,
  height, width, C] (ReviewKD's pyramid)."""
  return _pool_to(x, height, width)


def match_spatial(
  student_map: jax.Array, teacher_map: jax.Array
) -> tuple[jax.Array, jax.Array]:
  """The two NHWC maps at the smaller one's spatial size (the larger
  adaptively average-pooled), for a method that compares them cell by
  cell (VID)."""
  return _match_spatial(student_map, teacher_map)


def at_loss(
  student_map: jax.Array, teacher_map: jax.Array, p: float = 2
) -> jax.Array:
  """Attention transfer (Zagoruyko & Komodakis, ICLR 2017), one pair of maps.

  With the attention map a(f)_b = l2_normalize(vec(mean_c |f_b,:,:,c|^p)),
  a vector over the H·W positions,

    L = mean_{b, n} (a(f^s)_b,n - a(f^t)_b,n)².

  Source: megvii-research/mdistiller, mdistiller/distillers/AT.py
  (`single_stage_at_loss`, `(_at(f_s) - _at(f_t)).pow(2).mean()`): the mean
  runs over the batch and the positions; `F.normalize` divides by
  max(‖·‖, 1e-12). mdistiller's `at_loss` sums this over several stages;
  callers sum calls of this function. The reference raises f to the power p
  without |·|; the paper sums |f|^p. The two agree for even p (p = 2 is the
  reference's and the paper's setting); this function follows the paper.

  If the spatial sizes differ, the larger map is average-pooled to the
  smaller one first (adaptive average pooling, as mdistiller does with
  `F.adaptive_avg_pool2d`). Channel counts may differ.

  Args:
    student_map: [B, H_s, W_s, C_s] NHWC features (PyTorch's are NCHW).
    teacher_map: [B, H_t, W_t, C_t], under stop_gradient.
    p: the exponent p > 0.

  Returns:
    [] float32.
  """

  def attention(f):
    a = jnp.mean(jnp.abs(f) ** p, axis=-1)
    return l2_normalize(a.reshape(a.shape[0], -1))

  s, t = _match_spatial(*_float32_pair(student_map, teacher_map))
  return jnp.mean(jnp.square(attention(s) - attention(t)))


def nst_loss(student_map: jax.Array, teacher_map: jax.Array) -> jax.Array:
  """Neuron selectivity transfer (Huang & Wang, 2017): polynomial-kernel MMD.

  Each channel's map, flattened over the H·W positions and L2-normalised
  there, is one sample; with k(x, y) = (x·y)² (degree 2, c = 0),

    L = mean_{b,i,j} k(s_bi, s_bj) + mean_{b,i,j} k(t_bi, t_bj)
        - 2 · mean_{b,i,j} k(s_bi, t_bj),

  i, j running over channels (C_s and C_t may differ); each mean is over
  the batch and all channel pairs, biased (the i = j terms included).

  Source: megvii-research/mdistiller, mdistiller/distillers/NST.py
  (`single_stage_nst_loss`, `poly_kernel`): `F.normalize(·, dim=2)` divides
  by max(‖·‖, 1e-12); each kernel matrix's `.mean()` is over [B, C, C].
  mdistiller's `nst_loss` sums this over several stages; callers sum calls
  of this function.

  If the spatial sizes differ, the larger map is average-pooled to the
  smaller one first (adaptive average pooling, as mdistiller does with
  `F.adaptive_avg_pool2d`).

  Args:
    student_map: [B, H_s, W_s, C_s] NHWC features (PyTorch's are NCHW).
    teacher_map: [B, H_t, W_t, C_t], under stop_gradient.

  Returns:
    [] float32.
  """

  def channels(f):
    b, h, w, c = f.shape
    return l2_normalize(jnp.swapaxes(f.reshape(b, h * w, c), 1, 2))

  s, t = _match_spatial(*_float32_pair(student_map, teacher_map))
  s, t = channels(s), channels(t)

  def kernel_mean(x, y):
    return jnp.mean(jnp.square(jnp.einsum('bin,bjn->bij', x, y)))

  return kernel_mean(t, t) + kernel_mean(s, s) - 2.0 * kernel_mean(s, t)


def sp_loss(
  student_features: jax.Array, teacher_features: jax.Array
) -> jax.Array:
  """Similarity-preserving KD (Tung & Mori, ICCV 2019), one pair of features.

  With F = features flattened to [B, D], G = l2_normalize_rows(F Fᵀ) [B, B],

    L = ‖G^s - G^t‖²_F / B².

  Source: megvii-research/mdistiller, mdistiller/distillers/SP.py
  (`similarity_loss`): `F.normalize` of the Gram matrix along its rows,
  dividing by max(‖·‖, 1e-12); the squared Frobenius norm divided by B².
  With B = 1 both G are [[1]] (for a non-zero feature) and L = 0.

  Args:
    student_features: [B, ...] (e.g. NHWC maps or [B, D] vectors).
    teacher_features: [B, ...], under stop_gradient; D may differ.

  Returns:
    [] float32.
  """

  def gram(f):
    f = f.reshape(f.shape[0], -1)
    return l2_normalize(f @ f.T)

  batch = student_features.shape[0]
  g_s, g_t = map(gram, _float32_pair(student_features, teacher_features))
  return jnp.sum(jnp.square(g_t - g_s)) / (batch * batch)


def pkt_loss(
  student_features: jax.Array, teacher_features: jax.Array
) -> jax.Array:
  """Probabilistic knowledge transfer (Passalis & Tefas, ECCV 2018).

  With f̂ = f / (‖f‖ + ε), cosine similarities c_ij = f̂_i · f̂_j shifted to
  [0, 1] as (c_ij + 1) / 2 and normalised per row to P_ij (teacher) and
  Q_ij (student), [B, B],

    L = mean_{i,j} P_ij · log((P_ij + ε) / (Q_ij + ε)),  ε = 1e-7.

  Source: megvii-research/mdistiller, mdistiller/distillers/PKT.py
  (`pkt_loss`, after passalis/probabilistic_kt's `cosine_similarity_loss`):
  ε is added to the norm (not clamped), the KL is a mean over all B² entries
  (not a per-row sum). The reference zeroes NaNs after normalising; with
  ε > 0 they arise only from NaN inputs, which this function propagates.
  With B = 1, P = Q = [[1]] and L = 0.

  Args:
    student_features: [B, ...] flattened to [B, D] (mdistiller passes
      pooled [B, D] features).
    teacher_features: [B, ...], under stop_gradient; D may differ.

  Returns:
    [] float32.
  """
  eps = 1e-7

  def probabilities(f):
    f = f.reshape(f.shape[0], -1)
    f = f / (_safe_sqrt(jnp.sum(jnp.square(f), axis=1, keepdims=True)) + eps)
    sim = (f @ f.T + 1.0) / 2.0
    return sim / jnp.sum(sim, axis=1, keepdims=True)

  q, p = map(probabilities, _float32_pair(student_features, teacher_features))
  return jnp.mean(p * jnp.log((p + eps) / (q + eps)))
