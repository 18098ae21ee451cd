"""MLKD (icckd_jax/distillers/mlkd.py): its levels on hand-computed cases,
its loss and gradients against the authors' PyTorch code (literals from
tests/make_method_references.py), with and without logit standardisation,
and one student step on both views."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import make_method_references as refs
from configs import student as student_config
from configs import teacher as teacher_config
from conftest import SHARED_DATA, shared_fixture
from icckd_jax import distillers
from icckd_jax import models
from icckd_jax import parallel
from icckd_jax.data import datasets
from icckd_jax.distillers import mlkd
from icckd_jax.errors import UserError
from icckd_jax.input_pipeline import resident
from icckd_jax.runs import spec
from icckd_jax.runs import train_state
from icckd_jax.stages import student
from icckd_jax.stages import teacher
from icckd_jax.training import metric_writer

# The published MLKD's losses (each part's mean, as its trainer sums them)
# and the gradients of their sum w.r.t. the student's weak and strong
# logits, in float64 on refs' fixed logits, keyed by logit_stand (T, α, γ
# of refs.MLKD_CASES), printed by tests/make_method_references.py under
# PyTorch 2.13.0 (CPU).
PUBLISHED = {
  False: {
    'loss': 6.6868678505,
    'ce': 0.410580817884,
    'kd': 6.25870642258,
    'cc': 0.00971109338461,
    'bc': 0.00786951665752,
    'weak': [
      [
        -0.6084266515,
        -0.294586120138,
        0.0298133288953,
        0.331958953318,
        0.541240489425,
      ],
      [
        -0.0380278271829,
        0.06995592077,
        0.0566782167303,
        -0.0262974061538,
        -0.0623089041635,
      ],
      [
        0.213920996994,
        0.0350922448695,
        -0.0342170081924,
        -0.0918340701846,
        -0.122962163486,
      ],
      [
        -0.0545331930804,
        -0.0385414625782,
        -0.0035936156032,
        0.0454551450431,
        0.0512131262186,
      ],
    ],
    'strong': [
      [
        0.392562149999,
        0.183578309708,
        -0.0364643447872,
        -0.213698855878,
        -0.325977259043,
      ],
      [
        -0.226376603571,
        -0.179140907498,
        -0.0558760616773,
        0.103319376794,
        0.358074195952,
      ],
      [
        -0.369210985026,
        -0.130501430825,
        0.0874205877775,
        0.194899594159,
        0.217392233915,
      ],
      [
        0.302018900007,
        0.172121745281,
        0.0195776806008,
        -0.144126189395,
        -0.349592136494,
      ],
    ],
  },
  True: {
    'loss': 67.2648070705,
    'ce': 0.410580817884,
    'kd': 66.5941841102,
    'cc': 0.128523975002,
    'bc': 0.131518167459,
    'weak': [
      [
        0.304662084508,
        -0.38167982963,
        -0.494542845995,
        -0.0744357531184,
        0.645996344235,
      ],
      [
        -0.499710888758,
        0.275105065166,
        0.359273801643,
        0.0888957791961,
        -0.223563757248,
      ],
      [
        0.340251471608,
        2.26570193335,
        3.32875802384,
        1.13297300847,
        -7.06768443727,
      ],
      [
        -0.0794250065417,
        -0.0409894497602,
        0.0361423634856,
        0.102872301051,
        -0.0186002082349,
      ],
    ],
    'strong': [
      [
        0.12934026842,
        -0.0893605740293,
        -0.137928298682,
        -0.0418448300209,
        0.139793434312,
      ],
      [
        -0.154854360145,
        0.110437221434,
        0.107139512255,
        -0.0785848994192,
        0.0158625258755,
      ],
      [
        0.29051246294,
        -0.99934394068,
        -0.871750946685,
        0.0541668734408,
        1.52641555098,
      ],
      [
        -0.359162003053,
        0.101086526504,
        0.454430847546,
        0.418317630918,
        -0.614673001915,
      ],
    ],
  },
}


def _batch(weak, strong, labels):
  """One device's Batch (gather the identity) of logits only."""
  out = lambda z: distillers.Outputs(z, jnp.zeros((z.shape[0], 1)))  # noqa: E731
  return distillers.Batch(
    out(weak[0]),
    out(weak[1]),
    labels,
    lambda a: a,
    distillers.Trainable(None, None, None, jnp.int32(0)),
    student_strong=out(strong[0]),
    teacher_strong=out(strong[1]),
  )


