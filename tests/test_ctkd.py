"""CTKD (icckd_jax/distillers/ctkd.py): the gradient reversal, the cosine
curriculum, the learned temperature, and its KD loss (and CTKD+LS) against
the authors' PyTorch code (literals from tests/make_method_references.py)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import make_method_references as refs
from configs import student as student_config
from icckd_jax import distillers
from icckd_jax.distillers import ctkd
from icckd_jax.objective import losses

# zhengli97/CTKD's Global_T, DistillKL and CosineDecay (and, for
# standardize=True, logit-standardization-KD's DistillKL_logit_stand),
# combined as its helper/loops.py does, in float64 on refs.student_logits()
# and refs.teacher_logits(), printed by tests/make_method_references.py
# under PyTorch 2.13.0 (CPU): {(standardize, θ, epoch): the GRL's factor,
# T, the KD loss, its gradient w.r.t. θ through the reversal and w.r.t.
# the student's logits}.
PUBLISHED = {
  (False, 1.0, 3): {
    'decay': -0.206107373854,
    'T': 15.6211715726,
    'loss': 0.611037384442,
    'grad_theta': -0.000222329015239,
    'grad': [
      [
        -0.152618092599,
        -0.0742434384106,
        0.00723618028083,
        0.0812254079213,
        0.138399942807,
      ],
      [
        -0.00678399124121,
        0.0149558679522,
        0.0151373893624,
        3.39862414803e-05,
        -0.0233432523149,
      ],
      [
        0.0471966651615,
        0.0154726212913,
        -0.00882725283349,
        -0.0240575229967,
        -0.0297845106225,
      ],
      [
        -0.0182881689004,
        -0.00948938603263,
        0.00219103890383,
        0.0119535682551,
        0.0136329477741,
      ],
    ],
  },
  (False, -0.4, 12): {
    'decay': -1.0,
    'T': 9.02624679775,
    'loss': 0.607619141578,
    'grad_theta': -0.00466540455472,
    'grad': [
      [
        -0.151039316258,
        -0.0743082956056,
        0.00715249110784,
        0.0812721973913,
        0.136922923364,
      ],
      [
        -0.00770752340439,
        0.0150839052062,
        0.014712984805,
        -0.000308803146536,
        -0.0217805634603,
      ],
      [
        0.04794796854,
        0.0151868344259,
        -0.00893428354801,
        -0.0240150756777,
        -0.0301854437403,
      ],
      [
        -0.0172669824082,
        -0.0096509009858,
        0.0014407656919,
        0.0115974116266,
        0.0138797060755,
      ],
    ],
  },
  (True, 1.0, 3): {
    'decay': -0.206107373854,
    'T': 15.6211715726,
    'loss': 0.608345449235,
    'grad_theta': 0.000249458555486,
    'grad': [
      [
        0.00924911575181,
        -0.00740454062366,
        -0.0125338957845,
        -0.00482891833438,
        0.0155182389907,
      ],
      [
        -0.0103412929324,
        0.00462697118315,
        0.00840474042905,
        0.00366082771959,
        -0.00635124639939,
      ],
      [
        -0.00142007085638,
        0.0703525910806,
        0.0761842402279,
        0.00571340693551,
        -0.150830167388,
      ],
      [
        -0.00108107388536,
        1.16606833447e-06,
        0.00146615310129,
        0.00151182087905,
        -0.00189806616332,
      ],
    ],
  },
  (True, -0.4, 12): {
    'decay': -1.0,
    'T': 9.02624679775,
    'loss': 0.611679523255,
    'grad_theta': 0.00397535516806,
    'grad': [
      [
        0.00934772013509,
        -0.0077006668757,
        -0.0123975722481,
        -0.00437191278543,
        0.0151224317741,
      ],
      [
        -0.0105852604631,
        0.00497294337381,
        0.00844466785161,
        0.0034200594612,
        -0.0062524102235,
      ],
      [
        0.000354073146991,
        0.0683332789547,
        0.0773420452957,
        0.00938167600185,
        -0.155411073399,
      ],
      [
        -0.00107492192132,
        -2.76916710921e-05,
        0.0014632084696,
        0.00158742549939,
        -0.00194802037658,
      ],
    ],
  },
}


def test_gradient_reversal_is_the_identity_with_a_reversed_scaled_gradient():
  x = jnp.array([0.3, -2.0])
  np.testing.assert_array_equal(ctkd.gradient_reversal(x, 0.7), x)
  grad = jax.grad(lambda x: jnp.sum(3.0 * ctkd.gradient_reversal(x, 0.7)))(x)
  np.testing.assert_allclose(grad, [-2.1, -2.1], rtol=1e-6)
  # λ itself receives no gradient.
  assert jax.grad(lambda lam: ctkd.gradient_reversal(1.5, lam))(0.7) == 0


def test_the_curriculum_rises_by_a_half_cosine_then_holds():
  lam = lambda e: float(ctkd.curriculum(jnp.float32(e), 1.0, 10.0))
  assert lam(0) == 0
  assert lam(5) == pytest.approx(0.5)
  assert lam(10) == pytest.approx(1.0)
  assert lam(240) == pytest.approx(1.0)
  assert lam(2.5) == pytest.approx((1 - math.cos(math.pi / 4)) / 2)
  # Scaled by λ_max; the code's CosineDecay factor is -λ(e).
  assert float(ctkd.curriculum(jnp.float32(3), 0.5, 10.0)) == pytest.approx(
    0.5 * -PUBLISHED[False, 1.0, 3]['decay']
  )
  for (_, _, epoch), ref in PUBLISHED.items():
    assert lam(epoch) == pytest.approx(-ref['decay'])


def test_the_temperature_stays_in_its_range():
  for theta in (-50.0, 0.0, 1.0, 50.0):
    t = float(ctkd.temperature(jnp.float32(theta), 1.0, 1.0, 20.0))
    assert 1.0 <= t <= 21.0
  # Global_T starts at θ = 1: T = 1 + 20 · sigmoid(1).
  t0 = 1 + 20 / (1 + math.exp(-1))
  assert float(ctkd.temperature(jnp.float32(1), 0.0, 1.0, 20.0)) == (
    pytest.approx(t0)
  )


def _loss(standardize, dtype=jnp.float32):
  """jitted (logits [4, 5], θ [1], epoch) -> ((loss, parts), (d/dlogits,
  d/dθ)) of the method's loss with γ = 0, α = 1 (the KD term alone), at
  the recipe's T range and curriculum, in `dtype`."""
  distill = student_config.get_config().distill
  distill.update(method='ctkd', standardize_logits=standardize)
  distiller = distillers.build(distill)
  t = distillers.Outputs(
    jnp.asarray(refs.teacher_logits(), dtype), jnp.zeros((4, 2))
  )

  def fn(logits, theta, epoch):
    trainable = distillers.Trainable(
      {'global_t': theta}, None, jnp.arange(4), jnp.int32(0)
    )
    s = distillers.Outputs(logits, jnp.zeros((4, 2)))
    batch = distillers.Batch(s, t, jnp.arange(4), lambda a: a, trainable)
    hp = {
      'gamma': dtype(0),
      'alpha': dtype(1),
      'epoch': epoch,
      'ctkd_t_min': dtype(1),
      'ctkd_t_range': dtype(20),
      'ctkd_lambda': dtype(1),
      'ctkd_curriculum_epochs': dtype(10),
    }
    loss, parts, _ = distiller.loss(batch, hp)
    return loss, parts

  return jax.jit(jax.value_and_grad(fn, argnums=(0, 1), has_aux=True))


