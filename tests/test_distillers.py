"""The distillation methods (icckd_jax/distillers): stage maps of every model
family, each method's loss as its documented composition of the tested
losses, the config checks, and one real student step per method."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import student as student_config
from configs import teacher as teacher_config
from icckd_jax import distillers
from icckd_jax import models
from icckd_jax import parallel
from icckd_jax.distillers import wttm
from icckd_jax.data import datasets
from icckd_jax.input_pipeline import resident
from icckd_jax.errors import UserError
from icckd_jax.models import stages as model_stages
from icckd_jax.objective import student_losses
from icckd_jax.objective import losses
from icckd_jax.stages import student
from icckd_jax.stages import student_step
from icckd_jax.runs import train_state
from icckd_jax.runs import spec

# One model per family: its stage maps' [H, W, C] on 32x32 inputs
# (mdistiller's feats[1:]).
STAGE_SHAPES = {
  'resnet8': [(32, 32, 16), (16, 16, 32), (8, 8, 64)],
  'ResNet50': [(32, 32, 256), (16, 16, 512), (8, 8, 1024), (4, 4, 2048)],
  'wrn_16_2': [(32, 32, 32), (16, 16, 64), (8, 8, 128)],
  'vgg8': [(16, 16, 128), (8, 8, 256), (4, 4, 512), (4, 4, 512)],
  'MobileNetV2': [(16, 16, 12), (8, 8, 16), (4, 4, 48), (2, 2, 160)],
  'ShuffleV1': [(16, 16, 240), (8, 8, 480), (4, 4, 960)],
  'ShuffleV2': [(16, 16, 116), (8, 8, 232), (4, 4, 464)],
}
METHODS = (
  'kd',
  'kd_rkd',
  'dkd',
  'dist',
  'at',
  'nst',
  'pkt',
  'sp',
  'rkd',
  'wttm',
)


@pytest.mark.parametrize('name', STAGE_SHAPES)
def test_stage_maps_and_unchanged_parameter_tree(name):
  model = models.create_model(name, 10)
  x = jnp.zeros((2, 32, 32, 3))

  def run():
    plain = model.init(jax.random.key(0), x, train=False)
    everything = model.init(jax.random.key(0), x, train=False, mutable=True)
    out, state = model.apply(
      plain, x, train=True, mutable=['batch_stats', 'intermediates']
    )
    return plain, everything, out, state

  plain, everything, out, state = jax.eval_shape(run)
  # Recording adds no variable: the default init and the one run with every
  # collection mutable hold the same parameters and statistics.
  assert set(plain) == {'params', 'batch_stats'}
  assert set(everything) == {'params', 'batch_stats', 'intermediates'}
  for part in ('params', 'batch_stats'):
    assert jax.tree.structure(plain[part]) == jax.tree.structure(
      everything[part]
    )
  maps, preacts = model_stages.collected(state)
  for recorded in (maps, preacts):
    assert [m.shape for m in recorded] == [
      (2, *shape) for shape in STAGE_SHAPES[name]
    ]
  assert out[0].shape == (2, 10)


def _outputs(key, batch=6, classes=5, stage_shapes=((8, 8, 4), (4, 4, 6))):
  keys = jax.random.split(key, 3 + len(stage_shapes))
  return distillers.Outputs(
    logits=2 * jax.random.normal(keys[0], (batch, classes)),
    features=jax.random.normal(keys[1], (batch, 7)),
    stages=tuple(
      jax.random.normal(k, (batch, *s)) for k, s in zip(keys[3:], stage_shapes)
    ),
    preact_stages=(),
  )


# What a loss receives for the trainable parts a method without them has not.
NO_TRAINABLE = distillers.Trainable(None, None, None, jnp.int32(0))


def _batch(s, t, labels):
  """One device's Batch (gather the identity) of a method without
  trainable parts."""
  return distillers.Batch(s, t, labels, lambda a: a, NO_TRAINABLE)


def _hp(epoch=5.0, **overrides):
  """Every method's traced settings at their defaults, with `overrides`."""
  traced = {
    name: overrides.get(name, s.default)
    for name, s in distillers.declarations().items()
    if s.traced
  }
  return {**student_step.hyperparameters(traced), 'epoch': jnp.float32(epoch)}


def _ce(s, labels):
  return losses.cross_entropy(s.logits, labels).mean()


