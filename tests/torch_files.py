"""Test helpers: the CIFAR-100 KD benchmark's PyTorch state_dicts, and a
minimal `.pth` writer, both without PyTorch.

`benchmark_layout` lists the tensors `model.state_dict()` holds for the
benchmark's networks, written from reading RepDistiller's models/*.py,
torchvision's models/resnet.py and mdistiller's
models/imagenet/mobilenetv1.py (module names, Sequential indices,
constructor arithmetic), independently of this project's flax code and of
its importer's name rules.

`write_pth` writes what `torch.save` writes, in the zip format (PyTorch >=
1.6) or the legacy one, using only pickle, zipfile, struct and numpy.
"""

import collections
import io
import pickle
import struct
import zipfile

import numpy as np

# ------------------------------------------------------------------ layouts


def _conv(name, out, in_per_group, k, bias=False):
  return [(f'{name}.weight', (out, in_per_group, k, k))] + (
    [(f'{name}.bias', (out,))] if bias else []
  )


def _bn(name, c):
  return [
    (f'{name}.{t}', (c,))
    for t in ('weight', 'bias', 'running_mean', 'running_var')
  ] + [(f'{name}.num_batches_tracked', ())]


def _linear(name, n_in, n_out):
  return [(f'{name}.weight', (n_out, n_in)), (f'{name}.bias', (n_out,))]


def _resnet(depth, widths, c):
  n = (depth - 2) // 6
  t = _conv('conv1', widths[0], 3, 3) + _bn('bn1', widths[0])
  inplanes = widths[0]
  for s, planes in enumerate(widths[1:], 1):
    for i in range(n):
      stride = 2 if s > 1 and i == 0 else 1
      p = f'layer{s}.{i}'
      t += _conv(f'{p}.conv1', planes, inplanes, 3) + _bn(f'{p}.bn1', planes)
      t += _conv(f'{p}.conv2', planes, planes, 3) + _bn(f'{p}.bn2', planes)
      if stride != 1 or inplanes != planes:
        t += _conv(f'{p}.downsample.0', planes, inplanes, 1) + _bn(
          f'{p}.downsample.1', planes
        )
      inplanes = planes
  return t + _linear('fc', widths[-1], c)


def _wrn(depth, k, c):
  n = (depth - 4) // 6
  channels = [16, 16 * k, 32 * k, 64 * k]
  t = _conv('conv1', 16, 3, 3)
  for s in range(1, 4):
    for i in range(n):
      cin = channels[s - 1] if i == 0 else channels[s]
      cout = channels[s]
      p = f'block{s}.layer.{i}'
      t += _bn(f'{p}.bn1', cin) + _conv(f'{p}.conv1', cout, cin, 3)
      t += _bn(f'{p}.bn2', cout) + _conv(f'{p}.conv2', cout, cout, 3)
      if cin != cout:
        t += _conv(f'{p}.convShortcut', cout, cin, 1)
  return t + _bn('bn1', channels[3]) + _linear('fc', channels[3], c)


