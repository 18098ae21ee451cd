r"""The same train steps in PyTorch, eager and under `torch.compile`, for
side-by-side ratios.

The CIFAR ResNets of the KD benchmark (BasicBlock, depth 6n+2; resnet8x4 and
resnet32x4 have widths 32, 64, 128, 256), SGD with momentum 0.9 and weight
decay 5e-4, cross-entropy, data already on the device as uint8 and
normalised in the step (no DataLoader: an upper bound for a PyTorch user).
An intra-class teacher's step is timed as both views through the network
(`views=2`, CE on the first: the contrastive term is not written here); the
KD student's as the teacher's forward pass without gradients and the
student's CE + KL(T=4) step. Steps are dispatched asynchronously and
synchronised once at the end, like benchmarks/gpu_check.py's JAX steps.
`compiled=True` wraps the networks in `torch.compile` (its default mode, as
most PyTorch users run it); its compilation happens in the untimed warm-up
steps and is reported as `compile_s`.

  python benchmarks/torch_baseline.py [--steps=50] [--compiled]

PyTorch is not a dependency of this project: `available()` says whether it
is importable here, and benchmarks/gpu_check.py runs this only then.
"""

import argparse
import importlib.util
import time

_BLOCKS = {'resnet8': 1, 'resnet20': 3, 'resnet8x4': 1, 'resnet32x4': 5}
_WIDTHS = {
  'resnet8': (16, 16, 32, 64),
  'resnet20': (16, 16, 32, 64),
  'resnet8x4': (32, 64, 128, 256),
  'resnet32x4': (32, 64, 128, 256),
}


def available() -> bool:
  return importlib.util.find_spec('torch') is not None


def version() -> str:
  import torch  # pylint: disable=g-import-not-at-top

  return torch.__version__


def _resnet(name: str, classes: int):
  """The CIFAR ResNet `name`: a 3x3 stem, three stages of BasicBlocks
  (stride 2 entering the second and third), global pooling, a linear head."""
  import torch.nn as nn  # pylint: disable=g-import-not-at-top
  import torch.nn.functional as F  # pylint: disable=g-import-not-at-top

  class Block(nn.Module):
    def __init__(self, cin, cout, stride):
      super().__init__()
      self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
      self.bn1 = nn.BatchNorm2d(cout)
      self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
      self.bn2 = nn.BatchNorm2d(cout)
      self.shortcut = nn.Identity()
      if stride != 1 or cin != cout:
        self.shortcut = nn.Sequential(
          nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
        )

    def forward(self, x):
      y = F.relu(self.bn1(self.conv1(x)))
      return F.relu(self.bn2(self.conv2(y)) + self.shortcut(x))

  widths, n = _WIDTHS[name], _BLOCKS[name]
  layers = [
    nn.Conv2d(3, widths[0], 3, 1, 1, bias=False),
    nn.BatchNorm2d(widths[0]),
    nn.ReLU(),
  ]
  cin = widths[0]
  for stage, cout in enumerate(widths[1:]):
    for i in range(n):
      layers.append(Block(cin, cout, 2 if stage and not i else 1))
      cin = cout
  layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, classes)]
  return nn.Sequential(*layers)


def measure(
  model: str,
  batch: int,
  views: int = 1,
  bf16: bool = False,
  channels_last: bool = False,
  teacher: str | None = None,
  steps: int = 50,
  size: int = 32,
  classes: int = 100,
  compiled: bool = False,
) -> dict:
  """Images/s and peak device MiB of `steps` train steps of `model`, eager
  or (`compiled`) under `torch.compile`."""
  import torch  # pylint: disable=g-import-not-at-top
  import torch.nn.functional as F  # pylint: disable=g-import-not-at-top

  device = 'cuda' if torch.cuda.is_available() else 'cpu'
  torch.backends.cudnn.benchmark = True
  torch.manual_seed(0)
  fmt = torch.channels_last if channels_last else torch.contiguous_format
  net = _resnet(model, classes).to(device, memory_format=fmt)
  frozen = None
  if teacher:
    frozen = _resnet(teacher, classes).to(device, memory_format=fmt).eval()
  if compiled:
    net = torch.compile(net)
    frozen = frozen if frozen is None else torch.compile(frozen)
  opt = torch.optim.SGD(
    net.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4
  )
  pixels = torch.randint(
    0, 256, (4, batch * views, 3, size, size), dtype=torch.uint8, device=device
  )
  labels = torch.randint(0, classes, (4, batch), device=device)
  mean = torch.tensor([0.507, 0.487, 0.441], device=device).view(1, 3, 1, 1)
  std = torch.tensor([0.267, 0.256, 0.276], device=device).view(1, 3, 1, 1)

  def step(i):
    x = ((pixels[i % 4].float() / 255 - mean) / std).contiguous(
      memory_format=fmt
    )
    with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
      logits = net(x)[:batch].float()
      loss = F.cross_entropy(logits, labels[i % 4])
      if frozen is not None:
        with torch.no_grad():
          target = frozen(x).float()
        loss = loss + 16 * F.kl_div(
          F.log_softmax(logits / 4, -1),
          F.softmax(target / 4, -1),
          reduction='batchmean',
        )
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss

  start = time.perf_counter()
  for i in range(3):
    step(i).item()
  compile_s = time.perf_counter() - start
  if device == 'cuda':
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
  start = time.perf_counter()
  for i in range(steps):
    loss = step(i)
  loss.item()  # Synchronises.
  seconds = time.perf_counter() - start
  peak = torch.cuda.max_memory_allocated() if device == 'cuda' else None
  return {
    'device': device,
    'images_per_second': steps * batch / seconds,
    'ms_per_step': 1000 * seconds / steps,
    'peak_mib': None if peak is None else peak / 2**20,
    'compile_s': compile_s,  # the three warm-up steps, compilation included
  }


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--steps', type=int, default=50)
  parser.add_argument('--compiled', action='store_true')
  args = parser.parse_args()
  if not available():
    print('PyTorch is not importable here: nothing to measure.')
    return 0
  print(f'torch {version()}')
  for label, kwargs in (
    ('resnet32x4 b64 fp32', dict(model='resnet32x4', batch=64)),
    ('resnet32x4 b64 x2 views', dict(model='resnet32x4', batch=64, views=2)),
    (
      'resnet32x4 b512 bf16 NHWC',
      dict(model='resnet32x4', batch=512, bf16=True, channels_last=True),
    ),
    (
      'resnet8x4 b64 KD from resnet32x4',
      dict(model='resnet8x4', batch=64, teacher='resnet32x4'),
    ),
  ):
    figures = measure(steps=args.steps, compiled=args.compiled, **kwargs)
    print(f'{label}: {figures["images_per_second"]:,.0f} img/s')
  return 0


if __name__ == '__main__':
  raise SystemExit(main())
