"""A student distilled from a PyTorch `.pth` teacher, configs/eval.py on the
same file, and the plain parameters export."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import student as student_config
from conftest import SHARED_DATA, shared_fixture
from icckd_jax.input_pipeline.source import TrainFeed
from icckd_jax import models
from icckd_jax.input_pipeline import augment
from icckd_jax.data import datasets
from icckd_jax.input_pipeline import resident
from icckd_jax.errors import UserError
from icckd_jax.interop import params_file
from icckd_jax.interop import torch_import
from icckd_jax.objective import losses
from icckd_jax.stages import evaluate_checkpoint
from icckd_jax.stages import evaluate_pth
from icckd_jax.training import metric_writer
from icckd_jax import parallel
from icckd_jax.stages import student
from icckd_jax.stages import teacher_source
from icckd_jax.runs import spec
from icckd_jax.runs import layout
import helpers

FIXTURE = SHARED_DATA / 'repdistiller' / 'resnet20_zip'
PTH = FIXTURE / 'ckpt_epoch_240.pth'


@pytest.fixture(scope='module')
def config():
  shared_fixture(PTH)
  c = student_config.get_config('smoke')
  c.teacher.pth = str(PTH)
  c.teacher.model = 'resnet20'
  c.dataset.num_classes = 100  # the fixture's classifier
  c.dataset.num_train = 64
  c.dataset.num_test = 64
  c.num_epochs = 1
  c.eval_batch_size = 32
  c.log_every_steps = 1
  return c


@pytest.fixture(scope='module')
def student_run(config, tmp_path_factory):
  workdir = tmp_path_factory.mktemp('pth_student') / 'run'
  summary = student.train_student(config, str(workdir))
  return workdir, summary


def _teacher_loss(dataset, mean, std):
  """Mean cross-entropy of the fixture teacher on the test split, its input
  normalised with (mean, std) in [0, 255] units."""
  variables = torch_import.load_checkpoint(str(PTH), 'resnet20', 100)
  x = (dataset.test_images.astype(np.float32) - mean) / std
  logits, _ = models.create_model('resnet20', 100).apply(variables, x)
  return float(losses.cross_entropy(logits, dataset.test_labels).mean())


@pytest.mark.slow  # shares a student trained on 4 emulated devices
def test_teacher_accuracy_at_start_equals_eval_config(
  config, student_run, capsys, tmp_path
):
  workdir, summary = student_run
  with open(workdir / layout.TEACHER_EVAL_FILE) as f:
    at_start = json.load(f)
  assert at_start['source'] == str(PTH) and at_start['count'] == 64
  assert summary['teacher_top1'] == at_start['top1']
  steps = metric_writer.read_records(str(workdir), 'train')
  assert [r['step'] for r in steps] == [1, 2]
  assert all(np.isfinite(r['loss']) for r in steps)

  printed = evaluate_pth.evaluate_pytorch(
    str(PTH),
    'resnet20',
    spec.data_request(config.dataset),
    batch_size=64,
    export=str(tmp_path / 't.msgpack'),
  )
  assert printed['top1'] == at_start['top1']
  assert printed['top5'] == at_start['top5']
  np.testing.assert_allclose(printed['loss'], at_start['loss'], rtol=1e-6)

  # Both normalise the teacher's input with the benchmark's statistics, not
  # the data set's, which would give another loss.
  dataset = datasets.load(spec.data_request(config.dataset))
  benchmark = _teacher_loss(dataset, *torch_import.benchmark_normalization())
  own = _teacher_loss(dataset, dataset.mean, dataset.std)
  np.testing.assert_allclose(at_start['loss'], benchmark, rtol=1e-5)
  assert abs(own - benchmark) > 1e-3 * benchmark


def test_exported_file_loads_in_three_lines(tmp_path):
  shared_fixture(PTH)
  path = tmp_path / 'teacher.msgpack'
  variables = torch_import.load_checkpoint(str(PTH), 'resnet20')
  params_file.save(
    str(path),
    variables,
    model='resnet20',
    num_classes=100,
    mean=torch_import.benchmark_normalization()[0],
    std=torch_import.benchmark_normalization()[1],
  )
  reference = np.load(FIXTURE / 'reference_outputs.npz')
  images = reference['images_uint8'].astype(np.float32)
  # The three lines of interop/params_file.py's docstring.
  from flax import serialization  # pylint: disable=g-import-not-at-top

  f = serialization.msgpack_restore(open(path, 'rb').read())
  logits, features = models.create_model(f['model'], f['num_classes']).apply(
    f['variables'], (images - f['mean']) / f['std']
  )
  np.testing.assert_allclose(logits, reference['logits'], atol=1e-5)
  np.testing.assert_allclose(features, reference['features'], atol=1e-5)


@pytest.mark.slow  # shares a student trained on 4 emulated devices
def test_native_checkpoint_export_predicts_like_its_evaluation(
  config, student_run, tmp_path, capsys
):
  workdir, _ = student_run
  path = tmp_path / 'student.msgpack'
  result = evaluate_checkpoint.evaluate_checkpoint(
    str(workdir), 'last', batch_size=32, export=str(path)
  )
  exported = params_file.load(str(path))
  assert (exported['model'], exported['num_classes']) == ('resnet8', 100)
  assert set(exported['variables']) == {'params', 'batch_stats'}
  dataset = datasets.load(spec.data_request(config.dataset))
  logits, _ = models.create_model('resnet8', 100).apply(
    exported['variables'],
    (dataset.test_images.astype(np.float32) - exported['mean'])
    / exported['std'],
  )
  top1 = float(np.mean(np.argmax(logits, -1) == dataset.test_labels))
  assert top1 == result['top1']
  capsys.readouterr()


@pytest.mark.slow  # shares a student trained on 4 emulated devices
def test_step_feeds_the_teacher_benchmark_normalised_images(
  config, student_run
):
  workdir, _ = student_run
  first = metric_writer.read_records(str(workdir), 'train')[0]
  assert first['step'] == 1
  # The first step's batch and initial student, rebuilt as the run built them.
  mesh = parallel.make_mesh(None)
  dataset = datasets.load(spec.data_request(config.dataset))
  batch = next(
    resident.ResidentSource.of(dataset).train_batches(
      mesh,
      TrainFeed(
        seed=config.seed,
        batch_size=config.batch_size,
        num_views=1,
        crop_padding=config.crop_padding,
        flip=config.flip,
      ),
      0,
    )
  )
  raw = np.asarray(batch.images[0])
  student_model = models.create_model('resnet8', 100)
  initial = jax.jit(
    lambda key: student_model.init(key, jnp.zeros((1, 32, 32, 3)), train=False)
  )(jax.random.key(config.seed))
  (s_logits, _), _ = jax.jit(
    lambda v, x: student_model.apply(v, x, train=True, mutable=['batch_stats'])
  )(initial, augment.normalize(raw, dataset.mean, dataset.std))
  teacher = models.create_model('resnet20', 100)
  variables = torch_import.load_checkpoint(str(PTH), 'resnet20')
  teacher_logits = jax.jit(lambda x: teacher.apply(variables, x)[0])

  def kd(mean, std):
    t_logits = teacher_logits(augment.normalize(raw, mean, std))
    return float(losses.kd_loss(s_logits, t_logits, 4.0))

  expected = kd(*torch_import.benchmark_normalization())
  np.testing.assert_allclose(first['kd'], expected, rtol=1e-4)
  assert abs(kd(dataset.mean, dataset.std) - expected) > 1e-3 * expected


def test_renormalized_teacher_sees_its_own_statistics(config):
  dataset = datasets.load(spec.data_request(config.dataset))
  mean, std = torch_import.benchmark_normalization()
  model = models.create_model('resnet20', 100)
  variables = torch_import.load_checkpoint(str(PTH), 'resnet20')
  raw = dataset.test_images[:8]
  wrapped = teacher_source.Renormalized(
    model,
    tuple(dataset.mean.tolist()),
    tuple(dataset.std.tolist()),
    tuple(mean.tolist()),
    tuple(std.tolist()),
  )
  got, _ = wrapped.apply(
    variables, augment.normalize(raw, dataset.mean, dataset.std)
  )
  want, _ = model.apply(variables, augment.normalize(raw, mean, std))
  np.testing.assert_allclose(got, want, atol=1e-4)


def test_pth_teacher_config_errors(config, tmp_path):
  mesh = parallel.make_mesh(1)
  for field, value, message in [
    ('workdir', str(tmp_path), 'are both set'),
    ('model', None, 'config.teacher.model=None must name the architecture'),
    ('pth', str(tmp_path / 'absent.pth'), 'is not a file'),
  ]:
    c = config.copy_and_resolve_references()
    c.teacher[field] = value
    with pytest.raises(UserError, match=message):
      helpers.load_teacher(spec.from_config(c).teacher, mesh)


def test_wrong_architecture_is_one_line_and_exit_2_from_the_command_line(
  config, tmp_path
):
  from launch_in_process import error_line, launch  # pylint: disable=g-import-not-at-top

  export = tmp_path / 'never.msgpack'
  result = launch(
    '--config=configs/eval.py',
    f'--config.pth={PTH}',
    '--config.model=resnet8x4',
    '--config.dataset.name=synthetic',
    '--config.dataset.num_classes=100',
    f'--config.export={export}',
    check=False,
  )
  assert error_line(result.returncode, result.stderr) == (
    f"error: {PTH}: tensor 'conv1.weight' is [16, 3, 3, 3] but resnet8x4 "
    'with 100 classes expects [32, 3, 3, 3]'
  )
  assert not export.exists()


def test_eval_config_errors(tmp_path):
  from configs import eval as eval_config  # pylint: disable=g-import-not-at-top
  from icckd_jax import main  # pylint: disable=g-import-not-at-top

  c = eval_config.get_config()
  c.pth = str(tmp_path / 'absent.pth')
  c.model = 'resnet20'
  with pytest.raises(UserError, match='are both set'):
    main.run(c, str(tmp_path))
  with pytest.raises(
    UserError, match="config.pth='.*absent.pth' is not a file"
  ):
    main.run(c, None)
  c.model = 'resnet21'
  with pytest.raises(UserError, match="config.model='resnet21' must name"):
    main.run(c, None)
  c.model = 'resnet20'
  c.export = str(tmp_path / 'no_such_folder' / 'x.msgpack')
  with pytest.raises(UserError, match='config.export=.* cannot be written'):
    main.run(c, None)


@pytest.mark.slow  # a student each, in-process (~40 s each)
@pytest.mark.parametrize(
  'settings',
  [
    {'method': 'wttm'},
    {'method': 'ctkd'},
    {'method': 'ctkd', 'standardize_logits': True, 'alpha': 9.0},
    {'method': 'kd', 'optimizer': 'dot'},
  ],
  ids=['wttm', 'ctkd', 'ctkd_ls', 'kd_dot'],
)
def test_the_newer_methods_train_from_a_pth_teacher(config, tmp_path, settings):
  """WTTM, CTKD (+LS) and KD+DOT students of the RepDistiller .pth teacher:
  finite losses at every logged step and a finite top-1 (MLKD's is in
  tests/test_mlkd.py)."""
  c = config.copy_and_resolve_references()
  settings = dict(settings)
  optimizer = settings.pop('optimizer', None)
  if optimizer:
    c.optimizer = optimizer
  c.distill.update(settings)
  workdir = tmp_path / 'run'
  summary = student.train_student(c, str(workdir))
  assert np.isfinite(summary['final_top1'])
  records = metric_writer.read_records(str(workdir), 'train')
  assert records and all(np.isfinite(r['loss']) for r in records)
