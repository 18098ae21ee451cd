r"""Writes imagenet_references.npz, the PyTorch outputs that
tests/test_imagenet_teacher.py compares the ImageNet family with, into
$ICCKD_TORCH_REFERENCES (default ~/.cache/icckd_jax/torch_references):
generated data, never committed; the test skips, saying so, where it is
absent.

The tests never import PyTorch; this script is the only place it is needed.
For torchvision's `resnet34` and `resnet50` (and, given --mdistiller,
mdistiller's MobileNetV1) at 1,000 classes it

  - checks that `model.state_dict()` has exactly the tensors and shapes of
    tests/torch_files.py's hand-written layout, and prints
    `sum(p.numel() for p in model.parameters())` (tests/test_models.py's
    IMAGENET_PARAMS);
  - loads `torch_reference.well_scaled(torch_files.random_state_dict(name,
    1000, seed=SEED))` into it: weights that numpy draws from a fixed seed,
    so the test rebuilds the same state_dict without PyTorch and writes it
    as a `.pth` (torch_files.write_pth) instead of reading a 100 MB file;
  - runs it in eval() mode (BatchNorm with the running statistics) on
    `input_nchw(name)`, normal noise from a fixed seed, and stores the
    logits [N, 1000] and the pooled features [N, D] (the input of fc),
    float32: 46 kB in all.

The ResNets run at 64x64 (the last map is 2x2, which torchvision's adaptive
pool reduces like a 7x7 one); MobileNetV1 at 224x224, where mdistiller's
fixed AvgPool2d(7) covers its last map exactly.

With --check it recomputes everything and compares it with the written
file instead of writing it (exit 1 on a difference beyond 1e-6 relative),
and also loads ../shared/data/torchvision/resnet18/resnet18-random.pth into
torchvision's resnet18 and prints how far its reference_outputs.npz
`logits` and `features` are from what torch computes.

How to run (torch 2.13.0+cpu and torchvision 0.28.0 were used for the
figures in the notes; torchvision's compiled operators are not needed):

  python3 -m venv /tmp/torchvenv
  /tmp/torchvenv/bin/pip install torch torchvision numpy
  git clone https://github.com/megvii-research/mdistiller /tmp/mdistiller
  /tmp/torchvenv/bin/python tests/make_imagenet_references.py \
      --mdistiller=/tmp/mdistiller [--check]
"""

import argparse
import importlib.util
import os
import pathlib
import sys

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
OUTPUT = (
  pathlib.Path(
    os.environ.get(
      'ICCKD_TORCH_REFERENCES', '~/.cache/icckd_jax/torch_references'
    )
  ).expanduser()
  / 'imagenet_references.npz'
)
FIXTURE = HERE.parents[1] / 'shared' / 'data' / 'torchvision' / 'resnet18'
SEED = 0
# (input shape NCHW) per model.
INPUTS = {
  'imagenet_resnet34': (2, 3, 64, 64),
  'imagenet_resnet50': (2, 3, 64, 64),
  'imagenet_mobilenetv1': (1, 3, 224, 224),
}


def input_nchw(name: str) -> np.ndarray:
  """The reference input of `name`: N(0, 1), float32, NCHW."""
  seed = sorted(INPUTS).index(name) + 1
  rng = np.random.default_rng(seed)
  return rng.standard_normal(INPUTS[name]).astype(np.float32)


def _mdistiller_mobilenetv1(root: pathlib.Path):
  path = root / 'mdistiller' / 'models' / 'imagenet' / 'mobilenetv1.py'
  spec = importlib.util.spec_from_file_location('mobilenetv1', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.MobileNetV1


def _outputs(torch, model, name, x):
  """(logits, pooled features) of the model in eval() mode."""
  with torch.no_grad():
    if name == 'imagenet_mobilenetv1':
      logits, feats = model(x)
      return logits.numpy(), feats['pooled_feat'].numpy()
    pooled = []
    hook = model.fc.register_forward_hook(
      lambda m, inputs, out: pooled.append(inputs[0])
    )
    logits = model(x)
    hook.remove()
    return logits.numpy(), pooled[0].numpy()


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--mdistiller', type=pathlib.Path, default=None)
  parser.add_argument('--check', action='store_true')
  args = parser.parse_args()

  import torch  # pylint: disable=g-import-not-at-top
  import torchvision  # pylint: disable=g-import-not-at-top

  sys.path.insert(0, str(HERE))
  import torch_files  # pylint: disable=g-import-not-at-top
  import torch_reference  # pylint: disable=g-import-not-at-top

  builders = {
    'imagenet_resnet34': torchvision.models.resnet34,
    'imagenet_resnet50': torchvision.models.resnet50,
  }
  if args.mdistiller:
    builders['imagenet_mobilenetv1'] = _mdistiller_mobilenetv1(args.mdistiller)
  if args.check or args.mdistiller:
    builders['imagenet_resnet18'] = torchvision.models.resnet18
  problems, results = [], {}
  for name, build in sorted(builders.items()):
    model = build(num_classes=1000).eval()
    count = sum(p.numel() for p in model.parameters())
    print(f'{name}: {count:,} parameters')
    real = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if torch_files.benchmark_layout(name, 1000) != real:
      problems.append(f'torch_files.benchmark_layout({name!r}) differs')
    if name not in INPUTS:
      continue
    state = torch_reference.well_scaled(
      torch_files.random_state_dict(name, 1000, seed=SEED)
    )
    model.load_state_dict(
      {k: torch.from_numpy(np.asarray(v)) for k, v in state.items()}
    )
    logits, features = _outputs(
      torch, model, name, torch.from_numpy(input_nchw(name))
    )
    results[f'{name}/logits'] = logits.astype(np.float32)
    results[f'{name}/features'] = features.astype(np.float32)
    print(f'  logits {logits.shape} |max| {np.abs(logits).max():.3g}')
  if args.check:
    committed = np.load(OUTPUT)
    for key, value in results.items():
      err = np.abs(committed[key] - value).max() / np.abs(value).max()
      if err > 1e-6:
        problems.append(f'{key}: {err:.2e} from the committed file')
    if FIXTURE.exists():
      _check_fixture(torch, torchvision)
  else:
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    np.savez(OUTPUT, **results)
    print(f'wrote {OUTPUT} ({OUTPUT.stat().st_size:,} bytes)')
  for problem in problems:
    print('PROBLEM:', problem)
  return 1 if problems else 0


def _check_fixture(torch, torchvision) -> None:
  """How far the shared fixture's references are from torch's outputs."""
  reference = np.load(FIXTURE / 'reference_outputs.npz')
  model = torchvision.models.resnet18().eval()
  model.load_state_dict(torch.load(FIXTURE / 'resnet18-random.pth'))
  x = torch.from_numpy(reference['inputs_normalized_nhwc']).permute(0, 3, 1, 2)
  logits, features = _outputs(torch, model, 'imagenet_resnet18', x)
  for key, value in (('logits', logits), ('features', features)):
    err = np.abs(reference[key] - value).max()
    print(f'shared fixture {key}: max abs {err:.2e} from torch')


if __name__ == '__main__':
  sys.exit(main())
