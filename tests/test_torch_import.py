"""PyTorch checkpoints of the CIFAR-100 KD benchmark, imported without PyTorch.

The fixtures in ../shared/data/repdistiller were written by PyTorch from the
benchmark's own model definitions, with reference outputs; the other
architectures go through `.pth` files written here (tests/torch_files.py).
"""

import collections
import os
import pickle
import zipfile

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import SHARED_DATA, shared_fixture
from icckd_jax import models
from icckd_jax.errors import UserError
from icckd_jax.interop import torch_import
from icckd_jax.interop import torch_pickle
from icckd_jax.models.shufflenet import channel_shuffle
import torch_files
import torch_reference

FIXTURES = SHARED_DATA / 'repdistiller'
FIXTURE_MODELS = {
  'resnet8x4_legacy': 'resnet8x4',
  'resnet20_zip': 'resnet20',
  'mobilenetv2_zip': 'MobileNetV2',
}


def _fixture(folder):
  return shared_fixture(FIXTURES / folder / 'ckpt_epoch_240.pth').parent


@pytest.mark.parametrize('folder', sorted(FIXTURE_MODELS))
def test_fixture_outputs_equal_pytorch_references(folder):
  path = _fixture(folder)
  name = FIXTURE_MODELS[folder]
  reference = np.load(path / 'reference_outputs.npz')
  variables = torch_import.load_checkpoint(
    str(path / 'ckpt_epoch_240.pth'), name, 100
  )
  # This project's normalisation of the raw images (its [0, 255] units)
  # reproduces the benchmark's transforms.Normalize.
  mean, std = torch_import.benchmark_normalization()
  x = (reference['images_uint8'].astype(np.float32) - mean) / std
  np.testing.assert_allclose(
    x, reference['inputs_normalized_nhwc'], rtol=0, atol=1e-6
  )
  module = models.create_model(name, 100)
  with jax.default_matmul_precision('highest'):
    logits, features = jax.jit(lambda v, x: module.apply(v, x, train=False))(
      variables, reference['inputs_normalized_nhwc']
    )
  logits_err = float(np.max(np.abs(logits - reference['logits'])))
  features_err = float(np.max(np.abs(features - reference['features'])))
  print(
    f'{folder}: max abs error logits {logits_err:.2e}, '
    f'features {features_err:.2e}'
  )
  assert logits_err < 1e-5 and features_err < 1e-5


def test_fixture_full_dict_with_optimizer_state():
  path = _fixture('resnet8x4_legacy') / 'ckpt_epoch_240.pth'
  checkpoint = torch_pickle.load(str(path))
  assert set(checkpoint) == {'epoch', 'model', 'best_acc', 'optimizer'}
  assert checkpoint['epoch'] == 240 and checkpoint['best_acc'].shape == ()
  assert checkpoint['model']['conv1.weight'].shape == (32, 3, 3, 3)
  assert checkpoint['model']['bn1.num_batches_tracked'].dtype == np.int64
  momentum = checkpoint['optimizer']['state'][0]['momentum_buffer']
  assert momentum.shape == (32, 3, 3, 3)


@pytest.mark.parametrize(
  'name,classes',
  [(name, 100) for name in torch_files.MODEL_NAMES]
  + [(name, 1000) for name in torch_files.IMAGENET_MODEL_NAMES],
)
def test_importer_layout_is_the_reference_state_dict(name, classes):
  """The benchmark's (CIFAR) and torchvision's (ImageNet) state dicts."""
  expected = {
    k: s
    for k, s in torch_files.benchmark_layout(name, classes).items()
    if not k.endswith('num_batches_tracked')
  }
  layout = torch_import.torch_layout(name, classes)
  assert {k: v[2] for k, v in layout.items()} == expected


# (model, legacy format, the benchmark's full dict rather than a state_dict)
ROUND_TRIPS = [
  ('ShuffleV1', True, True),
  ('ShuffleV2', False, False),
  ('wrn_16_1', False, True),
  ('vgg8', True, False),
  ('MobileNetV2', True, True),
]


