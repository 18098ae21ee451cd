"""Distillers with trainable parts (fitnet, crd, ctkd, ...): their parameters and
buffers live in the student's state, train with it, leave the teacher
alone, and resume and shard like the rest of the state."""

import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import student as student_config
from configs import teacher as teacher_config
from icckd_jax import models
from icckd_jax import parallel
from icckd_jax.data import datasets
from icckd_jax.distillers import ctkd
from icckd_jax.input_pipeline import resident
from icckd_jax.errors import UserError
from icckd_jax.training import checkpoint
from icckd_jax.training import metric_writer
from icckd_jax.training import preemption
from icckd_jax.stages import student
from icckd_jax.stages import teacher
from icckd_jax.runs import spec
import helpers


def _tiny(config):
  """32 8x8 images of 10 classes, batches of 8: 4 steps an epoch."""
  config.dataset.update(num_train=32, num_test=16, image_size=8)
  config.batch_size = 8
  config.eval_batch_size = 16
  config.log_every_steps = 2
  return config


@pytest.fixture(scope='module')
def teacher_workdir(tmp_path_factory):
  """A cross-entropy smoke teacher of one epoch, trained in-process."""
  config = _tiny(teacher_config.get_config('smoke'))
  config.icc.lam = 0.0
  config.num_epochs = 1
  workdir = tmp_path_factory.mktemp('teacher') / 'run'
  teacher.train_teacher(config, str(workdir))
  return workdir


def _student_config(teacher_workdir, method, **distill):
  config = _tiny(student_config.get_config('smoke'))
  config.teacher.workdir = str(teacher_workdir)
  config.distill.method = method
  config.distill.update(crd_negatives=16, crd_dim=8, **distill)
  # One compiled step for every test of a method (the persistent cache then
  # serves the next build): no weight decay, so that a moved weight means
  # a gradient; small steps, so that float32 round-off from another
  # reduction order stays far below a real sharding mistake.
  config.weight_decay = 0.0
  config.learning_rate = 0.005
  return config


def _setup(config, devices):
  mesh = parallel.make_mesh(devices)
  run = spec.from_config(config)
  teacher_cfg, teacher_vars = helpers.load_teacher(run.teacher, mesh)
  dataset = datasets.load(run.data)
  return (
    mesh,
    dataset,
    student.build_student(run, dataset, mesh, teacher_cfg, teacher_vars),
  )


def _run_steps(config, devices, steps):
  """(initial state, final state, per-step metrics, teacher before, teacher
  after), on the host."""
  mesh, dataset, setup = _setup(config, devices)
  teacher_before = jax.device_get(setup.step_args['teacher'])
  state = setup.create_state(mesh)
  initial = jax.device_get(state)
  source = resident.ResidentSource.of(dataset)
  batches = setup.batches(spec.from_config(config).recipe, source, mesh, 0)
  metrics = []
  for _ in range(steps):
    state, m = setup.train_step(state, next(batches), setup.step_args)
    metrics.append(m)
  return (
    initial,
    jax.device_get(state),
    jax.device_get(metrics),
    teacher_before,
    jax.device_get(setup.step_args['teacher']),
  )


def _moved(before, after) -> bool:
  return all(
    np.abs(np.asarray(a) - np.asarray(b)).max() > 0
    for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after))
  )


@pytest.mark.parametrize(
  'method,term',
  [
    ('fitnet', 'fitnet'),
    ('crd', 'crd'),
    ('ctkd', 'kd'),
    # The file stays near 90 s cold in CI; these run in `make test-all`.
    *(
      pytest.param(m, m, marks=pytest.mark.slow)
      for m in ('vid', 'ofd', 'reviewkd')
    ),
  ],
)
def test_steps_train_model_and_distiller_not_teacher(
  teacher_workdir, method, term
):
  # ctkd's CE weight is KD's γ; its curriculum's full reversal from epoch
  # 1, or θ's step at this learning rate is below float32's resolution.
  config = _student_config(
    teacher_workdir, method, ce_weight=0.0, gamma=0.0, ctkd_curriculum_epochs=1
  )
  initial, final, metrics, t_before, t_after = _run_steps(config, 1, 3)
  assert all(np.isfinite(v) for m in metrics for v in m.values()), metrics
  assert all(m[term] > 0 for m in metrics)
  # The distillation term alone reached the stem and every distiller leaf.
  stem = ('model', 'conv1', 'kernel')
  get = lambda p: p[stem[0]][stem[1]][stem[2]]
  assert _moved(get(initial.params), get(final.params))
  assert _moved(initial.params['distiller'], final.params['distiller'])
  # Buffers: fitnet's BatchNorm statistics, crd's banks; vid, ctkd none.
  assert (final.distiller_buffers is None) == (method in ('vid', 'ctkd'))
  assert final.cache is None  # the teacher's negative cache field
  jax.tree.map(np.testing.assert_array_equal, t_before, t_after)
  if method == 'crd':
    # The bank's rows of the batches seen moved and stay unit vectors.
    bank = final.distiller_buffers['memory_s']
    assert not np.array_equal(bank, initial.distiller_buffers['memory_s'])
    assert np.all(final.distiller_buffers['z'] > 0)
    seen = np.abs(bank - initial.distiller_buffers['memory_s']).max(-1) > 0
    np.testing.assert_allclose(
      np.linalg.norm(bank[seen], axis=-1), 1, rtol=1e-5
    )


