"""configs/imagenet.py: mdistiller's ImageNet recipes, one argument per row,
and its smoke run from a torchvision `.pth` teacher."""

import json

import jax
import ml_collections
import numpy as np
import pytest

from configs import convert as convert_config
from configs import imagenet
from configs import teacher as teacher_config
from conftest import SHARED_DATA, shared_fixture
import helpers
from icckd_jax.input_pipeline.source import TrainFeed
from icckd_jax import models
from icckd_jax import parallel
from icckd_jax.data import array_record
from icckd_jax.data import convert
from icckd_jax.input_pipeline import host_augment
from icckd_jax.input_pipeline import imagenet_preprocess
from icckd_jax.input_pipeline import resident
from icckd_jax.input_pipeline import inputs
from icckd_jax.input_pipeline import stream_rows
from icckd_jax.errors import UserError
from icckd_jax.interop import torch_import
from icckd_jax.objective import losses
from icckd_jax.stages import evaluate_pth
from icckd_jax.training import checkpoint
from icckd_jax.training import metric_writer
from icckd_jax.stages import student
from icckd_jax.stages import teacher_source
from icckd_jax.runs import spec
from icckd_jax.runs import validate
from icckd_jax.runs import layout

TEACHER_PTH = SHARED_DATA / 'torchvision' / 'resnet18' / 'resnet18-random.pth'


@pytest.mark.parametrize(
  'arg,teacher,model',
  [
    ('r34_r18', 'imagenet_resnet34', 'imagenet_resnet18'),
    ('r50_mv1', 'imagenet_resnet50', 'imagenet_mobilenetv1'),
  ],
)
def test_kd_rows_carry_mdistillers_recipe(arg, teacher, model):
  # mdistiller configs/imagenet/<pair>/kd.yaml.
  c = imagenet.get_config(arg)
  assert (c.mode, c.teacher.model, c.model) == ('student', teacher, model)
  assert (c.batch_size, c.num_epochs, c.learning_rate) == (512, 100, 0.2)
  assert tuple(c.lr_decay_epochs) == (30, 60, 90) and c.lr_decay_rate == 0.1
  assert (c.momentum, c.weight_decay) == (0.9, 1e-4)
  d = c.distill
  assert (d.method, d.temperature, d.gamma, d.alpha) == ('kd', 1.0, 0.5, 0.5)
  assert c.dtype == 'bfloat16'
  assert (c.dataset.name, c.dataset.image_size) == ('array_record', 224)
  assert (c.dataset.augment, c.flip) == ('resized_crop', True)
  assert c.dataset.normalization == 'imagenet'


def _converted(path, size, num_classes=1000, num_train=16, num_test=16):
  """A generated set of `size`x`size` images declaring `num_classes`,
  converted to shards in `path` by configs/convert.py's converter."""
  c = convert_config.get_config()
  c.dataset.update(
    name='synthetic',
    image_size=size,
    num_classes=num_classes,
    num_train=num_train,
    num_test=num_test,
  )
  c.output_dir = str(path)
  c.workers = 1
  convert.convert(c)
  return str(path)


@pytest.fixture(scope='module')
def imagenet_like(tmp_path_factory):
  return _converted(tmp_path_factory.mktemp('in') / 'shards', 64)


@pytest.mark.parametrize('arg', ['r34_r18', 'r50_mv1_crd', 'icc_r34'])
def test_rows_stream_randomresizedcrop_and_torchvisions_evaluation(
  arg, tmp_path_factory
):
  # The fields the rows set decide the streamed pixels: RandomResizedCrop
  # (scale 0.08-1) to 224 + flip, evaluation resize 256 / centre crop 224,
  # even for a set converted at one size (ImageNet pre-resized to 288).
  c = imagenet.get_config(arg)
  path = tmp_path_factory.mktemp('pre') / 'shards'
  c.dataset.path = _converted(path, 288, num_classes=4, num_train=4, num_test=2)
  # 'auto' (a new run: 'torchvision'): torchvision's pixels, checked below.
  assert c.input.decode == 'auto'
  dataset = inputs.load(
    spec.data_request(c.dataset), c.input.mode, 0, decode=c.input.decode
  )
  train, test = dataset.train, dataset.test
  # Normalised with torchvision's constants, not the set's measured ones.
  mean, std = imagenet_preprocess.normalization()
  np.testing.assert_allclose(mean, [123.675, 116.28, 103.53], rtol=1e-6)
  np.testing.assert_allclose(std, [58.395, 57.12, 57.375], rtol=1e-6)
  np.testing.assert_array_equal(dataset.mean, mean)
  np.testing.assert_array_equal(dataset.std, std)
  assert not np.allclose(train.info.mean, mean, rtol=1e-2)
  assert train.recipe == test.recipe == 'resized_crop'
  assert train.image_shape == test.image_shape == (224, 224, 3)
  records = {s: array_record.Records(train.info, s) for s in ('train', 'test')}
  batches = dataset.train_batches(
    parallel.make_mesh(1),
    TrainFeed(
      seed=c.seed,
      batch_size=4,
      num_views=1,
      crop_padding=c.crop_padding,
      flip=c.flip,
    ),
    0,
  )
  batch = next(batches)
  images, labels = batch.images, batch.labels
  batches.close()
  order = stream_rows.epoch_order(c.seed, 0, train.size)[:4]
  for position, index in enumerate(order):
    rng = host_augment.example_rng(
      c.seed, resident.AUGMENT_STREAM, 0, 0, position
    )
    image, label = records['train'][int(index)]
    expected = helpers.reference_resized_crop_flip(
      image, rng, 224, True, torchvision=True
    )
    np.testing.assert_array_equal(np.asarray(images)[0, position], expected)
    assert int(labels[position]) == label
  first, *_ = dataset.eval_batches(parallel.make_mesh(1), 2)
  for i in range(2):
    image, _ = records['test'][i]
    expected = imagenet_preprocess.resize_center_crop(image, 256, 224)
    np.testing.assert_array_equal(np.asarray(first.images)[i], expected)