_VGG = {
  'vgg8': [[64], [128], [256], [512], [512]],
  'vgg11': [[64], [128], [256, 256], [512, 512], [512, 512]],
  'vgg13': [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
  'vgg16': [
    [64, 64],
    [128, 128],
    [256, 256, 256],
    [512, 512, 512],
    [512, 512, 512],
  ],
  'vgg19': [
    [64, 64],
    [128, 128],
    [256, 256, 256, 256],
    [512, 512, 512, 512],
    [512, 512, 512, 512],
  ],
}


def _vgg(cfg, c):
  t, cin = [], 3
  for b, widths in enumerate(cfg):
    # nn.Sequential of (conv, bn, relu) per width.
    for j, v in enumerate(widths):
      t += _conv(f'block{b}.{3 * j}', v, cin, 3, bias=True)
      t += _bn(f'block{b}.{3 * j + 1}', v)
      cin = v
  return t + _linear('classifier', 512, c)


def _mobilenetv2(c, expansion=6, width=0.5):
  settings = [
    (1, 16, 1, 1),
    (expansion, 24, 2, 1),
    (expansion, 32, 3, 2),
    (expansion, 64, 4, 2),
    (expansion, 96, 3, 1),
    (expansion, 160, 3, 2),
    (expansion, 320, 1, 1),
  ]
  cin = int(32 * width)
  t = _conv('conv1.0', cin, 3, 3) + _bn('conv1.1', cin)
  for b, (e, ch, n, _) in enumerate(settings):
    cout = int(ch * width)
    for i in range(n):
      p, hid = f'blocks.{b}.{i}.conv', cin * e
      t += _conv(f'{p}.0', hid, cin, 1) + _bn(f'{p}.1', hid)
      t += _conv(f'{p}.3', hid, 1, 3) + _bn(f'{p}.4', hid)
      t += _conv(f'{p}.6', cout, hid, 1) + _bn(f'{p}.7', cout)
      cin = cout
  t += _conv('conv2.0', 1280, cin, 1) + _bn('conv2.1', 1280)
  return t + _linear('classifier.0', 1280, c)


def _shufflev1(c, out_planes=(240, 480, 960), blocks=(4, 8, 4), groups=3):
  t = _conv('conv1', 24, 3, 1) + _bn('bn1', 24)
  cin = 24
  for s, (planes, n) in enumerate(zip(out_planes, blocks), 1):
    for i in range(n):
      out = planes - cin if i == 0 else planes
      mid = int(out / 4)
      g = 1 if cin == 24 else groups
      p = f'layer{s}.{i}'
      t += _conv(f'{p}.conv1', mid, cin // g, 1) + _bn(f'{p}.bn1', mid)
      t += _conv(f'{p}.conv2', mid, 1, 3) + _bn(f'{p}.bn2', mid)
      t += _conv(f'{p}.conv3', out, mid // groups, 1) + _bn(f'{p}.bn3', out)
      cin = planes
  return t + _linear('linear', out_planes[-1], c)


def _shufflev2(c, out_channels=(116, 232, 464, 1024), blocks=(3, 7, 3)):
  t = _conv('conv1', 24, 3, 1) + _bn('bn1', 24)
  cin = 24
  for s, (cout, n) in enumerate(zip(out_channels, blocks), 1):
    mid, p = cout // 2, f'layer{s}.0'
    t += _conv(f'{p}.conv1', cin, 1, 3) + _bn(f'{p}.bn1', cin)
    t += _conv(f'{p}.conv2', mid, cin, 1) + _bn(f'{p}.bn2', mid)
    t += _conv(f'{p}.conv3', mid, cin, 1) + _bn(f'{p}.bn3', mid)
    t += _conv(f'{p}.conv4', mid, 1, 3) + _bn(f'{p}.bn4', mid)
    t += _conv(f'{p}.conv5', mid, mid, 1) + _bn(f'{p}.bn5', mid)
    for i in range(1, n + 1):
      half, p = int(cout * 0.5), f'layer{s}.{i}'
      t += _conv(f'{p}.conv1', half, half, 1) + _bn(f'{p}.bn1', half)
      t += _conv(f'{p}.conv2', half, 1, 3) + _bn(f'{p}.bn2', half)
      t += _conv(f'{p}.conv3', half, half, 1) + _bn(f'{p}.bn3', half)
    cin = cout
  t += _conv('conv2', out_channels[3], out_channels[2], 1)
  t += _bn('bn2', out_channels[3])
  return t + _linear('linear', out_channels[3], c)


def _resnet50(c, blocks=(3, 4, 6, 3)):
  t = _conv('conv1', 64, 3, 3) + _bn('bn1', 64)
  cin = 64
  for s, n in enumerate(blocks, 1):
    planes = 64 * 2 ** (s - 1)
    for i in range(n):
      stride = 2 if s > 1 and i == 0 else 1
      p = f'layer{s}.{i}'
      t += _conv(f'{p}.conv1', planes, cin, 1) + _bn(f'{p}.bn1', planes)
      t += _conv(f'{p}.conv2', planes, planes, 3) + _bn(f'{p}.bn2', planes)
      t += _conv(f'{p}.conv3', 4 * planes, planes, 1)
      t += _bn(f'{p}.bn3', 4 * planes)
      if stride != 1 or cin != 4 * planes:
        t += _conv(f'{p}.shortcut.0', 4 * planes, cin, 1) + _bn(
          f'{p}.shortcut.1', 4 * planes
        )
      cin = 4 * planes
  return t + _linear('linear', 2048, c)


def _torchvision_resnet(blocks, bottleneck, c):
  """torchvision's resnet18/34/50: `downsample.{0,1}` shortcuts."""
  t = _conv('conv1', 64, 3, 7) + _bn('bn1', 64)
  cin, expansion = 64, 4 if bottleneck else 1
  for s, n in enumerate(blocks, 1):
    planes = 64 * 2 ** (s - 1)
    out = expansion * planes
    for i in range(n):
      stride = 2 if s > 1 and i == 0 else 1
      p = f'layer{s}.{i}'
      if bottleneck:
        t += _conv(f'{p}.conv1', planes, cin, 1) + _bn(f'{p}.bn1', planes)
        t += _conv(f'{p}.conv2', planes, planes, 3) + _bn(f'{p}.bn2', planes)
        t += _conv(f'{p}.conv3', out, planes, 1) + _bn(f'{p}.bn3', out)
      else:
        t += _conv(f'{p}.conv1', planes, cin, 3) + _bn(f'{p}.bn1', planes)
        t += _conv(f'{p}.conv2', planes, planes, 3) + _bn(f'{p}.bn2', planes)
      if stride != 1 or cin != out:
        t += _conv(f'{p}.downsample.0', out, cin, 1)
        t += _bn(f'{p}.downsample.1', out)
      cin = out
  return t + _linear('fc', cin, c)


def _mobilenetv1(c):
  """mdistiller's MobileNetV1: model.0 conv_bn, model.1-13 conv_dw."""
  widths = (64, 128, 128, 256, 256, 512, 512, 512, 512, 512, 512, 1024, 1024)
  t = _conv('model.0.0', 32, 3, 3) + _bn('model.0.1', 32)
  cin = 32
  for k, cout in enumerate(widths, 1):
    t += _conv(f'model.{k}.0', cin, 1, 3) + _bn(f'model.{k}.1', cin)
    t += _conv(f'model.{k}.3', cout, cin, 1) + _bn(f'model.{k}.4', cout)
    cin = cout
  return t + _linear('fc', 1024, c)


_NARROW, _WIDE = (16, 16, 32, 64), (32, 64, 128, 256)
_LAYOUTS = {
  **{
    f'resnet{d}': (lambda c, d=d: _resnet(d, _NARROW, c))
    for d in (8, 14, 20, 32, 44, 56, 110)
  },
  'resnet8x4': lambda c: _resnet(8, _WIDE, c),
  'resnet32x4': lambda c: _resnet(32, _WIDE, c),
  'wrn_16_1': lambda c: _wrn(16, 1, c),
  'wrn_16_2': lambda c: _wrn(16, 2, c),
  'wrn_40_1': lambda c: _wrn(40, 1, c),
  'wrn_40_2': lambda c: _wrn(40, 2, c),
  **{name: (lambda c, cfg=cfg: _vgg(cfg, c)) for name, cfg in _VGG.items()},
  'MobileNetV2': _mobilenetv2,
  'ShuffleV1': _shufflev1,
  'ShuffleV2': _shufflev2,
  'ResNet50': _resnet50,
}
MODEL_NAMES = tuple(_LAYOUTS)
# torchvision's ResNets and mdistiller's MobileNetV1.
_IMAGENET_LAYOUTS = {
  'imagenet_resnet18': lambda c: _torchvision_resnet((2, 2, 2, 2), False, c),
  'imagenet_resnet34': lambda c: _torchvision_resnet((3, 4, 6, 3), False, c),
  'imagenet_resnet50': lambda c: _torchvision_resnet((3, 4, 6, 3), True, c),
  'imagenet_mobilenetv1': _mobilenetv1,
}
IMAGENET_MODEL_NAMES = tuple(_IMAGENET_LAYOUTS)
_LAYOUTS.update(_IMAGENET_LAYOUTS)


def benchmark_layout(name: str, num_classes: int) -> dict[str, tuple]:
  """{tensor name: shape} of the benchmark network's state_dict, in order."""
  return dict(_LAYOUTS[name](num_classes))


def parameter_count(name: str, num_classes: int) -> int:
  """`sum(p.numel() for p in model.parameters())`: weights and biases."""
  return sum(
    int(np.prod(s))
    for k, s in benchmark_layout(name, num_classes).items()
    if k.endswith(('.weight', '.bias'))
  )


def random_state_dict(name: str, num_classes: int, seed: int = 0):
  """An OrderedDict like `model.state_dict()`, random float32 values (int64
  zeros for num_batches_tracked)."""
  rng = np.random.default_rng(seed)
  state = collections.OrderedDict()
  for key, shape in benchmark_layout(name, num_classes).items():
    if key.endswith('num_batches_tracked'):
      state[key] = np.zeros(shape, np.int64)
    elif key.endswith('running_var'):
      state[key] = rng.uniform(0.5, 2.0, shape).astype(np.float32)
    else:
      state[key] = rng.standard_normal(shape).astype(np.float32)
  return state


# ------------------------------------------------------------------ writer

_STORAGE_NAMES = {
  np.dtype(np.float32): 'FloatStorage',
  np.dtype(np.int64): 'LongStorage',
  np.dtype(np.float64): 'DoubleStorage',
}


class _Global:
  """Pickled as the global `module.name` without importing it."""

  def __init__(self, module, name):
    self.module, self.name = module, name

  def __call__(self, *args):
    # pickle only checks that a reduce function is callable; never called.
    raise TypeError(f'{self.module}.{self.name} is a pickling marker')


class Storage:
  """A torch storage: one flat array."""

  def __init__(self, array):
    self.array = np.ascontiguousarray(array).reshape(-1)


class Tensor:
  """A strided view of a Storage, pickled as torch pickles a tensor."""

  def __init__(self, storage, shape, stride, offset=0):
    self.storage, self.shape, self.stride = storage, shape, stride
    self.offset = offset

  def __reduce__(self):
    return (
      _Global('torch._utils', '_rebuild_tensor_v2'),
      (
        self.storage,
        self.offset,
        tuple(self.shape),
        tuple(self.stride),
        False,
        collections.OrderedDict(),
      ),
    )


class _Pickler(pickle._Pickler):  # pylint: disable=protected-access
  """Protocol 2, torch's persistent ids for storages."""

  dispatch = pickle._Pickler.dispatch.copy()  # pylint: disable=protected-access

  def __init__(self, file, legacy):
    super().__init__(file, protocol=2)
    self.legacy = legacy
    self.storages = {}

  def _save_global_marker(self, obj):
    self.write(pickle.GLOBAL + f'{obj.module}\n{obj.name}\n'.encode())

  dispatch[_Global] = _save_global_marker

  def persistent_id(self, obj):
    if not isinstance(obj, Storage):
      return None
    key = str(len(self.storages))
    self.storages.setdefault(id(obj), (key, obj))
    key = self.storages[id(obj)][0]
    pid = (
      'storage',
      _Global('torch', _STORAGE_NAMES[obj.array.dtype]),
      key,
      'cpu',
      obj.array.size,
    )
    return pid + (None,) if self.legacy else pid


def _tensors(obj):
  """obj with every numpy array replaced by a tensor on its own storage."""
  if isinstance(obj, np.ndarray):
    contiguous = np.ascontiguousarray(obj)
    strides = tuple(s // contiguous.itemsize for s in contiguous.strides)
    return Tensor(Storage(contiguous), contiguous.shape, strides)
  if isinstance(obj, collections.OrderedDict):
    return collections.OrderedDict((k, _tensors(v)) for k, v in obj.items())
  if isinstance(obj, dict):
    return {k: _tensors(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return type(obj)(_tensors(v) for v in obj)
  return obj


def pickle_bytes(obj, legacy=False):
  """(the object's pickle, [(storage key, flat array)]) as torch writes them."""
  buffer = io.BytesIO()
  pickler = _Pickler(buffer, legacy)
  pickler.dump(_tensors(obj))
  storages = [(key, s.array) for key, s in pickler.storages.values()]
  return buffer.getvalue(), storages


def write_pth(path, obj, legacy=False):
  """Writes `obj` (dicts, lists, numbers, numpy arrays as tensors) as
  `torch.save` does: zip, or legacy when `legacy`."""
  data, storages = pickle_bytes(obj, legacy)
  if legacy:
    with open(path, 'wb') as f:
      for header in (
        0x1950A86A20F9469CFC6C,
        1001,
        {
          'protocol_version': 1001,
          'little_endian': True,
          'type_sizes': {'short': 2, 'int': 4, 'long': 4},
        },
      ):
        pickle.dump(header, f, protocol=2)
      f.write(data)
      pickle.dump([key for key, _ in storages], f, protocol=2)
      for _, array in storages:
        f.write(struct.pack('<q', array.size))
        f.write(array.astype(array.dtype.newbyteorder('<')).tobytes())
    return
  with zipfile.ZipFile(path, 'w') as z:
    z.writestr('archive/data.pkl', data)
    z.writestr('archive/byteorder', 'little')
    z.writestr('archive/version', '3\n')
    for key, array in storages:
      z.writestr(f'archive/data/{key}', array.tobytes())