@pytest.mark.parametrize('name,legacy,full', ROUND_TRIPS)
def test_round_trip_through_written_pth(name, legacy, full, tmp_path):
  state = torch_files.random_state_dict(name, 10)
  obj = state
  if full:
    obj = {
      'epoch': 240,
      'model': state,
      'best_acc': np.array(71.5, np.float32),
      'optimizer': {
        'state': {0: {'momentum_buffer': np.ones(3)}},
        'param_groups': [{'lr': 0.05, 'params': [0]}],
      },
    }
  path = tmp_path / 'ckpt_epoch_240.pth'
  torch_files.write_pth(path, obj, legacy=legacy)
  variables = torch_import.load_checkpoint(str(path), name)  # classes: file's
  module = models.create_model(name, 10)
  shapes = jax.eval_shape(
    lambda: module.init(
      jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False
    )
  )
  assert jax.tree.map(np.shape, variables) == jax.tree.map(
    lambda s: s.shape, shapes
  )
  flat = {c: flax.traverse_util.flatten_dict(variables[c]) for c in variables}
  for key, (collection, leaf_path, _) in torch_import.torch_layout(
    name, 10
  ).items():
    array = state[key]
    expected = (
      array.transpose(2, 3, 1, 0)
      if array.ndim == 4
      else array.T
      if array.ndim == 2
      else array
    )
    np.testing.assert_array_equal(flat[collection][leaf_path], expected)


def _torch_conv(x, w, groups):
  """PyTorch's Conv2d (stride 1, no padding) on NCHW x with OIHW w, in numpy."""
  n, c, h, width = x.shape
  out, per_group, kh, kw = w.shape
  y = np.zeros((n, out, h - kh + 1, width - kw + 1))
  for o in range(out):
    g = o // (out // groups)
    for i in range(per_group):
      for dy in range(kh):
        for dx in range(kw):
          y[:, o] += (
            w[o, i, dy, dx]
            * x[
              :, g * per_group + i, dy : dy + y.shape[2], dx : dx + y.shape[3]
            ]
          )
  return y


