"""Curriculum temperature for knowledge distillation, CTKD (Li et al.,
AAAI 2023), on KD (CTKD+KD).

KD's temperature is learned: one trainable scalar θ (params['distiller']
['global_t'], [1], initialised to 1) gives

  T = T_min + T_range · sigmoid(GRL_λ(θ))
  L = γ · CE(s, y) + α · T² · KL(softmax(t / T) || softmax(s / T))

GRL_λ is the gradient reversal layer: the identity forward, its gradient
multiplied by -λ backward, so θ climbs the KD loss while the student
descends it (the paper's adversarial temperature). λ follows
a cosine curriculum over the 1-based epoch e (hp['epoch']):

  λ(e) = λ_max · (1 - cos(π · min(e, E) / E)) / 2

rising from 0 to λ_max by epoch E and then held (the paper's curriculum).
θ trains with the student's optimiser (SGD, momentum, weight decay) and
is checkpointed with it.

Recipe (CIFAR-100): γ = 0.1, α = 0.9 (KD's shared settings, whose
defaults they are), T_min = 1, T_range = 20, λ_max = 1, E = 10 epochs.
Source: zhengli97/CTKD, scripts/run_cifar_distill.sh (`-r 0.1 -a 0.9 -b 0
--have_mlp 1 --mlp_name global --cosine_decay 1 --decay_max 0 --decay_min
-1 --decay_loops 10`), train_student.py (`--t_start 1 --t_end 20`,
CosineDecay), models/temp_global.py (Global_T, GradientReversalFunction)
and helper/loops.py (temp = t_start + t_end · sigmoid(·)). The code's
CosineDecay gives the GRL's factor directly, from decay_max = 0 down to
decay_min = -1: that factor is -λ(e) here.

With config.distill.standardize_logits, KD compares standardised logits
(CTKD+LS, Sun et al., CVPR 2024: sunshangquan/logit-standardization-KD,
CTKD/). Their script sets γ = 0.1, α = 9:

  --config.distill.standardize_logits=True --config.distill.alpha=9

Config: `gamma`, `alpha`, `standardize_logits`, `ctkd_t_min`,
`ctkd_t_range`, `ctkd_lambda`, `ctkd_curriculum_epochs`.
"""

import jax
import jax.numpy as jnp

from icckd_jax.distillers import contract
from icckd_jax.distillers import kd
from icckd_jax.distillers import settings
from icckd_jax.distillers.outputs import Batch, Outputs
from icckd_jax.objective import losses

INIT_THETA = 1.0  # Global_T's torch.ones(1)


@jax.custom_vjp
def gradient_reversal(x: jax.Array, lam: jax.Array) -> jax.Array:
  """x unchanged; backward, the gradient times -lam (Ganin & Lempitsky's
  gradient reversal layer). lam gets no gradient."""
  del lam
  return x


def _reversal_forward(x, lam):
  return x, lam


def _reversal_backward(lam, g):
  return -lam * g, jnp.zeros_like(lam)


gradient_reversal.defvjp(_reversal_forward, _reversal_backward)


def curriculum(
  epoch: jax.Array, lam_max: jax.Array, epochs: jax.Array
) -> jax.Array:
  """[] λ(e) = lam_max · (1 - cos(π · clip(e, 0, E) / E)) / 2, E = epochs
  > 0: 0 at e = 0, lam_max from e = E on."""
  e = jnp.clip(epoch, 0.0, epochs)
  return lam_max * (1.0 - jnp.cos(jnp.pi * e / epochs)) / 2.0


def temperature(
  theta: jax.Array, lam: jax.Array, t_min: jax.Array, t_range: jax.Array
) -> jax.Array:
  """[] T = t_min + t_range · sigmoid(GRL_lam(θ)), θ a [] scalar: in
  (t_min, t_min + t_range), its gradient to θ reversed and scaled by lam."""
  return t_min + t_range * jax.nn.sigmoid(gradient_reversal(theta, lam))


def init(
  key,
  student: Outputs,
  teacher: Outputs,
  train_labels,
  teacher_params,
  *,
  standardize: bool = False,
) -> tuple[dict, None]:
  """({'global_t': [1] θ = 1}, None): the same for every run (Global_T
  starts at one, whatever the seed)."""
  del key, student, teacher, train_labels, teacher_params, standardize
  return {'global_t': jnp.full((1,), INIT_THETA, jnp.float32)}, None


def loss(
  batch: Batch, hp: contract.Hyper, *, standardize: bool = False
) -> contract.Result:
  """Per-example terms only, so the local batch mean is all a device needs.
  Returns (loss, parts, None); parts log T and λ."""
  lam = curriculum(hp['epoch'], hp['ctkd_lambda'], hp['ctkd_curriculum_epochs'])
  t = temperature(
    batch.trainable.params['global_t'][0],
    lam,
    hp['ctkd_t_min'],
    hp['ctkd_t_range'],
  )
  ce = contract.cross_entropy(batch)
  s_logits, t_logits = kd.soft_targets(
    batch.student, batch.teacher, standardize
  )
  term = losses.kd_loss(s_logits, t_logits, t)
  parts = {'ce': ce, 'kd': term, 'ctkd_temperature': t, 'ctkd_lambda': lam}
  return hp['gamma'] * ce + hp['alpha'] * term, parts, batch.trainable.buffers


METHOD = contract.Method(
  shared=('gamma', 'alpha', 'standardize_logits'),
  own={
    'ctkd_t_min': settings.weight(
      1.0, "T's lower bound (zhengli97/CTKD --t_start)"
    ),
    'ctkd_t_range': settings.Setting(
      20.0,
      "T's range above its lower bound (zhengli97/CTKD --t_end, which "
      'scales the sigmoid)',
      rule=settings.POSITIVE,
    ),
    'ctkd_lambda': settings.weight(
      1.0, "λ_max, the reversal's final scale (CTKD --decay_min -1)"
    ),
    'ctkd_curriculum_epochs': settings.Setting(
      10.0,
      "E, the epochs λ's cosine rises over (CTKD --decay_loops)",
      rule=settings.POSITIVE,
    ),
  },
  loss=loss,
  reads=contract.Reads(epoch=True),
  options=contract.standardize_option,
  init=init,
  task_weight='gamma',
)