def test_crd_negatives_are_other_class_examples():
  from icckd_jax.distillers import crd  # pylint: disable=g-import-not-at-top

  labels = np.array([2, 0, 1, 2, 0, 1, 1, 2, 0, 2], np.int32)
  buffers = {
    'key': jax.random.key_data(jax.random.key(0)),
    **crd._class_tables(labels),
  }  # pylint: disable=protected-access
  idx = jnp.arange(10, dtype=jnp.int32)
  neg = np.asarray(
    crd._negatives(  # pylint: disable=protected-access
      buffers, jnp.asarray(labels), idx, jnp.int32(3), 200
    )
  )
  for i in range(10):
    assert np.all(labels[neg[i]] != labels[i])
    # Every other-class example is drawn.
    assert set(neg[i]) == set(np.flatnonzero(labels != labels[i]))


@pytest.mark.parametrize(
  'method',
  [
    'crd',
    # The others' synchronised BatchNorm, and mlkd's masks and correlation
    # matrices over the global batch, in `make test-all`.
    *(
      pytest.param(m, marks=pytest.mark.slow)
      for m in ('fitnet', 'vid', 'ofd', 'reviewkd', 'mlkd')
    ),
  ],
)
def test_same_on_one_and_two_devices(teacher_workdir, method):
  """One epoch (4 steps) on 1 and 2 devices: the same losses, and the same
  state up to float32 round-off (another reduction order)."""
  config = _student_config(teacher_workdir, method)
  runs = {n: _run_steps(config, n, 4) for n in (1, 2)}
  initial, state1, metrics1, *_ = runs[1]
  _, state2, metrics2, *_ = runs[2]
  for m1, m2 in zip(metrics1, metrics2):
    for k in m1:
      np.testing.assert_allclose(m2[k], m1[k], rtol=1e-4, atol=1e-5, err_msg=k)
  # CRD's banks are written at the same rows with the same values; the
  # distillers' BatchNorm statistics are the global batch's.
  parts = ('params', 'batch_stats', 'opt_state')
  buffers = ('distiller_buffers',) if state1.distiller_buffers else ()
  for part in parts + buffers:
    flat = lambda tree: np.concatenate(
      [np.ravel(np.asarray(x, np.float64)) for x in jax.tree.leaves(tree)]
    )
    a, b, x0 = (flat(getattr(s, part)) for s in (state2, state1, initial))
    assert np.linalg.norm(a - b) <= 1e-3 * np.linalg.norm(b - x0) + 1e-9, part


def _restore(workdir):
  with checkpoint.Checkpoints(str(workdir), read_only=True) as ckpts:
    state, meta = ckpts.restore(None, which='last', mesh=parallel.make_mesh(1))
  return jax.device_get(state), meta