@pytest.mark.parametrize('channels,out,groups', [(6, 9, 3), (4, 4, 4)])
def test_grouped_and_depthwise_kernels_keep_their_meaning(
  channels, out, groups
):
  rng = np.random.default_rng(0)
  x = rng.standard_normal((2, channels, 5, 5)).astype(np.float32)
  w = rng.standard_normal((out, channels // groups, 3, 3)).astype(np.float32)
  conv = flax.linen.Conv(
    out, (3, 3), padding='VALID', use_bias=False, feature_group_count=groups
  )
  with jax.default_matmul_precision('highest'):
    y = conv.apply(
      {'params': {'kernel': torch_import.to_flax_layout(w)}},
      x.transpose(0, 2, 3, 1),
    )
  np.testing.assert_allclose(
    y.transpose(0, 3, 1, 2), _torch_conv(x, w, groups), rtol=1e-5, atol=1e-5
  )


def test_channel_shuffle_is_the_references_view_permute():
  x = np.arange(2 * 12 * 2 * 2, dtype=np.float32).reshape(2, 12, 2, 2)
  # The reference: [N, g, C/g, H, W] -> [N, C/g, g, H, W] -> [N, C, H, W].
  expected = (
    x.reshape(2, 3, 4, 2, 2).transpose(0, 2, 1, 3, 4).reshape(2, 12, 2, 2)
  )
  shuffled = channel_shuffle(jnp.asarray(x.transpose(0, 2, 3, 1)), 3)
  np.testing.assert_array_equal(
    np.asarray(shuffled).transpose(0, 3, 1, 2), expected
  )


def test_shared_storages_offsets_and_strides(tmp_path):
  base = np.arange(24, dtype=np.float32)
  storage = torch_files.Storage(base)
  tensor = torch_files.Tensor
  obj = collections.OrderedDict(
    head=tensor(storage, (2, 3), (3, 1), offset=0),
    transposed=tensor(storage, (3, 4), (1, 3), offset=6),
    scalar=tensor(storage, (), (), offset=23),
  )
  for legacy in (False, True):
    data, storages = torch_files.pickle_bytes(obj, legacy)
    assert len(storages) == 1
    path = tmp_path / f'shared_{legacy}.pth'
    if legacy:
      with open(path, 'wb') as f:
        for header in (0x1950A86A20F9469CFC6C, 1001, {}):
          pickle.dump(header, f, protocol=2)
        f.write(data)
        pickle.dump(['0'], f, protocol=2)
        f.write(np.int64(24).tobytes() + base.tobytes())
    else:
      with zipfile.ZipFile(path, 'w') as z:
        z.writestr('x/data.pkl', data)
        z.writestr('x/data/0', base.tobytes())
    loaded = torch_pickle.load(str(path))
    np.testing.assert_array_equal(loaded['head'], base[:6].reshape(2, 3))
    np.testing.assert_array_equal(
      loaded['transposed'], base[6:18].reshape(4, 3).T
    )
    assert loaded['scalar'] == 23 and loaded['scalar'].shape == ()


class _RunsCode:
  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return (os.system, (f'touch {self.marker}',))


@pytest.mark.parametrize('legacy', [False, True])
def test_malicious_pickle_is_refused_without_running_it(legacy, tmp_path):
  marker = tmp_path / 'ran'
  path = tmp_path / 'evil.pth'
  payload = pickle.dumps({'model': _RunsCode(marker)}, protocol=2)
  if legacy:
    with open(path, 'wb') as f:
      for header in (0x1950A86A20F9469CFC6C, 1001, {}):
        pickle.dump(header, f, protocol=2)
      f.write(payload)
  else:
    with zipfile.ZipFile(path, 'w') as z:
      z.writestr('archive/data.pkl', payload)
  with pytest.raises(UserError) as error:
    torch_import.load_checkpoint(str(path), 'resnet8')
  message = str(error.value)
  assert message.startswith(
    f'{path}: refuses to unpickle {os.system.__module__}.system'
  )
  assert '\n' not in message
  assert not marker.exists()


def _good_file(tmp_path, legacy):
  path = tmp_path / f'good_{legacy}.pth'
  torch_files.write_pth(
    path, {'model': torch_files.random_state_dict('resnet8', 10)}, legacy=legacy
  )
  return path


@pytest.mark.parametrize('legacy', [False, True])
@pytest.mark.parametrize('damage', ['truncate', 'flip', 'empty'])
def test_corrupted_file_is_refused_in_one_line(legacy, damage, tmp_path):
  raw = _good_file(tmp_path, legacy).read_bytes()
  if damage == 'truncate':
    raw = raw[: len(raw) * 2 // 3]
  elif damage == 'flip':
    raw = bytes(b ^ 0x5A for b in raw[:200]) + raw[200:]
  else:
    raw = b''
  path = tmp_path / 'bad.pth'
  path.write_bytes(raw)
  with pytest.raises(UserError) as error:
    torch_import.load_checkpoint(str(path), 'resnet8', 10)
  assert str(error.value).startswith(f'{path}: ')
  assert '\n' not in str(error.value)


# (model, classes, the error line's pattern) for a resnet8 file of 10
# classes: the first tensor that does not fit is named.
MISMATCHES = [
  (
    'resnet8',
    100,
    r"tensor 'fc.weight' is \[10, 64\] but resnet8 with 100 classes "
    r'expects \[100, 64\]',
  ),
  (
    'resnet8x4',
    10,
    r"tensor 'conv1.weight' is \[16, 3, 3, 3\] but resnet8x4 with 10 "
    r'classes expects \[32, 3, 3, 3\]',
  ),
  (
    'wrn_16_1',
    10,
    r"tensor 'bn1.weight' is \[16\] but wrn_16_1 with 10 classes expects "
    r'\[64\]',
  ),
  (
    'vgg8',
    10,
    r"tensor 'conv1.weight' \[16, 3, 3, 3\] has no counterpart in vgg8; "
    'is the file a vgg8',
  ),
]


def test_mismatches_name_the_first_offending_tensor(tmp_path):
  state = torch_files.random_state_dict('resnet8', 10)
  path = tmp_path / 'r8.pth'
  torch_files.write_pth(path, state)
  for name, classes, message in MISMATCHES:
    with pytest.raises(UserError, match=message):
      torch_import.load_checkpoint(str(path), name, classes)

  missing = collections.OrderedDict(state)
  del missing['layer2.0.bn2.running_var']
  torch_files.write_pth(path, missing)
  with pytest.raises(
    UserError,
    match=(
      r"resnet8 needs tensor 'layer2.0.bn2.running_var' \[32\], which the "
      'file lacks'
    ),
  ):
    torch_import.load_checkpoint(str(path), 'resnet8', 10)

  extra = collections.OrderedDict(state, **{'proj.weight': np.ones((4, 64))})
  torch_files.write_pth(path, extra)
  with pytest.raises(
    UserError,
    match=(r"tensor 'proj.weight' \[4, 64\] has no counterpart in resnet8"),
  ):
    torch_import.load_checkpoint(str(path), 'resnet8', 10)


def test_data_parallel_prefix_and_non_checkpoints(tmp_path):
  state = torch_files.random_state_dict('resnet8', 10)
  path = tmp_path / 'dp.pth'
  torch_files.write_pth(
    path, collections.OrderedDict((f'module.{k}', v) for k, v in state.items())
  )
  variables = torch_import.load_checkpoint(str(path), 'resnet8')
  np.testing.assert_array_equal(
    variables['params']['fc']['bias'], state['fc.bias']
  )
  torch_files.write_pth(path, {'epoch': 3, 'acc': 0.5})
  with pytest.raises(
    UserError, match="neither a state_dict nor a dict with a 'model' state_dict"
  ):
    torch_import.load_checkpoint(str(path), 'resnet8')


def test_a_file_cannot_alter_how_later_files_load(tmp_path):
  # GLOBAL torch.FloatStorage, then BUILD {'dtype': 'f2'} onto what it
  # resolved to: were that shared, later files would read float16.
  poison = (
    b'\x80\x02ctorch\nFloatStorage\n}X\x05\x00\x00\x00dtype'
    b'X\x02\x00\x00\x00f2sb.'
  )
  path = tmp_path / 'poison.pth'
  with zipfile.ZipFile(path, 'w') as z:
    z.writestr('archive/data.pkl', poison)
  with pytest.raises(UserError):
    torch_import.load_checkpoint(str(path), 'resnet8')
  good = _good_file(tmp_path, legacy=False)
  state = torch_pickle.load(str(good))['model']
  assert state['conv1.weight'].dtype == np.float32
  np.testing.assert_array_equal(
    state['conv1.weight'],
    torch_files.random_state_dict('resnet8', 10)['conv1.weight'],
  )


@pytest.mark.parametrize(
  'shape,stride,offset',
  [((10,), (5,), 0), ((4,), (1,), 22), ((3,), (-1,), 5), ((2, 2), (1,), 0)],
)
def test_a_tensor_cannot_read_outside_its_storage(
  shape, stride, offset, tmp_path
):
  storage = torch_files.Storage(np.arange(24, dtype=np.float32))
  data, _ = torch_files.pickle_bytes(
    {'t': torch_files.Tensor(storage, shape, stride, offset)}
  )
  path = tmp_path / 'oob.pth'
  with zipfile.ZipFile(path, 'w') as z:
    z.writestr('archive/data.pkl', data)
    z.writestr('archive/data/0', storage.array.tobytes())
  with pytest.raises(UserError, match='not a readable PyTorch checkpoint'):
    torch_pickle.load(str(path))


@pytest.mark.parametrize('name', ['ShuffleV1', 'ShuffleV2'])
def test_shufflenet_forward_matches_the_reference_definition(name, tmp_path):
  state = torch_reference.well_scaled(torch_files.random_state_dict(name, 10))
  path = tmp_path / 'shuffle.pth'
  torch_files.write_pth(path, state)
  variables = torch_import.load_checkpoint(str(path), name)
  x = (
    np.random.default_rng(1).standard_normal((2, 3, 32, 32)).astype(np.float32)
  )
  module = models.create_model(name, 10)
  with jax.default_matmul_precision('highest'):
    logits, features = jax.jit(lambda v, x: module.apply(v, x))(
      variables, x.transpose(0, 2, 3, 1)
    )
  forward = getattr(torch_reference, name.lower())
  want_logits, want_features = forward(x.astype(np.float64), state)
  np.testing.assert_allclose(features, want_features, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(logits, want_logits, rtol=1e-4, atol=1e-4)