# Each yaml's fields that differ from the CIFAR defaults, and its solver.
ROWS = {
  'r34_r18_dkd': (512, 0.2, {'dkd_beta': 0.5, 'dkd_warmup_epochs': 1.0}),
  'r50_mv1_dkd': (512, 0.2, {'dkd_beta': 2.0, 'dkd_warmup_epochs': 1.0}),
  'r34_r18_at': (512, 0.2, {'at_weight': 1000.0}),
  'r50_mv1_at': (512, 0.2, {'at_weight': 1000.0}),
  'r34_r18_ofd': (128, 0.05, {'ofd_weight': 1e-4}),
  'r50_mv1_ofd': (128, 0.05, {'ofd_weight': 1e-4}),
  'r34_r18_crd': (256, 0.1, {'crd_weight': 0.8, 'crd_negatives': 16384}),
  'r50_mv1_crd': (256, 0.1, {'crd_weight': 0.8, 'crd_negatives': 16384}),
  'r34_r18_reviewkd': (
    256,
    0.1,
    {
      'reviewkd_weight': 1.0,
      'reviewkd_warmup_epochs': 1.0,
      'reviewkd_max_mid': 512,
      'reviewkd_student_preact': True,
    },
  ),
  'r50_mv1_reviewkd': (
    256,
    0.1,
    {
      'reviewkd_weight': 8.0,
      'reviewkd_warmup_epochs': 1.0,
      'reviewkd_max_mid': 256,
      'reviewkd_student_preact': True,
    },
  ),
  # Multi-Level-Logit-Distillation's kd_ours.yaml (r50_mv2's for r50_mv1).
  'r34_r18_mlkd': (512, 0.1, {'temperature': 1.0, 'gamma': 0.5, 'alpha': 0.5}),
  'r50_mv1_mlkd': (512, 0.2, {'temperature': 1.0, 'gamma': 0.5, 'alpha': 0.5}),
}


@pytest.mark.parametrize('arg', sorted(ROWS))
def test_method_rows_carry_their_yaml(arg):
  batch, lr, fields = ROWS[arg]
  c = imagenet.get_config(arg)
  kd = imagenet.get_config(arg[:7])
  assert c.distill.method == arg[8:]
  assert (c.batch_size, c.learning_rate) == (batch, lr)
  assert {k: c.distill[k] for k in fields} == fields
  # Everything else is the pair's KD row: models, schedule, data, dtype.
  for field in ('model', 'num_epochs', 'lr_decay_epochs', 'weight_decay'):
    assert c[field] == kd[field]
  assert c.teacher.model == kd.teacher.model and c.dtype == 'bfloat16'


@pytest.mark.parametrize('arg', imagenet.ARGS)
def test_every_row_is_a_valid_config(arg):
  c = imagenet.get_config(arg)
  validate.check_config(c)
  for name in (c.model, c.get('teacher', {}).get('model') or c.model):
    assert name in models.MODEL_NAMES


def test_icc_teacher_is_the_intra_class_objective_at_the_recipe():
  c = imagenet.get_config('icc_r34')
  defaults = teacher_config.get_config()
  assert (c.mode, c.model) == ('teacher', 'imagenet_resnet34')
  assert c.icc.to_dict() == defaults.icc.to_dict() and c.icc.lam > 0
  assert c.cache.to_dict() == defaults.cache.to_dict()
  assert (c.batch_size, c.num_epochs, c.learning_rate) == (512, 100, 0.2)
  assert tuple(c.lr_decay_epochs) == (30, 60, 90) and c.weight_decay == 1e-4
  assert c.dtype == 'bfloat16' and c.dataset.name == 'array_record'


