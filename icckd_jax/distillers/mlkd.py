"""Multi-level logit distillation, MLKD (Jin, Wang, Lin, CVPR 2023), as its
published code computes it.

Each example comes as a weak view w (crop, flip) and a strong one σ (crop,
flip, then the RandAugment of input_pipeline/rand_augment.py); both
networks see both (`Reads(strong_view=True)`). With P^T = softmax(z / T)
row by row over the global batch [B, C] and the teacher's weak-view
confidence c_i = max_c softmax(t^w_i):

  m   = mean_i [c_i <= median(c)]            (a fraction, ~1/2)
  m_c = mean_c [q_c <= median(q)],  q = Σ_i softmax(t^w_i)   (~1/2)
  KD_T(s, t) = T² · mean_i KL(P^T(t_i) || P^T(s_i))          (instance level)
  CC_T(s, t) = ||P^T(s)ᵀP^T(s) - P^T(t)ᵀP^T(t)||²_F / C      (class level)
  BC_T(s, t) = ||P^T(s)P^T(s)ᵀ - P^T(t)P^T(t)ᵀ||²_F / B      (batch level)

  L = γ · (CE(s^w, y) + CE(s^σ, y))
    + α · [ m Σ_{T∈𝒯} KD_T(w) + Σ_{T∈𝒯₃} KD_T(σ) + Σ_{T∈𝒯∖𝒯₃} KD_T(w)
            + m_c Σ_{T∈𝒯} CC_T(w) + m Σ_{T∈𝒯} BC_T(w) ]

over the temperatures 𝒯 = (T, 3, 5, 2, 6), 𝒯₃ its first three: the
paper's prediction augmentation (the temperatures) and its instance-,
batch- and class-level alignment (its Method section), as the code
computes them; KD_T(w) is KD_T(s^w, t^w).

This follows the code, not the paper, where they differ
(docs/distillers.md): the "confidence masks" scale each weak-view term by
the fraction of the batch they keep (the loss, already a batch mean, is
multiplied by the [B] mask and averaged), not per example; the strong
view's last two temperatures read the weak view; the strong view's class-
and batch-level terms are computed and dropped; the logit standardisation
(MLKD+LS) reaches the KD terms only. Source: Jin-Ying/Multi-Level-Logit-
Distillation, mdistiller/distillers/KD_ours.py; sunshangquan/logit-
standardization-KD, mdistiller/distillers/MLKD.py (the same loss, with
`logit_stand`). The published code runs per GPU under DataParallel; here
the masks and the relations are over the global batch, so a run does not
depend on its device count.

Recipe (CIFAR-100, resnet32x4 → resnet8x4): T = 4, γ = 0.1, α = 0.9
(KD's shared settings, whose defaults they are: the authors' cfg.py
CFG.KD), 240 epochs, batch 64, learning rate 0.025, weight decay 5e-4
(configs/cifar100/ours/res32x4_res8x4.yaml). MLKD+LS (logit-
standardization-KD's README: `--logit-stand --base-temp 2 --kd-weight 9`)
sets T = 2 and α = 9:

  --config.distill.standardize_logits=True --config.distill.temperature=2 \
      --config.distill.alpha=9

Config: `gamma`, `alpha`, `temperature`, `standardize_logits`.
"""

import jax
import jax.numpy as jnp

from icckd_jax.distillers import contract
from icckd_jax.distillers import kd
from icckd_jax.distillers.outputs import Batch
from icckd_jax.objective import losses

# The temperatures the code adds to config.distill.temperature, in its
# order; the strong view reads the first two, the weak view the last two.
EXTRA_TEMPERATURES = (3.0, 5.0, 2.0, 6.0)


def below_median(x: jax.Array) -> jax.Array:
  """[N] bool x_i <= median(x), the median as np.percentile(x, 50) (linear
  interpolation between the middle two of an even N)."""
  return x <= jnp.percentile(x, 50.0)


def _probs(logits: jax.Array, temperature) -> jax.Array:
  return jax.nn.softmax(logits.astype(jnp.float32) / temperature, axis=-1)


def class_correlation(
  student_logits: jax.Array, teacher_logits: jax.Array, temperature
) -> jax.Array:
  """[] ||PsᵀPs - PtᵀPt||²_F / C, P = softmax(logits / T) [B, C]: the
  class-level alignment of the class correlation matrices (the code's
  `cc_loss`)."""
  ps, pt = (
    _probs(student_logits, temperature),
    _probs(teacher_logits, temperature),
  )
  diff = ps.T @ ps - pt.T @ pt
  return jnp.sum(diff**2) / ps.shape[1]


