"""torchvision's ImageNet teachers, imported without PyTorch, and evaluated
as torchvision evaluates them.

Two kinds of reference: the shared fixture ../shared/data/torchvision/
resnet18 (a `.pth` that torch wrote, its outputs on given inputs and on
four JPEGs through torchvision's evaluation transform), and
imagenet_references.npz, generated (never committed) by
tests/make_imagenet_references.py where PyTorch is installed: the outputs
torch computed for
torchvision's ResNet34 and ResNet50 and mdistiller's MobileNetV1 with
weights numpy draws from a seed, which these tests rebuild and write as a `.pth` themselves.
"""

import shutil

import jax
import ml_collections
import numpy as np
import pytest

from conftest import SHARED_DATA, shared_fixture
from icckd_jax import models
from icckd_jax import parallel
from icckd_jax.data import convert
from icckd_jax.data import datasets
from icckd_jax.input_pipeline import imagenet_preprocess
from icckd_jax.input_pipeline import inputs
from icckd_jax.errors import UserError
from icckd_jax.interop import torch_import
from icckd_jax.models import stages
from icckd_jax.runs import spec
import helpers
import make_imagenet_references
import torch_files
import torch_reference

FIXTURE = SHARED_DATA / 'torchvision' / 'resnet18'
REFERENCES = make_imagenet_references.OUTPUT
# "About 1e-2 relative" (the fixture's README): resampling implementations
# differ slightly; Pillow's bilinear filter, as torchvision's, lands at 1e-6.
EVAL_RTOL = 1e-2


def _fixture():
  return shared_fixture(FIXTURE / 'resnet18-random.pth').parent


def _apply(name, variables, x):
  module = models.create_model(name, 1000)
  with jax.default_matmul_precision('highest'):
    return jax.jit(lambda v, x: module.apply(v, x, train=False))(variables, x)


