r"""Regenerates the PyTorch-derived numbers that the tests hard-code.

The tests never import PyTorch; this script is the only place it is needed.
It runs the CIFAR-100 KD benchmark's own model definitions, RepDistiller's
models/*.py at commit b84f547c5db6a35318d4671d7d5c4de74c822403, under
PyTorch on the CPU, and prints:

  EXPECTED_PARAMS (tests/test_models.py): for each of the 22 architectures,
    `sum(p.numel() for p in model.parameters())` of
    `models.model_dict[name](num_classes=100)` (trainable parameters;
    BatchNorm running statistics are buffers, not parameters).

  REFERENCE_LOGITS (tests/test_models.py): logits[:, :4] of resnet8,
    wrn_16_2 and vgg8 (the benchmark's vgg8_bn), 100 classes, in train()
    mode (BatchNorm normalises with the batch's statistics), computed in
    float64 (so that any machine prints the same digits; how far float32
    arithmetic moves them is printed too), on
      x = sin(0.3 * arange(2 * 32 * 32 * 3)).reshape(2, 32, 32, 3)  (NHWC)
    transposed to NCHW, with every parameter replaced by the fixed pattern
    of `wave_parameters` below, which is test_models.py's `_wave_params`:
    the flax parameter tree's leaves in `jax.tree.flatten` order (keys
    sorted at every level) get, leaf k, sin(0.7 * i + k) over their
    row-major elements i in flax layout (conv HWIO, dense [in, out]),
    divided by sqrt(fan_in = product of all but the last dimension) for
    kernels. Here each PyTorch tensor is given its flax path by
    `flax_path` (written from the flax modules' names, not taken from the
    project's importer), the paths are sorted, and each pattern is built in
    flax layout and transposed to PyTorch's (HWIO -> OIHW, [in, out] ->
    [out, in]).

With --check it also compares what it computes with the literals in
tests/test_models.py (read with `ast`, so without JAX), and checks the
test helpers that stand in for PyTorch against PyTorch itself:
tests/torch_files.py's hand-written state_dict layouts (every key and shape
of every architecture's `state_dict()`), tests/torch_reference.py's numpy
ShuffleNet V1/V2 forward passes (against the benchmark's modules in eval()
mode), and the `.pth` fixtures in ../shared/data/repdistiller (loaded with
torch.load into the benchmark's modules, their reference_outputs.npz
logits and features reproduced). It exits 1 on any difference.

How to run (PyTorch 2.13.0, CPU build, was used for the committed numbers;
the check passes when every logit is within 1e-6):

  python3 -m venv /tmp/torchvenv
  /tmp/torchvenv/bin/pip install torch==2.13.0 numpy
  git clone https://github.com/HobbitLong/RepDistiller /tmp/RepDistiller
  git -C /tmp/RepDistiller checkout b84f547c5db6a35318d4671d7d5c4de74c822403
  /tmp/torchvenv/bin/python tests/make_references.py \
      --repdistiller=/tmp/RepDistiller --check

Paste the printed literals over the ones in tests/test_models.py if a
definition or the input pattern changes.
"""

import argparse
import ast
import pathlib
import re
import sys

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
FIXTURES = HERE.parents[1] / 'shared' / 'data' / 'repdistiller'
LOGIT_MODELS = ('resnet8', 'vgg8', 'wrn_16_2')


def flax_path(name: str, key: str) -> tuple[str, ...]:
  """The flax parameter path of PyTorch parameter `key` of model `name`."""
  *module, kind = key.split('.')
  module = '.'.join(module)
  if name.startswith('resnet'):
    module = re.sub(r'^layer(\d+)\.(\d+)', r'layer\1_\2', module)
    module = module.replace('.downsample.0', '.downsample_conv')
    module = module.replace('.downsample.1', '.downsample_bn')
  elif name.startswith('wrn'):
    module = re.sub(r'^block(\d+)\.layer\.(\d+)', r'block\1_\2', module)
    module = module.replace('.convShortcut', '.shortcut')
  elif name.startswith('vgg'):
    match = re.fullmatch(r'block(\d+)\.(\d+)', module)
    if match:  # Sequential [conv, bn, relu] * n, the last relu dropped.
      b, j = int(match[1]), int(match[2])
      module = f'block{b}.' + (f'conv{j // 3}' if j % 3 == 0 else f'bn{j // 3}')
      module = module.replace('.', '_')
  else:
    raise ValueError(name)
  is_bn = re.search(r'(^|[._])bn\d*$', module) or module.endswith(
    'downsample_bn'
  )
  leaf = {'weight': 'scale' if is_bn else 'kernel', 'bias': 'bias'}[kind]
  return tuple(module.split('.')) + (leaf,)