# method -> its documented composition of the tested losses.
def _reference(method, s, t, labels, hp, standardize=False):
  sl, tl = s.logits, t.logits
  if standardize:
    sl, tl = (student_losses.standardize_logits(z) for z in (sl, tl))
  temp = hp['temperature']
  rkd = losses.rkd_loss(s.features, t.features, hp['w_dist'], hp['w_angle'])
  warm = jnp.minimum(hp['epoch'] / hp['dkd_warmup_epochs'], 1.0)
  return {
    'kd': lambda: (
      hp['gamma'] * _ce(s, labels) + hp['alpha'] * losses.kd_loss(sl, tl, temp)
    ),
    'kd_rkd': lambda: _reference('kd', s, t, labels, hp) + hp['beta'] * rkd,
    'rkd': lambda: hp['ce_weight'] * _ce(s, labels) + hp['beta'] * rkd,
    'dkd': lambda: (
      hp['ce_weight'] * _ce(s, labels)
      + warm
      * student_losses.dkd_loss(
        sl, tl, labels, hp['dkd_alpha'], hp['dkd_beta'], temp
      )
    ),
    'dist': lambda: (
      hp['ce_weight'] * _ce(s, labels)
      + student_losses.dist_loss(
        sl, tl, hp['dist_beta'], hp['dist_gamma'], temp
      )
    ),
    'at': lambda: (
      hp['ce_weight'] * _ce(s, labels)
      + hp['at_weight']
      * (
        student_losses.at_loss(s.stages[0], t.stages[0], 2)
        + student_losses.at_loss(s.stages[1], t.stages[1], 2)
      )
    ),
    'nst': lambda: (
      hp['ce_weight'] * _ce(s, labels)
      + hp['nst_weight']
      * (
        student_losses.nst_loss(s.stages[0], t.stages[0])
        + student_losses.nst_loss(s.stages[1], t.stages[1])
      )
    ),
    'sp': lambda: (
      hp['ce_weight'] * _ce(s, labels)
      + hp['sp_weight'] * student_losses.sp_loss(s.stages[-1], t.stages[-1])
    ),
    'pkt': lambda: (
      hp['ce_weight'] * _ce(s, labels)
      + hp['pkt_weight'] * student_losses.pkt_loss(s.features, t.features)
    ),
    'wttm': lambda: (
      hp['ce_weight'] * _ce(s, labels)
      + hp['wttm_weight'] * wttm.wttm_loss(sl, tl, hp['wttm_power'])
    ),
  }[method]()


def _build(method, **fields):
  distill = student_config.get_config().distill
  distill.method = method
  distill.update(fields)
  return distillers.build(distill)


@pytest.mark.parametrize(
  'method,standardize',
  [*[(m, False) for m in METHODS], ('kd', True), ('dkd', True), ('dist', True)],
)
def test_loss_is_the_documented_composition(method, standardize):
  s = _outputs(jax.random.key(0))
  t = _outputs(jax.random.key(1), stage_shapes=((4, 4, 3), (2, 2, 8)))
  labels = jnp.array([0, 1, 2, 3, 4, 0])
  hp = _hp()
  distiller = _build(method, standardize_logits=standardize)
  # gather is the identity on one device; jitted, as in the step (and one
  # compilation is faster than running op by op).
  (loss, parts, buffers), expected = jax.jit(
    lambda s, t, labels, hp: (
      distiller.loss(_batch(s, t, labels), hp),
      _reference(method, s, t, labels, hp, standardize),
    )
  )(s, t, labels, hp)
  np.testing.assert_allclose(loss, expected, rtol=2e-6)
  np.testing.assert_allclose(parts['ce'], _ce(s, labels), rtol=1e-6)
  assert buffers is None  # handed back unchanged
  assert distiller.reads.stages == (method in ('at', 'nst', 'sp'))
  assert distiller.reads.epoch == (method == 'dkd')
  assert not distiller.trainable


def test_dkd_warmup_ramps_over_epochs():
  s, t = _outputs(jax.random.key(0)), _outputs(jax.random.key(1))
  labels = jnp.arange(6) % 5
  loss = jax.jit(
    lambda hp: distillers.get('dkd').loss(_batch(s, t, labels), hp)[1]
  )
  factors = [float(loss(_hp(epoch=e))['dkd_warmup']) for e in (1, 10, 20, 40)]
  assert factors == pytest.approx([0.05, 0.5, 1.0, 1.0])
  assert loss(_hp(epoch=1, dkd_warmup_epochs=0.0))['dkd_warmup'] == 1.0


def test_gradients_reach_the_student_and_are_finite():
  s, t = _outputs(jax.random.key(0)), _outputs(jax.random.key(1))
  labels = jnp.arange(6) % 5
  hp = _hp(gamma=0.0, ce_weight=0.0)  # the distillation terms alone
  for method in METHODS:
    fn = distillers.get(method).loss
    grads = jax.jit(jax.grad(lambda o, fn=fn: fn(_batch(o, t, labels), hp)[0]))(
      s
    )
    for name, g in zip(grads._fields, grads):
      for leaf in jax.tree.leaves(g):
        assert np.isfinite(leaf).all(), (method, name)
    used = {
      'at': 'stages',
      'nst': 'stages',
      'sp': 'stages',
      'pkt': 'features',
      'rkd': 'features',
    }.get(method, 'logits')
    assert any(
      np.abs(leaf).max() > 0 for leaf in jax.tree.leaves(getattr(grads, used))
    ), method


@pytest.mark.parametrize('method', ['at', 'kd_rkd', 'pkt'])
def test_standardize_logits_is_refused_for_other_methods(method):
  with pytest.raises(
    UserError,
    match='standardize_logits=True applies to kd, dkd, dist, ctkd, mlkd only',
  ) as e:
    _build(method, standardize_logits=True)
  assert '\n' not in str(e.value)


