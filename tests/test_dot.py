"""DOT (training/dot.py): the update by hand and as the published optimiser,
the student step's two gradients, its config and its keys. Students trained
with it: tests/test_student.py (an Orbax teacher), test_imagenet_config.py
(a torchvision `.pth` teacher), test_trainable_distillers.py (resume)."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import make_dot_references as refs
from configs import imagenet
from configs import student as student_config
from configs import teacher as teacher_config
from icckd_jax import distillers
from icckd_jax.errors import UserError
from icckd_jax.experiments.sweep import run_store
from icckd_jax.runs import spec
from icckd_jax.runs import validate
from icckd_jax.stages import student_step
from icckd_jax.training import dot
from icckd_jax.training import optim
from launch_in_process import refusal


def _only(params, names=('d',)):
  return {k: k in names for k in params}


def _run(tx, params, grads_per_step):
  state = tx.init(params)
  for grads in grads_per_step:
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
  return params, state


def test_two_steps_by_hand():
  """β = 0.9, Δ = 0.05 (momenta 0.85, 0.95), λ = 0.1, η = 0.5 then 0.25;
  w reached by both gradients, d by the distillation one alone."""
  tx = dot.dot(
    lambda count: jnp.where(count == 0, 0.5, 0.25), 0.9, 0.05, 0.1, _only
  )
  params = {'w': jnp.float32(1.0), 'd': jnp.float32(2.0)}
  zero = jnp.float32(0.0)
  steps = [
    ({'w': 1.0, 'd': zero}, {'w': 0.5, 'd': 1.0}),
    ({'w': 2.0, 'd': zero}, {'w': -1.0, 'd': 1.0}),
  ]
  params, state = _run(tx, params, jax.tree.map(jnp.float32, steps))
  # w: v_task 1 + 0.1 = 1.1, v_kd 0.5, w 1 - 0.5 · 1.6 = 0.2; then
  # v_task 0.85 · 1.1 + 2 + 0.1 · 0.2 = 2.955, v_kd 0.95 · 0.5 - 1 = -0.525,
  # w 0.2 - 0.25 · 2.43 = -0.4075.
  # d: v 1 (the first step undecayed, as published), d 2 - 0.5 = 1.5;
  # v 0.9 · 1 + 1 + 0.1 · 1.5 = 2.05, d 1.5 - 0.25 · 2.05 = 0.9875; its
  # task momentum stays 0.
  np.testing.assert_allclose(params['w'], -0.4075, rtol=1e-6)
  np.testing.assert_allclose(params['d'], 0.9875, rtol=1e-6)
  np.testing.assert_allclose(state.task['w'], 2.955, rtol=1e-6)
  np.testing.assert_allclose(state.kd['w'], -0.525, rtol=1e-6)
  np.testing.assert_allclose(state.kd['d'], 2.05, rtol=1e-6)
  assert state.task['d'] == 0 and state.count == 2


# tests/make_dot_references.py under PyTorch 2.13.0 (CPU): mdistiller's
# DistillationOrientedTrainer at a08d46f on refs' inputs.
PUBLISHED = {
  0: {
    'w': [0.641428888, 0.708105624, 0.081344448, -0.621407151],
    'd': [0.777582526, 0.008576198],
  },
  1: {
    'w': [0.410375208, 0.545853198, 0.125659361, -0.316652119],
    'd': [0.729158342, 0.049726691],
  },
  2: {
    'w': [0.40481177, 0.552840889, 0.144700825, -0.284419775],
    'd': [0.731332958, 0.051564861],
  },
}
PUBLISHED_TASK_W = [1.421211004, -0.978721917, -2.918783903, -3.48611474]
PUBLISHED_KD_W = [-0.86486578, 0.279948562, 1.014637709, 0.262880266]
PUBLISHED_KD_D = [-0.217461288, -0.183817178]


def test_equals_the_published_optimizer():
  tx = dot.dot(
    lambda count: jnp.asarray(refs.LEARNING_RATES)[count],
    refs.MOMENTUM,
    refs.DELTA,
    refs.WEIGHT_DECAY,
    _only,
  )
  params = jax.tree.map(jnp.asarray, refs.initial())
  state = tx.init(params)
  for step in range(len(refs.LEARNING_RATES)):
    task, kd = refs.gradients(step)
    task = {'w': task['w'], 'd': np.zeros_like(kd['d'])}
    updates, state = tx.update((task, kd), state, params)
    params = optax.apply_updates(params, updates)
    for name in params:
      np.testing.assert_allclose(
        params[name], PUBLISHED[step][name], rtol=2e-6, atol=1e-7
      )
  np.testing.assert_allclose(state.task['w'], PUBLISHED_TASK_W, rtol=2e-6)
  np.testing.assert_allclose(state.kd['w'], PUBLISHED_KD_W, rtol=2e-6)
  np.testing.assert_allclose(state.kd['d'], PUBLISHED_KD_D, rtol=2e-6)


def test_a_students_own_distiller_parameters_are_distillation_only():
  params = {'model': {'a': 1.0, 'b': {'c': 2.0}}, 'distiller': {'t': 3.0}}
  assert dot.model_and_distiller(params) == {
    'model': {'a': False, 'b': {'c': False}},
    'distiller': {'t': True},
  }


def test_the_step_takes_the_task_and_distillation_gradients_apart():
  """One forward pass: ∂(w·CE) and ∂(loss − w·CE), which sum to the loss's
  gradient; the default path is the loss's gradient."""
  w_ce = jnp.float32(0.3)

  def loss_fn(p):
    ce, term = jnp.sin(p['x']) ** 2, p['x'] * p['y'] ** 3
    loss = w_ce * ce + 0.7 * term
    return loss, (None, None, {'ce': ce, 'loss': loss}, None)

  params = {'x': jnp.float32(0.4), 'y': jnp.float32(-1.2)}
  task = lambda parts: w_ce * parts['ce']
  (g_task, g_kd), aux = student_step._gradients(loss_fn, params, task, True)
  grads, _ = student_step._gradients(loss_fn, params, task, False)
  x, y = 0.4, -1.2
  np.testing.assert_allclose(g_task['x'], 0.3 * np.sin(2 * x), rtol=1e-6)
  assert g_task['y'] == 0
  np.testing.assert_allclose(g_kd['x'], 0.7 * y**3, rtol=1e-6)
  np.testing.assert_allclose(g_kd['y'], 0.7 * 3 * x * y**2, rtol=1e-6)
  jax.tree.map(
    lambda a, b, c: np.testing.assert_allclose(a + b, c, rtol=1e-6),
    g_task,
    g_kd,
    grads,
  )
  assert set(aux[2]) == {'ce', 'loss'}


