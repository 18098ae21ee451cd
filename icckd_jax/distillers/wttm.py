"""Weighted transformed teacher matching, WTTM (Zheng & Yang, ICLR 2024).

The teacher's distribution p = softmax(t) is power-transformed with an
exponent γ (γ = 1/T: the temperature on the teacher's side only) and
renormalised, p̃ = p^γ / U with U = Σ_c p_c^γ; the student's untempered
distribution s = softmax(s) matches it, each example weighted by its U
(a smoother teacher distribution has a larger U and weighs more):

  L = w_ce · CE(s, y) + β · mean_i U_i · KL(p̃_i || s_i)

(the paper's WTTM objective, its Section 4; TTM, its Section 3, is the
same without U).

Recipe: γ = 0.2, β = 4, w_ce = 1; the authors' repository
(zkxufo/TTM, distiller_zoo/wttm.py, train_student.py `-r` / `-b` / `-a`
/ `--ttm_l`) gives no per-pair values: these are its README's one
example of a WTTM weight (WTTM added to CRD, vgg13 → vgg8: `--add wttm
--ttm_l 0.2 -a 4`, `-r` 1 by default); the paper's per-pair γ and β (its
appendix A.4) were not at hand (docs/distillers.md). Its TTM example's
`-b 45` does not carry over: U multiplies WTTM's term (≈ 25 at γ = 0.2
for a 100-class teacher putting 0.9 on one class, the rest evenly).
The repository can add a second KD term (`--add kd -a α`); its examples
for WTTM alone set α = 0, as here. Config: `ce_weight`, `wttm_power`,
`wttm_weight`.
"""

import jax
import jax.numpy as jnp

from icckd_jax.distillers import contract
from icckd_jax.distillers import settings
from icckd_jax.distillers.outputs import Batch


def wttm_loss(
  student_logits: jax.Array, teacher_logits: jax.Array, power: jax.Array
) -> jax.Array:
  """[] mean_i U_i · KL(p̃_i || softmax(s_i)), U_i = Σ_c p_ic^γ and
  p̃_i = p_i^γ / U_i, p_i = softmax(t_i) (the paper's Section 4).

  Args:
    student_logits: [B, C].
    teacher_logits: [B, C], under stop_gradient here.
    power: γ > 0, the exponent of the power transform.

  Returns:
    [] float32.
  """
  t = jax.lax.stop_gradient(teacher_logits).astype(jnp.float32)
  # log p^γ, in log space: p^γ of a confident teacher underflows otherwise.
  log_powered = power * jax.nn.log_softmax(t, axis=-1)
  log_u = jax.nn.logsumexp(log_powered, axis=-1, keepdims=True)
  log_target = log_powered - log_u
  log_s = jax.nn.log_softmax(student_logits.astype(jnp.float32), axis=-1)
  kl = jnp.sum(jnp.exp(log_target) * (log_target - log_s), axis=-1)
  return jnp.mean(jnp.exp(log_u[:, 0]) * kl)


def loss(batch: Batch, hp: contract.Hyper) -> contract.Result:
  """Per-example terms only, so the local batch mean is all a device needs."""
  term = wttm_loss(batch.student.logits, batch.teacher.logits, hp['wttm_power'])
  return contract.weighted(
    batch, hp, 'wttm', term, hp['wttm_weight'], batch.trainable.buffers
  )


METHOD = contract.Method(
  shared=('ce_weight',),
  own={
    'wttm_power': settings.Setting(
      0.2,
      "γ = 1/T, the teacher's power transform (zkxufo/TTM --ttm_l; its "
      "README's example)",
      rule=settings.POSITIVE,
    ),
    'wttm_weight': settings.weight(
      4.0, "β, WTTM's weight (zkxufo/TTM -b, or -a as added; its README's)"
    ),
  },
  loss=loss,
)