@pytest.mark.parametrize('standardize', [False, True])
def test_equals_the_published_loss_temperature_and_gradients(standardize):
  """In float64, as the literals were computed: at T ≈ 9-16 the KL is a
  small difference of log-probabilities and dL/dT smaller still, so
  float32 round-off moves the loss by ~2e-5 of itself and θ's gradient by
  ~1% (the float32 step is checked against the same literals below)."""
  cases = [(k, v) for k, v in PUBLISHED.items() if k[0] == standardize]
  with jax.enable_x64(True):
    fn = _loss(standardize, jnp.float64)
    s = jnp.asarray(refs.student_logits(), jnp.float64)
    for (_, theta, epoch), ref in cases:
      (loss, parts), (grad_s, grad_theta) = fn(
        s, jnp.full((1,), theta), jnp.float64(epoch)
      )
      np.testing.assert_allclose(parts['ctkd_temperature'], ref['T'], rtol=1e-9)
      np.testing.assert_allclose(parts['ctkd_lambda'], -ref['decay'], rtol=1e-9)
      np.testing.assert_allclose(loss, ref['loss'], rtol=1e-6)
      # (standardize_logits computes in float32 whatever its input: 1e-7.)
      np.testing.assert_allclose(grad_s, ref['grad'], rtol=1e-5, atol=1e-7)
      # Through the reversal: the sign flipped and scaled by λ(e).
      np.testing.assert_allclose(grad_theta, [ref['grad_theta']], rtol=1e-4)
  fn = _loss(standardize, jnp.float32)
  s = jnp.asarray(refs.student_logits(), jnp.float32)
  for (_, theta, epoch), ref in cases:
    (loss, _), (grad_s, grad_theta) = fn(
      s, jnp.full((1,), theta, jnp.float32), jnp.float32(epoch)
    )
    np.testing.assert_allclose(loss, ref['loss'], rtol=5e-5)
    np.testing.assert_allclose(grad_s, ref['grad'], rtol=1e-3, atol=2e-6)
    np.testing.assert_allclose(grad_theta, [ref['grad_theta']], rtol=2e-2)


def test_without_the_reversal_theta_would_descend_the_same_loss():
  """At λ = 0 (epoch 0) θ gets no gradient; the unreversed gradient of
  the KD loss w.r.t. θ is -1/λ times the reversed one."""
  fn = _loss(False)
  s = jnp.asarray(refs.student_logits(), jnp.float32)
  theta = jnp.ones((1,), jnp.float32)
  _, (_, at_zero) = fn(s, theta, jnp.float32(0))
  assert at_zero[0] == 0
  ref = PUBLISHED[False, 1.0, 3]
  with jax.enable_x64(True):
    s, t = (
      jnp.asarray(f()) for f in (refs.student_logits, refs.teacher_logits)
    )
    direct = jax.grad(
      lambda th: losses.kd_loss(s, t, 1 + 20 * jax.nn.sigmoid(th))
    )(jnp.float64(1))
    np.testing.assert_allclose(
      direct * ref['decay'], ref['grad_theta'], rtol=1e-6
    )


def test_init_is_one_theta_and_no_buffers():
  distill = student_config.get_config().distill
  distill.method = 'ctkd'
  distiller = distillers.build(distill)
  params, buffers = distiller.init(jax.random.key(0), None, None, None, None)
  assert buffers is None
  np.testing.assert_array_equal(params['global_t'], [1.0])
  assert distiller.trainable and distiller.reads.epoch
  assert not distiller.reads.stages