def wave_parameters(name, model):
  """{PyTorch key: array} with test_models.py's `_wave_params` pattern."""
  named = dict(model.named_parameters())
  paths = sorted((flax_path(name, key), key) for key in named)
  out = {}
  for k, (_, key) in enumerate(paths):
    shape = tuple(named[key].shape)
    # The flax layout of this tensor.
    if len(shape) == 4:
      flax_shape = (shape[2], shape[3], shape[1], shape[0])
    elif len(shape) == 2:
      flax_shape = (shape[1], shape[0])
    else:
      flax_shape = shape
    size = int(np.prod(flax_shape))
    wave = np.sin(0.7 * np.arange(size) + k).reshape(flax_shape)
    fan_in = np.prod(flax_shape[:-1]) if len(flax_shape) > 1 else 1
    wave = (wave / np.sqrt(fan_in)).astype(np.float32)
    if len(shape) == 4:
      wave = wave.transpose(3, 2, 0, 1)
    elif len(shape) == 2:
      wave = wave.T
    out[key] = np.ascontiguousarray(wave)
  return out


def parameter_counts(model_dict):
  return {
    name: sum(p.numel() for p in model_dict[name](num_classes=100).parameters())
    for name in model_dict
  }


def reference_logits(torch, model_dict, dtype):
  """{name: logits[:, :4]}, the model run in `dtype` (the weights are the
  float32 pattern either way; only the arithmetic differs)."""
  x = np.sin(0.3 * np.arange(2 * 32 * 32 * 3)).reshape(2, 32, 32, 3)
  x = torch.from_numpy(x.astype(np.float32).transpose(0, 3, 1, 2).copy())
  result = {}
  for name in LOGIT_MODELS:
    model = model_dict[name](num_classes=100)
    waves = wave_parameters(name, model)
    with torch.no_grad():
      for key, p in model.named_parameters():
        p.copy_(torch.from_numpy(waves[key]))
      model.to(dtype).train()
      logits = model(x.to(dtype))
    result[name] = logits[:, :4].numpy().astype(np.float64).tolist()
  return result


def committed():
  """EXPECTED_PARAMS and REFERENCE_LOGITS as tests/test_models.py has them."""
  tree = ast.parse((HERE / 'test_models.py').read_text())
  values = {}
  for node in tree.body:
    if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
      if node.targets[0].id in ('EXPECTED_PARAMS', 'REFERENCE_LOGITS'):
        values[node.targets[0].id] = ast.literal_eval(node.value)
  return values