@pytest.mark.parametrize('temp,alpha,gamma,standardize', refs.MLKD_CASES)
def test_equals_the_published_loss_and_gradients(
  temp, alpha, gamma, standardize
):
  ref = PUBLISHED[standardize]
  distill = student_config.get_config().distill
  distill.update(method='mlkd', standardize_logits=standardize)
  loss_fn = distillers.build(distill).loss
  hp = {'temperature': temp, 'alpha': alpha, 'gamma': gamma}
  t_weak, t_strong = refs.teacher_logits(), refs.strong_teacher_logits()
  labels = jnp.array(refs.MLKD_LABELS)

  def total(s_weak, s_strong):
    batch = _batch((s_weak, t_weak), (s_strong, t_strong), labels)
    loss, parts, _ = loss_fn(batch, hp)
    return loss, parts

  (loss, parts), (g_weak, g_strong) = jax.jit(
    jax.value_and_grad(total, argnums=(0, 1), has_aux=True)
  )(refs.student_logits(), refs.strong_student_logits())
  np.testing.assert_allclose(loss, ref['loss'], rtol=2e-6)
  np.testing.assert_allclose(gamma * parts['ce'], ref['ce'], rtol=2e-6)
  for name in ('kd', 'cc', 'bc'):
    np.testing.assert_allclose(alpha * parts[name], ref[name], rtol=2e-5)
  np.testing.assert_allclose(g_weak, ref['weak'], rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(g_strong, ref['strong'], rtol=1e-4, atol=1e-6)


def test_the_median_masks_keep_half_of_an_even_batch():
  # np.percentile(·, 50) of an even count averages the middle two.
  assert list(mlkd.below_median(jnp.array([0.4, 0.1, 0.9, 0.3]))) == [
    False,
    True,
    False,
    True,
  ]
  assert list(mlkd.below_median(jnp.array([0.4, 0.1, 0.9]))) == [
    True,
    True,
    False,
  ]


def test_class_and_batch_levels_by_hand():
  """A uniform student against a teacher certain of a different class for
  each of two examples: PsPsᵀ = PsᵀPs = ½·1 and PtPtᵀ = PtᵀPt = I, so each
  squared distance is 4·¼ = 1, over C = 2 and over B = 2."""
  s = jnp.zeros((2, 2))
  t = jnp.array([[60.0, -60.0], [-60.0, 60.0]])
  np.testing.assert_allclose(mlkd.class_correlation(s, t, 1.0), 0.5, rtol=1e-6)
  np.testing.assert_allclose(mlkd.batch_correlation(s, t, 1.0), 0.5, rtol=1e-6)
  for level in (mlkd.class_correlation, mlkd.batch_correlation):
    assert level(t, t, 4.0) == 0


def test_the_masks_scale_the_weak_terms_and_the_code_quirks_hold():
  """m scales the weak view's instance term and the batch term, m_c the
  class term; the strong view's last two temperatures read the weak view;
  standardisation reaches only the instance level."""
  s, t = refs.student_logits(), refs.teacher_logits()
  ss, ts = refs.strong_student_logits(), refs.strong_teacher_logits()
  terms = jax.jit(mlkd.mlkd_terms)((s, t), (ss, ts), 4.0)
  assert float(terms['mask_fraction']) == 0.5  # 2 of 4 confidences
  assert float(terms['class_mask_fraction']) == pytest.approx(0.6)  # 3 of 5
  kd = lambda a, b, temp: float(mlkd.losses.kd_loss(a, b, temp))  # noqa: E731
  temps = (4.0, 3.0, 5.0, 2.0, 6.0)
  expected = (
    0.5 * sum(kd(s, t, x) for x in temps)
    + sum(kd(ss, ts, x) for x in temps[:3])
    + sum(kd(s, t, x) for x in temps[3:])
  )
  np.testing.assert_allclose(terms['kd'], expected, rtol=1e-5)
  np.testing.assert_allclose(
    terms['bc'],
    0.5 * sum(float(mlkd.batch_correlation(s, t, x)) for x in temps),
    rtol=1e-5,
  )
  z = lambda a: np.zeros_like(a)  # noqa: E731
  stand = jax.jit(mlkd.mlkd_terms)(
    (s, t), (ss, ts), 4.0, ((z(s), z(t)), (z(ss), z(ts)))
  )
  assert float(stand['kd']) == 0  # equal standardised logits: no KL
  for name in ('cc', 'bc', 'mask_fraction', 'class_mask_fraction'):
    np.testing.assert_array_equal(stand[name], terms[name])


@pytest.mark.slow  # compiles RandAugment and a two-view step (~60 s)
def test_one_student_step_on_both_views():
  """A random teacher and a resnet8 student on 8x8 synthetic images: the
  batch carries a weak and a strong view, and the distillation terms alone
  move the student's stem."""
  config = student_config.get_config('smoke')
  config.dataset.update(num_train=16, num_test=16, image_size=8)
  config.batch_size = 8
  config.weight_decay = 0.0
  config.distill.update(method='mlkd', gamma=0.0)
  t_config = teacher_config.get_config('smoke')
  config.model = t_config.model
  dataset = datasets.load(spec.data_request(config.dataset))
  mesh = parallel.make_mesh(1)
  model = models.create_model(t_config.model, dataset.num_classes)
  init = jax.jit(lambda key: model.init(key, jnp.zeros((1, 8, 8, 3))))
  t_variables = jax.device_put(
    init(jax.random.key(3)), parallel.replicated(mesh)
  )
  run = spec.from_config(config)
  setup = student.build_student(run, dataset, mesh, t_config, t_variables)
  assert setup.num_views == 2 and setup.strong_view
  source = resident.ResidentSource.of(dataset)
  batch = next(setup.batches(run.recipe, source, mesh, 0))
  assert batch.images.shape == (2, 8, 8, 8, 3)
  s_variables = init(jax.random.key(4))
  state = jax.device_put(
    train_state.create_train_state(
      {'model': s_variables['params']}, s_variables['batch_stats'], setup.tx
    ),
    parallel.replicated(mesh),
  )
  stem = np.asarray(s_variables['params']['conv1']['kernel'])
  state, metrics = setup.train_step(state, batch, setup.step_args)
  metrics = jax.device_get(metrics)
  assert all(np.isfinite(v) for v in metrics.values()), metrics
  assert {'kd', 'cc', 'bc', 'mask_fraction'} <= set(metrics)
  after = np.asarray(state.params['model']['conv1']['kernel'])
  assert np.abs(after - stem).max() > 0


def _tiny(config):
  """32 8x8 synthetic images, batches of 8, one epoch of 4 steps."""
  config.dataset.update(num_train=32, num_test=16, image_size=8)
  config.update(batch_size=8, eval_batch_size=16, num_epochs=1)
  return config


@pytest.mark.slow  # a teacher and a student trained in-process (~90 s)
def test_a_smoke_student_trains_from_an_orbax_teacher(tmp_path):
  t_config = _tiny(teacher_config.get_config('smoke'))
  t_config.icc.lam = 0.0
  teacher.train_teacher(t_config, str(tmp_path / 'teacher'))
  config = _tiny(student_config.get_config('smoke'))
  config.teacher.workdir = str(tmp_path / 'teacher')
  config.distill.method = 'mlkd'
  summary = student.train_student(config, str(tmp_path / 'student'))
  assert np.isfinite(summary['final_top1'])
  (record,) = metric_writer.read_records(str(tmp_path / 'student'), 'epoch')
  assert np.isfinite(record['kd']) and record['cc'] > 0


@pytest.mark.slow  # a student of the RepDistiller .pth fixture (~60 s)
def test_mlkd_ls_trains_from_a_pth_teacher(tmp_path):
  pth = shared_fixture(SHARED_DATA / 'repdistiller' / 'resnet20_zip')
  config = _tiny(student_config.get_config('smoke'))
  config.teacher.update(pth=str(pth / 'ckpt_epoch_240.pth'), model='resnet20')
  config.dataset.num_classes = 100  # the fixture's classifier
  config.distill.update(
    method='mlkd', standardize_logits=True, temperature=2.0, alpha=9.0
  )
  summary = student.train_student(config, str(tmp_path / 'student'))
  assert np.isfinite(summary['final_top1'])


def test_the_strong_view_is_refused_in_one_line_for_other_channel_counts():
  config = student_config.get_config('smoke')
  config.dataset.update(num_train=16, num_test=16, image_size=8, channels=2)
  config.batch_size = 8
  config.distill.method = 'mlkd'
  t_config = teacher_config.get_config('smoke')
  dataset = datasets.load(spec.data_request(config.dataset))
  model = models.create_model(t_config.model, dataset.num_classes)
  t_variables = jax.eval_shape(
    lambda: model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 2)))
  )
  with pytest.raises(UserError, match='images of 1 or 3 channels') as e:
    student.build_student(
      spec.from_config(config), dataset, parallel.make_mesh(1), t_config,
      t_variables,
    )  # fmt: skip
  assert '\n' not in str(e.value) and "method='mlkd'" in str(e.value)