@pytest.mark.slow
@pytest.mark.parametrize(
  'method,optimizer',
  # Whole runs stopped and resumed (about 45 s each): `make test-all`.
  # mlkd has no trainable part, but its strong view is drawn on the device
  # from the step's key: the resumed batches must be those of the run.
  [('crd', 'sgd'), ('ctkd', 'sgd'), ('kd', 'dot'), ('mlkd', 'sgd')],
)
def test_preempted_mid_epoch_resumes_bit_for_bit(
  teacher_workdir, tmp_path, monkeypatch, method, optimizer
):
  """SIGTERM (as `preemption.StopRequest` sees it) after step 5 of 8, mid
  epoch 2; the rerun ends bit-identical to an uninterrupted run: model,
  optimiser and metrics, and crd's embeddings, banks and Z, ctkd's
  temperature θ (its curriculum's λ read from the restored step), DOT's
  two momenta."""
  # ctkd: λ = 1/2 in epoch 1 and 1 in epoch 2, so θ moves (see above).
  config = _student_config(teacher_workdir, method, ctkd_curriculum_epochs=2)
  config.num_epochs = 2
  config.optimizer = optimizer
  straight = tmp_path / 'straight'
  student.train_student(config, str(straight))

  calls = []

  def requested(self, step):
    del self, step
    calls.append(1)
    return signal.SIGTERM if len(calls) == 6 else 0

  preempted = tmp_path / 'preempted'
  with monkeypatch.context() as patch:
    patch.setattr(preemption.StopRequest, 'requested', requested)
    with pytest.raises(preemption.Preempted):
      student.train_student(config, str(preempted))
  student.train_student(config, str(preempted))
  (state_a, meta_a), (state_b, meta_b) = (
    _restore(straight),
    _restore(preempted),
  )
  assert int(state_b['step']) == 8
  if method == 'ctkd':  # θ trained: the comparison below is not vacuous
    assert state_b['params']['distiller']['global_t'][0] != ctkd.INIT_THETA
  if optimizer == 'dot':  # both momenta are in the state compared below
    assert set(state_b['opt_state']) == {'count', 'task', 'kd'}
  jax.tree.map(np.testing.assert_array_equal, state_a, state_b)
  assert meta_a == meta_b
  drop = lambda workdir: [
    {k: v for k, v in r.items() if 'time' not in k and 'per_second' not in k}
    for r in metric_writer.read_records(str(workdir), 'epoch')
  ]
  assert [r['epoch'] for r in drop(straight)] == [1, 2]
  assert drop(straight) == drop(preempted)


@pytest.mark.slow
def test_distill_matrix_smoke_sweep(tmp_path):
  """configs/distill_matrix.py:smoke in-process: two teachers (each trained
  once, shared by its students) and every student, each one
  finished with a finite top-1. Whole runs (about 80 s with warm
  compilation caches, 40 % of it the sweep's report rewritten after each
  run)."""
  from configs import distill_matrix  # pylint: disable=g-import-not-at-top
  from icckd_jax.experiments.sweep import runner as sweep  # pylint: disable=g-import-not-at-top

  config = distill_matrix.get_config('smoke')
  rows = sweep.run_sweep(config, str(tmp_path / 'matrix'))
  names = [s.split(':')[0] for s in config.settings]
  assert sorted(r['setting'] for r in rows) == sorted(names)
  assert len(names) == 2 * len(distill_matrix.STUDENTS)
  assert all(np.isfinite(r['student_top1_last']) for r in rows), rows
  by_setting = {r['setting']: r for r in rows}
  for t in ('ce', 'icc'):
    assert (
      len(
        {
          by_setting[f'{t}.{s}']['teacher_top1_last']
          for s in distill_matrix.STUDENTS
        }
      )
      == 1
    )


def test_ofd_margin_is_the_mean_negative_response():
  """m = E[x | x < 0] for x ~ N(β, γ²), by quadrature; -3|γ| where almost
  no mass is negative."""
  from icckd_jax.distillers import ofd  # pylint: disable=g-import-not-at-top

  scale = np.array([1.0, -0.5, 2.0, 0.1], np.float32)
  bias = np.array([0.0, 0.3, -1.0, 5.0], np.float32)
  m = np.asarray(ofd.margin({'scale': scale, 'bias': bias}))
  for k in range(3):
    x = np.linspace(-40, 0, 400001)
    p = np.exp(-0.5 * ((x - bias[k]) / scale[k]) ** 2)
    np.testing.assert_allclose(m[k], (x * p).sum() / p.sum(), rtol=1e-3)
  np.testing.assert_allclose(m[3], -0.3, rtol=1e-6)