def check_helpers(torch, model_dict) -> list[str]:
  """Differences between the numpy stand-ins in tests/ and PyTorch."""
  sys.path.insert(0, str(HERE))
  import torch_files  # pylint: disable=g-import-not-at-top
  import torch_reference  # pylint: disable=g-import-not-at-top

  problems = []
  for name in torch_files.MODEL_NAMES:
    real = {
      k: tuple(v.shape)
      for k, v in model_dict[name](num_classes=100).state_dict().items()
    }
    if torch_files.benchmark_layout(name, 100) != real:
      problems.append(f'torch_files.benchmark_layout({name!r}) differs')
  for name in ('ShuffleV1', 'ShuffleV2'):
    state = torch_reference.well_scaled(torch_files.random_state_dict(name, 10))
    model = model_dict[name](num_classes=10).eval()
    model.load_state_dict(
      {k: torch.from_numpy(np.asarray(v)) for k, v in state.items()}
    )
    x = np.random.default_rng(1).standard_normal((2, 3, 32, 32))
    with torch.no_grad():
      feats, logits = model(
        torch.from_numpy(x.astype(np.float32)), is_feat=True
      )
    features = feats[-1]
    want = getattr(torch_reference, name.lower())(x, state)
    for got, ref, what in (
      (logits, want[0], 'logits'),
      (features, want[1], 'features'),
    ):
      err = float(np.max(np.abs(got.numpy() - ref)))
      print(
        f'torch_reference.{name.lower()} {what}: max abs difference '
        f'{err:.1e} from PyTorch'
      )
      if err > 1e-4:
        problems.append(f'torch_reference.{name.lower()} {what} off by {err}')
  for folder, name in (
    ('resnet8x4_legacy', 'resnet8x4'),
    ('resnet20_zip', 'resnet20'),
    ('mobilenetv2_zip', 'MobileNetV2'),
  ):
    path = FIXTURES / folder
    if not path.is_dir():
      problems.append(f'{path} is absent')
      continue
    checkpoint = torch.load(path / 'ckpt_epoch_240.pth', map_location='cpu')
    model = model_dict[name](num_classes=100).eval()
    model.load_state_dict(checkpoint['model'])
    ref = np.load(path / 'reference_outputs.npz')
    x = torch.from_numpy(
      ref['inputs_normalized_nhwc'].transpose(0, 3, 1, 2).copy()
    )
    with torch.no_grad():
      feats, logits = model(x, is_feat=True)
    features = feats[-1].flatten(1)
    for got, what in ((logits, 'logits'), (features, 'features')):
      err = float(np.max(np.abs(got.numpy() - ref[what])))
      print(f'{folder} {what}: max abs difference {err:.1e} from PyTorch')
      if err > 1e-5:
        problems.append(f'{folder} {what} off by {err}')
  return problems


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument(
    '--repdistiller',
    required=True,
    type=pathlib.Path,
    help='a checkout of RepDistiller (its models/ folder)',
  )
  parser.add_argument(
    '--check',
    action='store_true',
    help='compare with tests/test_models.py and check the '
    'test helpers and fixtures; exit 1 on a difference',
  )
  args = parser.parse_args()
  import torch  # pylint: disable=g-import-not-at-top

  torch.manual_seed(0)
  sys.path.insert(0, str(args.repdistiller))
  from models import model_dict  # pylint: disable=g-import-not-at-top

  counts = parameter_counts(model_dict)
  logits = reference_logits(torch, model_dict, torch.float64)
  logits32 = reference_logits(torch, model_dict, torch.float32)
  print(
    f'# PyTorch {torch.__version__}, RepDistiller models at {args.repdistiller}'
  )
  print('EXPECTED_PARAMS = {')
  for name, count in counts.items():
    print(f"    '{name}': {count:_},")
  print('}')
  print('REFERENCE_LOGITS = {')
  for name, rows in logits.items():
    print(
      f"    '{name}': ["
      + ',\n        '.join(
        '[' + ', '.join(f'{v:.8f}' for v in row) + ']' for row in rows
      )
      + '],'
    )
  print('}')
  for name in LOGIT_MODELS:
    err = float(np.max(np.abs(np.subtract(logits32[name], logits[name]))))
    print(f'# {name}: float32 arithmetic moves these logits by {err:.1e}')
  if not args.check:
    return
  problems = []
  have = committed()
  if have['EXPECTED_PARAMS'] != counts:
    problems.append(f'EXPECTED_PARAMS differs: {have["EXPECTED_PARAMS"]}')
  for name, rows in logits.items():
    err = float(
      np.max(np.abs(np.subtract(have['REFERENCE_LOGITS'][name], rows)))
    )
    print(f'REFERENCE_LOGITS[{name!r}]: committed vs recomputed {err:.1e}')
    if err > 1e-6:
      problems.append(f'REFERENCE_LOGITS[{name!r}] off by {err}')
  if set(have['REFERENCE_LOGITS']) != set(logits):
    problems.append('REFERENCE_LOGITS names other models')
  problems += check_helpers(torch, model_dict)
  for p in problems:
    print('DIFFERENT:', p, file=sys.stderr)
  print('all reproduced' if not problems else f'{len(problems)} differences')
  sys.exit(1 if problems else 0)


if __name__ == '__main__':
  main()