def test_unknown_argument_names_the_valid_ones():
  with pytest.raises(ValueError, match='r50_mv1_reviewkd'):
    imagenet.get_config('r18_r34')


def test_imagenet_normalization_refuses_grey_images_in_one_line():
  grey = teacher_config.get_config().dataset
  grey.update(name='synthetic', channels=1, normalization='imagenet')
  with pytest.raises(UserError, match="normalization='imagenet' is for RGB"):
    inputs.load(spec.data_request(grey), 'auto', 0)


def test_a_workdir_teacher_must_share_the_students_normalization():
  student_data = imagenet.get_config('r34_r18').dataset
  teacher_data = imagenet.get_config('icc_r34').dataset
  teacher_source.check_same_data(spec.data_request(student_data), teacher_data)
  # A teacher saved before the field existed was normalised as 'measured'.
  old = teacher_config.get_config().dataset.to_dict()
  del old['normalization']
  measured = teacher_config.get_config().dataset
  teacher_source.check_same_data(
    spec.data_request(measured), ml_collections.ConfigDict(old)
  )
  measured.normalization = 'imagenet'
  with pytest.raises(UserError, match="normalization='imagenet' but the t"):
    teacher_source.check_same_data(spec.data_request(measured), old)


@pytest.mark.slow
def test_smoke_kd_dot_distils_from_a_torchvision_teacher(
  tmp_path, imagenet_like
):
  """The smoke row with optimizer='dot': two finite steps, DOT's momenta
  in the checkpoint."""
  c = imagenet.get_config('smoke')
  c.update(imagenet.OPTIMIZERS['dot'])
  c.teacher.pth = str(shared_fixture(TEACHER_PTH))
  c.dataset.path = imagenet_like
  workdir = tmp_path / 'run'
  assert student.train_student(c, str(workdir))['steps'] == 2
  records = metric_writer.read_records(str(workdir), 'train')
  assert all(np.isfinite(r['loss']) for r in records)
  with checkpoint.Checkpoints(str(workdir), read_only=True) as ckpts:
    state, _ = ckpts.restore(None, which='last', mesh=parallel.make_mesh(1))
  assert set(state['opt_state']) == {'count', 'task', 'kd'}
  assert int(state['opt_state']['count']) == 2


@pytest.mark.slow
def test_smoke_distils_from_a_torchvision_teacher(tmp_path, imagenet_like):
  c = imagenet.get_config('smoke')
  c.teacher.pth = str(shared_fixture(TEACHER_PTH))
  c.dataset.path = imagenet_like
  workdir = tmp_path / 'run'
  summary = student.train_student(c, str(workdir))
  assert summary['steps'] == 2
  records = metric_writer.read_records(str(workdir), 'train')
  assert [r['step'] for r in records] == [1, 2]
  assert all(np.isfinite(r['loss']) for r in records)
  with open(workdir / layout.TEACHER_EVAL_FILE) as f:
    at_start = json.load(f)
  assert at_start['model'] == 'imagenet_resnet18' and at_start['count'] == 16
  # The teacher's input was the streamed evaluation's (resized to 73 of 64,
  # centre-cropped), normalised with ImageNet's statistics: its loss at
  # start is the fixture network's on the test records so transformed.
  info = array_record.read_info(imagenet_like)
  assert info.num_classes == 1000 and info.image_shape == (64, 64, 3)
  test = array_record.Records(info, 'test')
  pairs = [test[i] for i in range(len(test))]
  images = np.stack(
    [
      imagenet_preprocess.resize_center_crop(image, 73, 64)
      for image, _ in pairs
    ]
  )
  labels = np.asarray([label for _, label in pairs])
  variables = torch_import.load_checkpoint(
    str(TEACHER_PTH), 'imagenet_resnet18'
  )
  mean, std = torch_import.normalization('imagenet_resnet18')
  x = (images.astype(np.float32) - mean) / std
  module = models.create_model('imagenet_resnet18', 1000)
  logits, _ = jax.jit(module.apply)(variables, x)
  expected = float(losses.cross_entropy(logits, labels).mean())
  np.testing.assert_allclose(at_start['loss'], expected, rtol=1e-4)
  # configs/eval.py on the same file prints the same figures.
  printed = evaluate_pth.evaluate_pytorch(
    str(TEACHER_PTH),
    'imagenet_resnet18',
    spec.data_request(c.dataset),
    1,
    c.eval_batch_size,
  )
  assert printed['top1'] == at_start['top1']
  np.testing.assert_allclose(printed['loss'], at_start['loss'], rtol=1e-6)