def batch_correlation(
  student_logits: jax.Array, teacher_logits: jax.Array, temperature
) -> jax.Array:
  """[] ||PsPsᵀ - PtPtᵀ||²_F / B, P = softmax(logits / T) [B, C]: the
  batch-level alignment of the examples' correlation matrices (the code's
  `bc_loss`)."""
  ps, pt = (
    _probs(student_logits, temperature),
    _probs(teacher_logits, temperature),
  )
  diff = ps @ ps.T - pt @ pt.T
  return jnp.sum(diff**2) / ps.shape[0]


def mlkd_terms(
  weak: tuple[jax.Array, jax.Array],
  strong: tuple[jax.Array, jax.Array],
  temperature,
  standardized: tuple[jax.Array, jax.Array] | None = None,
) -> dict[str, jax.Array]:
  """The three levels of the module docstring's L, before α: {'kd', 'cc',
  'bc', 'mask_fraction', 'class_mask_fraction'} of [] each.

  Args:
    weak: (student, teacher) logits [B, C] of the weak view, the global
      batch (the masks and relations are over it).
    strong: (student, teacher) logits [B, C] of the strong view.
    temperature: T, the first of the temperatures 𝒯 = (T, 3, 5, 2, 6).
    standardized: with MLKD+LS, (weak, strong) as the KD terms compare them
      (each a (student, teacher) pair); None compares the raw logits.

  The teacher's logits are under stop_gradient here.
  """
  weak = weak[0], jax.lax.stop_gradient(weak[1])
  strong = strong[0], jax.lax.stop_gradient(strong[1])
  kd_weak, kd_strong = standardized if standardized else (weak, strong)
  kd_weak = kd_weak[0], jax.lax.stop_gradient(kd_weak[1])
  kd_strong = kd_strong[0], jax.lax.stop_gradient(kd_strong[1])
  teacher_probs = jax.nn.softmax(weak[1].astype(jnp.float32), axis=-1)
  m = jnp.mean(below_median(jnp.max(teacher_probs, axis=-1)))
  m_c = jnp.mean(below_median(jnp.sum(teacher_probs, axis=0)))
  temps = (temperature, *EXTRA_TEMPERATURES)
  kd_w = [losses.kd_loss(*kd_weak, t) for t in temps]
  # The code's strong-view sum reads the weak view at its last two.
  kd_s = [losses.kd_loss(*kd_strong, t) for t in temps[:3]]
  return {
    'kd': m * sum(kd_w) + sum(kd_s) + sum(kd_w[3:]),
    'cc': m_c * sum(class_correlation(*weak, t) for t in temps),
    'bc': m * sum(batch_correlation(*weak, t) for t in temps),
    'mask_fraction': m,
    'class_mask_fraction': m_c,
  }


def loss(
  batch: Batch, hp: contract.Hyper, *, standardize: bool = False
) -> contract.Result:
  """CE on each view's local batch (per example); the levels over the
  all-gathered global batch, the same value on every device, so the
  pmean-ed gradients are the global loss's."""
  ce_weak = contract.cross_entropy(batch)
  ce_strong = losses.cross_entropy(
    batch.student_strong.logits, batch.labels
  ).mean()
  views = (
    (batch.student, batch.teacher),
    (batch.student_strong, batch.teacher_strong),
  )
  weak, strong = (tuple(batch.gather(o.logits) for o in v) for v in views)
  standardized = None
  if standardize:
    standardized = tuple(
      tuple(batch.gather(z) for z in kd.soft_targets(*v, True)) for v in views
    )
  terms = mlkd_terms(weak, strong, hp['temperature'], standardized)
  ce = ce_weak + ce_strong
  total = hp['gamma'] * ce + hp['alpha'] * (
    terms['kd'] + terms['cc'] + terms['bc']
  )
  return total, {'ce': ce, **terms}, batch.trainable.buffers


METHOD = contract.Method(
  shared=('temperature', 'gamma', 'alpha', 'standardize_logits'),
  loss=loss,
  reads=contract.Reads(strong_view=True),
  options=contract.standardize_option,
  task_weight='gamma',
)