def _relative(a, b):
  """Per row: ||a - b|| / ||b||, the largest."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(
    np.max(np.linalg.norm(a - b, axis=-1) / np.linalg.norm(b, axis=-1))
  )


@pytest.fixture(scope='module')
def resnet18():
  """(reference outputs, imported variables) of the shared fixture."""
  path = _fixture()
  variables = torch_import.load_checkpoint(
    str(path / 'resnet18-random.pth'), 'imagenet_resnet18'
  )
  return np.load(path / 'reference_outputs.npz'), variables


def test_fixture_outputs_equal_torchvision(resnet18):
  reference, variables = resnet18
  # The teacher's normalisation is ImageNet's, as the fixture's.
  mean, std = torch_import.normalization('imagenet_resnet18')
  np.testing.assert_allclose(mean, 255 * reference['mean'], rtol=1e-6)
  np.testing.assert_allclose(std, 255 * reference['std'], rtol=1e-6)
  x = (reference['images_uint8'].astype(np.float32) - mean) / std
  np.testing.assert_allclose(
    x, reference['inputs_normalized_nhwc'], rtol=0, atol=1e-5
  )
  logits, features = _apply(
    'imagenet_resnet18', variables, reference['inputs_normalized_nhwc']
  )
  assert float(np.max(np.abs(logits - reference['logits']))) < 1e-5
  # The fixture's `features` are not the pooled features of its own
  # network (torch's are 0.23 away from them, and fc of them 0.15 from its
  # logits: tests/make_imagenet_references.py --check); fc is [1000, 512],
  # so the logits pin the features down: fc of ours must give torch's.
  fc = variables['params']['fc']
  np.testing.assert_allclose(
    np.asarray(features) @ fc['kernel'] + fc['bias'],
    reference['logits'],
    rtol=0,
    atol=1e-5,
  )
  assert features.shape == (4, 512) and np.all(np.asarray(features) >= 0)


def _eval_batch(path, names, transform=helpers.eval_image):
  return np.stack([transform(str(path / 'eval_images' / n)) for n in names])


def _shifted_crop(path):
  """The transform with the centre crop one pixel off: a wrong pipeline."""
  from PIL import Image  # pylint: disable=g-import-not-at-top

  with Image.open(path) as image:
    image = image.convert('RGB')
    h, w = imagenet_preprocess.resized_size(image.height, image.width)
    image = image.resize((w, h), Image.BILINEAR)
    top, left = imagenet_preprocess.center_crop_origin(h, w)
    box = (left + 1, top + 1, left + 225, top + 225)
    return np.asarray(image.crop(box))


def test_evaluation_transform_gives_torchvision_logits(resnet18):
  reference, variables = resnet18
  path = _fixture()
  names = [str(n) for n in reference['eval_names']]
  images = _eval_batch(path, names)
  assert images.shape == (4, 224, 224, 3) and images.dtype == np.uint8
  mean, std = torch_import.normalization('imagenet_resnet18')

  def error(images, mean=mean, std=std):
    x = (images.astype(np.float32) - mean) / std
    logits, _ = _apply('imagenet_resnet18', variables, x)
    return _relative(logits, reference['eval_logits'])

  assert error(images) < EVAL_RTOL
  # The tolerance tells a wrong crop or normalisation from the right one.
  assert error(_eval_batch(path, names, _shifted_crop)) > EVAL_RTOL
  cifar_mean, cifar_std = torch_import.benchmark_normalization()
  assert error(images, cifar_mean, cifar_std) > EVAL_RTOL


def test_streamed_evaluation_gives_torchvision_logits(resnet18, tmp_path):
  # The path a streamed evaluation takes (configs/eval.py, a student's
  # test split): the fixture's JPEGs converted to shards as they are, read
  # back by the Grain pipeline at 224 (images of several sizes: torchvision's
  # resize and centre crop), then the imported network.
  from PIL import Image  # pylint: disable=g-import-not-at-top

  reference, variables = resnet18
  path = _fixture()
  names = sorted(str(n) for n in reference['eval_names'])
  source = tmp_path / 'source'
  for split in ('train', 'test'):
    for c in ('x', 'y'):  # a classifier's set has two classes at least
      (source / split / c).mkdir(parents=True)
    for n in names:
      shutil.copy(path / 'eval_images' / n, source / split / 'x' / n)
  # Sizes where truncating the longer side (403x300 -> 343, not 344) and
  # rounding the crop's origin half to even (339 -> 58, not 57) matter.
  rng = np.random.default_rng(0)
  extra = {'z0.JPEG': (256, 339), 'z1.JPEG': (300, 403)}
  for n, (h, w) in extra.items():
    pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    for split in ('train', 'test'):
      Image.fromarray(pixels).save(source / split / 'y' / n, quality=95)
  config = ml_collections.ConfigDict(
    {
      'dataset': {'name': 'image_folder', 'path': str(source)},
      'output_dir': str(tmp_path / 'shards'),
      'workers': 1,
    }
  )
  convert.convert(config)
  dataset_config = datasets.DataRequest(
    name='array_record', path=config.output_dir, image_size=224
  )
  streamed = inputs.load(dataset_config, 'auto', decode='exact')
  assert streamed.test.recipe == 'resized_crop'
  batch, *rest = streamed.eval_batches(
    parallel.make_mesh(1), len(names) + len(extra)
  )
  assert not rest and np.all(batch.mask)
  images = np.asarray(batch.images)
  # One transform: the pixels of the file-based evaluation, exactly.
  files = [source / 'test' / 'x' / n for n in names]
  files += [source / 'test' / 'y' / n for n in sorted(extra)]
  expected = np.stack([helpers.eval_image(str(f)) for f in files])
  np.testing.assert_array_equal(images, expected)
  mean, std = torch_import.normalization('imagenet_resnet18')
  x = (images[: len(names)].astype(np.float32) - mean) / std
  logits, _ = _apply('imagenet_resnet18', variables, x)
  order = np.argsort([str(n) for n in reference['eval_names']])
  assert _relative(logits, reference['eval_logits'][order]) < EVAL_RTOL


def test_resize_and_crop_arithmetic_is_torchvision():
  # Resize(256): the longer side int(256 * long / short); CenterCrop(224):
  # round((size - 224) / 2), half to even.
  assert imagenet_preprocess.resized_size(300, 400) == (256, 341)
  assert imagenet_preprocess.resized_size(500, 375) == (341, 256)
  assert imagenet_preprocess.resized_size(256, 256) == (256, 256)
  assert imagenet_preprocess.center_crop_origin(256, 341) == (16, 58)
  assert imagenet_preprocess.center_crop_origin(341, 256) == (58, 16)
  # Other sizes keep the ratio: 73 / 64 as 256 / 224.
  assert imagenet_preprocess.eval_resize(224) == 256
  assert imagenet_preprocess.eval_resize(64) == 73
  # On a decoded array: the shorter side to 256, the centre 224; grey too.
  grey = np.arange(300 * 400, dtype=np.uint32).reshape(300, 400, 1) % 251
  out = imagenet_preprocess.resize_center_crop(grey.astype(np.uint8))
  assert out.shape == (224, 224, 1) and out.dtype == np.uint8


def test_undecodable_image_is_one_line_user_error(tmp_path):
  bad = tmp_path / 'broken.JPEG'
  bad.write_bytes(b'not a jpeg')
  with pytest.raises(UserError, match='broken.JPEG'):
    helpers.eval_image(str(bad))


@pytest.mark.parametrize('name', sorted(make_imagenet_references.INPUTS))
def test_random_torchvision_models_equal_torch(name, tmp_path):
  if not REFERENCES.exists():
    pytest.skip(
      f'{REFERENCES} is absent: tests/make_imagenet_references.py writes it '
      'where PyTorch is installed'
    )
  state = torch_reference.well_scaled(
    torch_files.random_state_dict(
      name, 1000, seed=make_imagenet_references.SEED
    )
  )
  path = tmp_path / f'{name}.pth'
  torch_files.write_pth(path, state)  # a bare state_dict, as torchvision's
  variables = torch_import.load_checkpoint(str(path), name)
  x = make_imagenet_references.input_nchw(name).transpose(0, 2, 3, 1)
  logits, features = _apply(name, variables, x)
  reference = np.load(REFERENCES)
  assert _relative(logits, reference[f'{name}/logits']) <= 1e-4
  assert _relative(features, reference[f'{name}/features']) <= 1e-4


def test_wrong_file_is_one_line_user_error(tmp_path):
  state = torch_files.random_state_dict('imagenet_resnet18', 1000)
  path = tmp_path / 'resnet18.pth'
  torch_files.write_pth(path, state)
  # A ResNet18 file named as a ResNet34: a tensor of the third block, which
  # the file lacks.
  with pytest.raises(UserError, match=r"needs tensor 'layer1\.2\."):
    torch_import.load_checkpoint(str(path), 'imagenet_resnet34')
  # A ResNet18 file named as a ResNet50: the first tensor of the wrong shape.
  with pytest.raises(UserError, match=r"'layer1\.0\.conv1\.weight'"):
    torch_import.load_checkpoint(str(path), 'imagenet_resnet50')
  with pytest.raises(UserError, match=r"'fc\.weight' is \[1000, 512\]"):
    torch_import.load_checkpoint(str(path), 'imagenet_resnet18', 10)
  del state['layer4.1.bn2.running_var']
  torch_files.write_pth(path, state)
  with pytest.raises(UserError, match=r"'layer4\.1\.bn2\.running_var'"):
    torch_import.load_checkpoint(str(path), 'imagenet_resnet18')


def test_pth_teacher_gets_its_family_normalisation():
  path = _fixture() / 'resnet18-random.pth'
  source = spec.TeacherSource(pth=str(path), model='imagenet_resnet18')
  saved, _ = helpers.load_teacher(source, parallel.make_mesh(1))
  np.testing.assert_allclose(
    saved.input_mean, [123.675, 116.28, 103.53], rtol=1e-6
  )
  np.testing.assert_allclose(
    saved.input_std, [58.395, 57.12, 57.375], rtol=1e-6
  )
  # The CIFAR family keeps the CIFAR-100 benchmark's.
  for got, want in zip(
    torch_import.normalization('resnet32x4'),
    torch_import.benchmark_normalization(),
  ):
    np.testing.assert_array_equal(got, want)


# Each stage's output map [H, W, C] on 64x64 inputs (Tiny-ImageNet's size).
STAGES_64 = {
  'imagenet_resnet18': ((16, 16, 64), (8, 8, 128), (4, 4, 256), (2, 2, 512)),
  'imagenet_resnet50': (
    (16, 16, 256),
    (8, 8, 512),
    (4, 4, 1024),
    (2, 2, 2048),
  ),
  'imagenet_mobilenetv1': (
    (16, 16, 128),
    (8, 8, 256),
    (4, 4, 512),
    (2, 2, 1024),
  ),
}


@pytest.mark.parametrize('name', sorted(STAGES_64))
def test_stage_maps_at_64(name):
  module = models.create_model(name, 200)
  x = jax.ShapeDtypeStruct((2, 64, 64, 3), np.float32)
  variables = jax.eval_shape(
    lambda x: module.init(jax.random.key(0), x, train=False), x
  )
  (logits, _), state = jax.eval_shape(
    lambda v, x: module.apply(v, x, mutable=[stages.COLLECTION]),
    variables,
    x,
  )
  maps, preacts = stages.collected(state)
  expected = [(2, *s) for s in STAGES_64[name]]
  assert [m.shape for m in maps] == expected
  assert [p.shape for p in preacts] == expected
  assert logits.shape == (2, 200)