def test_reviewkd_options_cap_the_fusion_width_and_pick_student_maps():
  """mdistiller's MAX_MID_CHANNEL and STU_PREACT (its ImageNet recipes set
  256 and True): the fusion width is min(cap, the deepest student width);
  the student's pre-ReLU maps replace its post-ReLU ones."""
  from icckd_jax.distillers import reviewkd  # pylint: disable=g-import-not-at-top
  from icckd_jax.distillers.outputs import Outputs  # pylint: disable=g-import-not-at-top

  keys = iter(jax.random.split(jax.random.key(0), 12))
  shapes = ((1, 8, 8, 16), (1, 4, 4, 32))

  def outputs(width):
    return Outputs(
      logits=jax.random.normal(next(keys), (1, 5)),
      features=jax.random.normal(next(keys), (1, width)),
      stages=tuple(jax.random.normal(next(keys), s) for s in shapes),
      preact_stages=tuple(jax.random.normal(next(keys), s) for s in shapes),
    )

  student, teacher = outputs(32), outputs(32)
  # config.distill as the registry hands it on: a plain mapping.
  options = reviewkd.options(
    {'reviewkd_max_mid': 8, 'reviewkd_student_preact': True}
  )
  assert options == {'max_mid': 8, 'student_preact': True}
  params, _ = reviewkd.init(
    jax.random.key(1), student, teacher, None, None, **options
  )
  # abf_0 is the deepest level (the pooled features); each fuses at width 8.
  assert all(
    params[f'abf_{k}']['Conv_0']['kernel'].shape[-1] == 8 for k in range(3)
  )
  for preact, maps in ((True, student.preact_stages), (False, student.stages)):
    levels = reviewkd._levels(student, teacher, preact)  # pylint: disable=protected-access
    assert [s for s, _ in levels[1:]] == list(maps[::-1])
  # The CIFAR recipe's defaults: a cap of 512, post-ReLU maps.
  assert reviewkd.options({}) == {
    'max_mid': 512,
    'student_preact': False,
  }


def test_ofd_margins_come_from_the_bn_before_each_stage_relu():
  """A bottleneck's 'bn3', a basic block's 'bn2', of each stage's last
  block (mdistiller's get_bn_before_relu); a teacher without ResNet stages
  is one UserError."""
  from icckd_jax.distillers import ofd  # pylint: disable=g-import-not-at-top

  for name, bn in (('imagenet_resnet50', 'bn3'), ('imagenet_resnet18', 'bn2')):
    params = jax.eval_shape(
      lambda m=models.create_model(name, 10): m.init(
        jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False
      )
    )['params']
    last = {'imagenet_resnet50': (2, 3, 5, 2), 'imagenet_resnet18': (1,) * 4}
    expected = [
      params[f'layer{s + 1}_{b}'][bn] for s, b in enumerate(last[name])
    ]
    assert ofd._bn_before_relu(params) == expected  # pylint: disable=protected-access
  with pytest.raises(UserError, match='ofd needs a ResNet teacher'):
    ofd._bn_before_relu({'conv1': {}, 'blocks0_0': {}})  # pylint: disable=protected-access


@pytest.mark.slow  # `make test-all` (see the parametrisation above)
def test_kdsvd_step_reaches_the_model_not_the_teacher(teacher_workdir):
  """KDSVD has no trainable part: the SVD's gradient alone (CE off) moves
  the student's stem, finitely, and the teacher stays as it was."""
  config = _student_config(teacher_workdir, 'kdsvd', ce_weight=0.0)
  initial, final, metrics, t_before, t_after = _run_steps(config, 1, 2)
  assert all(np.isfinite(v) for m in metrics for v in m.values()), metrics
  assert metrics[0]['kdsvd'] > 0
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(final.params))
  stem = lambda p: p['model']['conv1']['kernel']
  assert _moved(stem(initial.params), stem(final.params))
  assert set(final.params) == {'model'} and final.distiller_buffers is None
  jax.tree.map(np.testing.assert_array_equal, t_before, t_after)


def test_kdsvd_svd_and_alignment():
  """A rank-1 map's leading right singular vector is its channel direction
  (up to sign); alignment flips a student vector to the teacher's sign and
  picks the closest of the student's."""
  from icckd_jax.distillers import kdsvd  # pylint: disable=g-import-not-at-top

  direction = np.array([3.0, 0.0, 4.0], np.float32) / 5
  spatial = np.arange(1.0, 5.0, dtype=np.float32)
  feature_map = (spatial[:, None] * direction).reshape(1, 2, 2, 3)
  v, s = kdsvd.svd(jnp.asarray(feature_map), 1)
  np.testing.assert_allclose(np.abs(v[0, :, 0]), direction, atol=1e-5)
  np.testing.assert_allclose(s, [[1.0]], atol=1e-6)
  teacher = jnp.asarray(direction)[None, :, None]  # [1, 3, 1]
  student = jnp.stack(
    [jnp.asarray([0.0, 1.0, 0.0]), -jnp.asarray(direction)], -1
  )[None]  # [1, 3, 2]: orthogonal, then flipped
  np.testing.assert_allclose(kdsvd.align(student, teacher), teacher, atol=1e-6)