def test_unknown_method_is_a_user_error():
  with pytest.raises(UserError, match="method='no_such' is unknown"):
    _build('no_such')


@pytest.fixture(scope='module')
def tiny_run():
  """A tiny synthetic data set on a 1-device mesh, a random resnet8 teacher
  (its weights do not matter to a step's mechanics), and the resnet8
  student's initial state and first batch, made once: they do not depend
  on the method, and building them costs more than a step. Both networks
  come from one compiled init (other keys)."""
  config = student_config.get_config('smoke')
  config.dataset.update(num_train=16, num_test=16, image_size=8)
  config.batch_size = 8
  config.weight_decay = 0.0  # an unchanged weight then means no gradient
  dataset = datasets.load(spec.data_request(config.dataset))
  mesh = parallel.make_mesh(1)
  t_config = teacher_config.get_config('smoke')
  config.model = t_config.model
  model = models.create_model(t_config.model, dataset.num_classes)
  init = jax.jit(lambda key: model.init(key, jnp.zeros((1, 8, 8, 3))))
  t_variables = jax.device_put(
    init(jax.random.key(3)), parallel.replicated(mesh)
  )
  setup = student.build_student(
    spec.from_config(config), dataset, mesh, t_config, t_variables
  )
  source = resident.ResidentSource.of(dataset)
  batch = next(setup.batches(spec.from_config(config).recipe, source, mesh, 0))
  s_variables = jax.device_get(init(jax.random.key(4)))
  state = train_state.create_train_state(
    {'model': s_variables['params']}, s_variables['batch_stats'], setup.tx
  )
  return (
    config,
    dataset,
    mesh,
    t_config,
    t_variables,
    jax.device_get(state),
    batch,
    model,
  )


def test_recording_leaves_the_outputs_unchanged(tiny_run):
  *_, variables, _, _, model = tiny_run
  x = jax.random.normal(jax.random.key(1), (2, 8, 8, 3))
  ((logits, features), state), (plain_logits, plain_features) = jax.jit(
    lambda v: (model.apply(v, x, mutable=['intermediates']), model.apply(v, x))
  )(variables)
  np.testing.assert_array_equal(logits, plain_logits)
  np.testing.assert_array_equal(features, plain_features)
  maps, preacts = model_stages.collected(state)
  # A ResNet stage's output is its last block's sum after the ReLU; the
  # last one, pooled, is the feature vector.
  for stage, preact in zip(maps, preacts):
    np.testing.assert_array_equal(stage, jax.nn.relu(preact))
  np.testing.assert_allclose(
    jnp.mean(maps[-1], axis=(1, 2)), features, rtol=1e-5, atol=1e-6
  )


@pytest.mark.parametrize('method', METHODS)
def test_one_student_step_per_method(tiny_run, method):
  config, dataset, mesh, t_config, t_variables, initial, batch, _ = tiny_run
  config = config.copy_and_resolve_references()
  config.distill.method = method
  # The distillation term alone drives the update.
  config.distill.update(gamma=0.0, ce_weight=0.0)
  teacher_before = jax.device_get(t_variables)
  setup = student.build_student(
    spec.from_config(config), dataset, mesh, t_config, t_variables
  )
  # A fresh copy: the step donates the state.
  state = jax.device_put(initial, parallel.replicated(mesh))
  before = initial.params
  state, metrics = setup.train_step(state, batch, setup.step_args)
  metrics, after = jax.device_get((metrics, state.params))
  assert all(np.isfinite(v) for v in metrics.values()), metrics
  assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(after))
  # The stem's kernel moved: the distillation gradient crossed the network.
  stem = before['model']['conv1']['kernel']
  assert np.abs(after['model']['conv1']['kernel'] - stem).max() > 0, method
  # Not donated, not written: the teacher's arrays are still there, equal.
  jax.tree.map(
    np.testing.assert_array_equal,
    teacher_before,
    jax.device_get(setup.step_args['teacher']),
  )


def test_register_refuses_a_taken_name_or_a_setting_declared_twice(
  monkeypatch,
):
  monkeypatch.setattr(distillers, 'DISTILLERS', dict(distillers.DISTILLERS))
  dkd = distillers.DISTILLERS['dkd']
  with pytest.raises(ValueError, match="'dkd' is registered already"):
    distillers.register('dkd', dkd)
  with pytest.raises(ValueError, match=r"\['dkd_alpha', 'dkd_beta'"):
    distillers.register('dkd2', dkd)
  with pytest.raises(ValueError, match=r"no shared settings \['tau'\]"):
    distillers.register('other', dataclasses.replace(dkd, shared=('tau',)))
  with pytest.raises(ValueError, match=r"\['method'\] are declared already"):
    distillers.register('other', dataclasses.replace(dkd, own={'method': 1}))
  # Nothing refused was added.
  assert not {'dkd2', 'other'} & set(distillers.DISTILLERS)
