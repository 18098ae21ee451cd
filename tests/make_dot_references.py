r"""Regenerates the PyTorch-derived numbers of tests/test_dot.py.

The tests never import PyTorch; this script is the only place it is needed,
and it runs the published optimiser, read from a checkout given on the
command line (never copied into the project):

  --mdistiller  megvii-research/mdistiller at
                a08d46f10d6102bd6e3f258ca5ac880b020ea259:
                mdistiller/engine/dot.py's DistillationOrientedTrainer,
                driven as mdistiller/engine/trainer.py's DOT.train_iter
                does: the distillation gradients, step_kd(); the task
                gradients, step().

On the fixed inputs below (float32), with the momenta of trainer.py's DOT
(momentum ∓ DELTA), it prints each parameter after every step and both
momentum buffers after the last, as the literals of tests/test_dot.py. Two
parameters: `w`, which both gradients reach (a student's weight), and `d`,
which only the distillation gradient reaches (a method's own parameter).

How to run (PyTorch 2.13.0, CPU build, gave the committed numbers):

  python3 -m venv /tmp/torchvenv
  /tmp/torchvenv/bin/pip install torch==2.13.0 numpy
  git clone https://github.com/megvii-research/mdistiller /tmp/mdistiller
  # (checked out at the commit above)
  /tmp/torchvenv/bin/python tests/make_dot_references.py \
      --mdistiller=/tmp/mdistiller
"""

import argparse
import importlib.util
import pathlib

import numpy as np

MOMENTUM, DELTA, WEIGHT_DECAY = 0.9, 0.075, 5e-4
# The learning rate of each step: a decay before the last.
LEARNING_RATES = (0.1, 0.1, 0.01)


def initial() -> dict[str, np.ndarray]:
  """{'w': [4], 'd': [2]} float32, the parameters before the first step."""
  return {
    'w': np.sin(1.0 + np.arange(4)).astype(np.float32),
    'd': np.cos(0.5 + np.arange(2)).astype(np.float32),
  }


def gradients(step: int) -> tuple[dict, dict]:
  """(task {'w'}, distillation {'w', 'd'}) gradients of `step`, float32."""
  t = float(step)
  task = {'w': (2.0 * np.cos(0.7 * np.arange(4) + t)).astype(np.float32)}
  kd = {
    'w': (0.5 * np.sin(1.3 * np.arange(4) - t)).astype(np.float32),
    'd': (np.cos(0.9 * np.arange(2) + 2 * t)).astype(np.float32),
  }
  return task, kd


def _fmt(a) -> str:
  return np.array2string(
    np.asarray(a, np.float64), precision=9, separator=', ', max_line_width=76
  )


def run(torch, root: pathlib.Path) -> None:
  path = root / 'mdistiller' / 'engine' / 'dot.py'
  spec = importlib.util.spec_from_file_location('dot_published', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  params = {k: torch.tensor(v) for k, v in initial().items()}
  optimizer = module.DistillationOrientedTrainer(
    list(params.values()),
    lr=LEARNING_RATES[0],
    momentum=MOMENTUM - DELTA,
    momentum_kd=MOMENTUM + DELTA,
    weight_decay=WEIGHT_DECAY,
  )
  for step, lr in enumerate(LEARNING_RATES):
    optimizer.param_groups[0]['lr'] = lr
    task, kd = gradients(step)
    optimizer.zero_grad(set_to_none=True)
    for name, g in kd.items():
      params[name].grad = torch.tensor(g)
    optimizer.step_kd()
    optimizer.zero_grad(set_to_none=True)
    for name, g in task.items():
      params[name].grad = torch.tensor(g)
    optimizer.step()
    for name, p in params.items():
      print(f'step {step} {name} {_fmt(p.numpy())}')
  for name, p in params.items():
    state = optimizer.state[p]
    for buffer in ('momentum_buffer', 'momentum_kd_buffer'):
      if buffer in state:
        print(f'{name} {buffer} {_fmt(state[buffer].numpy())}')


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--mdistiller', type=pathlib.Path, required=True)
  args = parser.parse_args()
  import torch  # pylint: disable=g-import-not-at-top

  run(torch, args.mdistiller)


if __name__ == '__main__':
  main()
