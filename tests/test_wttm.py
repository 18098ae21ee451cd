"""WTTM (icckd_jax/distillers/wttm.py): its loss on hand-computed cases,
against the authors' PyTorch code (literals from
tests/make_method_references.py), and as the method's composition."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import make_method_references as refs
from icckd_jax import distillers
from icckd_jax.distillers import wttm
from icckd_jax.objective import losses

# zkxufo/TTM's WTTM(l)(y_s, y_t) and the gradient of its loss w.r.t. y_s,
# in float64 on refs.student_logits() and refs.teacher_logits(), printed by
# tests/make_method_references.py under PyTorch 2.13.0 (CPU).
PUBLISHED = {
  0.1: (
    1.93714456441,
    [
      [
        -0.210234950625,
        -0.154751981497,
        -0.0379748356979,
        0.136266380049,
        0.266695387771,
      ],
      [
        0.267342418788,
        0.0911517023552,
        -0.0632813960393,
        -0.136640663506,
        -0.158572061597,
      ],
      [
        0.249243758736,
        -0.00308326890707,
        -0.0821355782331,
        -0.0981460485313,
        -0.065878863065,
      ],
      [
        -0.158195502787,
        -0.153747993556,
        -0.114011341214,
        0.0315832319226,
        0.394371605635,
      ],
    ],
  ),
  0.5: (
    0.804436069597,
    [
      [
        -0.16271354822,
        -0.100812106025,
        -0.0116048724361,
        0.0980176051082,
        0.177112921573,
      ],
      [
        0.0531397626723,
        0.0272090512155,
        -0.0143521210552,
        -0.0321816155926,
        -0.0338150772401,
      ],
      [
        0.131210329366,
        0.00779080542254,
        -0.0336657340339,
        -0.0508402678683,
        -0.0544951328861,
      ],
      [
        -0.0302579446235,
        -0.037685151096,
        -0.0377349715368,
        -0.00345434975697,
        0.109132417013,
      ],
    ],
  ),
}


def test_a_two_class_case_by_hand():
  """p = (0.8, 0.2), γ = 1/2: p^γ = (√0.8, √0.2), U = √0.8 + √0.2 and
  p̃ = (2/3, 1/3); a uniform student: KL = 2/3 ln(4/3) + 1/3 ln(2/3)."""
  teacher = jnp.log(jnp.array([[0.8, 0.2]]))
  u = math.sqrt(0.8) + math.sqrt(0.2)
  kl = 2 / 3 * math.log(4 / 3) + 1 / 3 * math.log(2 / 3)
  got = wttm.wttm_loss(jnp.zeros((1, 2)), teacher, 0.5)
  np.testing.assert_allclose(got, u * kl, rtol=1e-6)


def test_power_one_is_kd_at_temperature_one():
  """γ = 1: U = Σ p = 1 and p̃ = p, so WTTM is KL(p || s), KD at T = 1."""
  s = jnp.asarray(refs.student_logits(), jnp.float32)
  t = jnp.asarray(refs.teacher_logits(), jnp.float32)
  np.testing.assert_allclose(
    wttm.wttm_loss(s, t, 1.0), losses.kd_loss(s, t, 1.0), rtol=1e-6
  )


def test_a_smoother_teacher_weighs_more():
  """U grows as the teacher's distribution flattens (γ < 1): with the
  student equal to p̃, the loss is 0 whatever U; elsewhere it scales."""
  confident = jnp.array([[6.0, 0.0, 0.0]])
  flat = jnp.array([[0.5, 0.0, 0.0]])
  student = jnp.zeros((1, 3))
  a, b = (wttm.wttm_loss(student, t, 0.25) for t in (confident, flat))
  assert b < a  # the flat teacher is nearer the uniform student
  # U of the flat teacher is the larger one.
  u = lambda t: jnp.sum(jax.nn.softmax(t) ** 0.25)
  assert u(flat) > u(confident)
  target = jnp.log(jax.nn.softmax(flat) ** 0.25 / u(flat))
  np.testing.assert_allclose(wttm.wttm_loss(target, flat, 0.25), 0, atol=1e-6)


@pytest.mark.parametrize('power', sorted(PUBLISHED))
def test_equals_the_published_loss_and_gradient(power):
  s = jnp.asarray(refs.student_logits(), jnp.float32)
  t = jnp.asarray(refs.teacher_logits(), jnp.float32)
  value, grad = jax.jit(jax.value_and_grad(wttm.wttm_loss))(s, t, power)
  loss, expected_grad = PUBLISHED[power]
  np.testing.assert_allclose(value, loss, rtol=2e-6)
  np.testing.assert_allclose(grad, expected_grad, rtol=1e-5, atol=1e-7)


def test_the_method_is_ce_plus_beta_wttm():
  s = jnp.asarray(refs.student_logits(), jnp.float32)
  t = jnp.asarray(refs.teacher_logits(), jnp.float32)
  labels = jnp.array([0, 1, 2, 3])
  outputs = lambda z: distillers.Outputs(z, jnp.zeros((4, 2)))
  trainable = distillers.Trainable(None, None, None, jnp.int32(0))
  batch = distillers.Batch(
    outputs(s), outputs(t), labels, lambda a: a, trainable
  )
  hp = {'ce_weight': 0.7, 'wttm_power': 0.5, 'wttm_weight': 3.0}
  loss, parts, buffers = distillers.get('wttm').loss(batch, hp)
  ce = losses.cross_entropy(s, labels).mean()
  np.testing.assert_allclose(parts['wttm'], PUBLISHED[0.5][0], rtol=2e-6)
  np.testing.assert_allclose(loss, 0.7 * ce + 3.0 * parts['wttm'], rtol=1e-6)
  assert buffers is None