@pytest.mark.parametrize('name', sorted(distillers.DISTILLERS))
def test_every_method_names_the_traced_weight_of_its_task_term(name):
  method = distillers.DISTILLERS[name]
  assert method.task_weight in distillers.traced(name)


def test_kd_dot_step_holds_both_momenta_and_splits_kds_loss():
  config = student_config.get_config('smoke')
  config.optimizer = 'dot'
  recipe = spec.from_config(config).recipe
  assert optim.splits_gradients(recipe)
  tx = optim.create_optimizer(recipe, lambda count: 0.1)
  state = tx.init({'model': {'k': jnp.ones(3)}})
  assert isinstance(state, dot.DotState)
  assert not optim.splits_gradients(
    spec.from_config(student_config.get_config('smoke')).recipe
  )
  kd = distillers.build(spec.from_config(config).distillation)
  hp = {'gamma': jnp.float32(0.1)}
  assert kd.task({'ce': jnp.float32(2.0), 'kd': 5.0}, hp) == jnp.float32(0.2)


def test_teacher_refuses_dot_in_one_line(tmp_path):
  line = refusal(
    tmp_path / 't',
    '--config=configs/teacher.py:smoke',
    '--config.optimizer=dot',
  )
  assert "config.optimizer='dot' splits a student's task" in line
  assert "a teacher has no distillation term: use 'sgd'" in line


@pytest.mark.parametrize(
  'fields,expected',
  [
    ({'optimizer': 'adam'}, "config.optimizer='adam' is unknown; choose one"),
    (
      {'optimizer': 'dot', 'dot_delta': 0.15},
      'config.dot_delta=0.15 gives DOT the momenta 0.75 and 1.05; with '
      'momentum=0.9 both must be in [0, 1)',
    ),
    ({'dot_delta': -0.1}, 'config.dot_delta=-0.1 is out of range'),
  ],
)
def test_student_config_refusals(fields, expected):
  config = student_config.get_config('smoke')
  config.update(fields)
  with pytest.raises(UserError, match=re.escape(expected)):
    validate.check_config(config)


def test_keys_of_sgd_runs_are_unchanged_and_dot_is_another_run():
  base = student_config.get_config('smoke')
  without = base.copy_and_resolve_references()
  del without['optimizer']
  del without['dot_delta']
  key = run_store.student_key(base, 'teacher')
  assert run_store.student_key(without, 'teacher') == key
  assert spec.from_config(without).compiled == spec.from_config(base).compiled
  base.dot_delta = 0.09  # read by DOT alone
  assert run_store.student_key(base, 'teacher') == key
  base.optimizer = 'dot'
  dot_key = run_store.student_key(base, 'teacher')
  assert dot_key != key
  base.dot_delta = 0.075
  assert run_store.student_key(base, 'teacher') != dot_key
  # A teacher saved before the fields existed keeps its key too.
  teacher = teacher_config.get_config('smoke')
  old = teacher.copy_and_resolve_references()
  del old['optimizer'], old['dot_delta']
  assert run_store.teacher_key(old) == run_store.teacher_key(teacher)


@pytest.mark.parametrize('pair', sorted(imagenet.PAIRS))
def test_imagenet_dot_rows_are_the_kd_row_with_dot(pair):
  c, kd = imagenet.get_config(f'{pair}_dot'), imagenet.get_config(pair)
  validate.check_config(c)
  assert (c.optimizer, c.dot_delta, kd.optimizer) == ('dot', 0.09, 'sgd')
  c.optimizer, c.dot_delta = kd.optimizer, kd.dot_delta
  assert c.to_dict() == kd.to_dict()
