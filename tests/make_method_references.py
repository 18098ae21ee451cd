r"""Regenerates the PyTorch-derived numbers of tests/test_wttm.py,
tests/test_ctkd.py and tests/test_mlkd.py.

The tests never import PyTorch; this script is the only place it is needed,
and it runs the authors' own loss code, read from their checkouts (given on
the command line, never copied into the project):

  --ttm    zkxufo/TTM at fe457b33a71ba27536ec04fe3d32c5b04963522f:
           distiller_zoo/wttm.py's WTTM(l)(y_s, y_t);
  --ctkd   zhengli97/CTKD at 7d5252241259ae70d38a832371fed9697d15fc14:
           models/temp_global.py's Global_T (θ and the gradient reversal),
           distiller_zoo/KD.py's DistillKL and train_student.py's
           CosineDecay (its class alone, read with `ast`: the script's
           other imports need CUDA and data), combined as helper/loops.py
           does: T = t_start + t_end · sigmoid(Global_T(·, ·, decay));
  --ls     sunshangquan/logit-standardization-KD at
           f6e5aa5172bad618e801163c3385322eea673754: CTKD/distiller_zoo/
           KD.py's DistillKL_logit_stand (CTKD+LS), and mdistiller/
           distillers/MLKD.py's MLKD (its module-level functions and the
           class alone, read with `ast`: the file's other imports need a
           display and the package), its forward_train on the fixed
           logits of both views below, with and without `logit_stand`.

On the fixed inputs below (float64; `.cuda()` made the identity, as the
code calls it unconditionally), it prints each loss and its gradient with
respect to the student's logits, and for CTKD the temperature and the
gradient that reaches θ through the reversal, as the literals of
tests/test_wttm_ctkd.py.

How to run (PyTorch 2.13.0, CPU build, gave the committed numbers):

  python3 -m venv /tmp/torchvenv
  /tmp/torchvenv/bin/pip install torch==2.13.0 numpy
  git clone https://github.com/zkxufo/TTM /tmp/TTM
  git clone https://github.com/zhengli97/CTKD /tmp/CTKD
  git clone https://github.com/sunshangquan/logit-standardization-KD /tmp/LS
  # (each checked out at the commit above)
  /tmp/torchvenv/bin/python tests/make_method_references.py \
      --ttm=/tmp/TTM --ctkd=/tmp/CTKD --ls=/tmp/LS
"""

import argparse
import ast
import importlib.util
import math
import pathlib

import numpy as np

# The fixed inputs, shared with tests/test_wttm_ctkd.py: 4 examples, 5
# classes.
B, C = 4, 5
WTTM_POWERS = (0.1, 0.5)
# MLKD's strong view, its labels and (T, α, γ, logit_stand) cases: the
# recipe, and MLKD+LS's.
MLKD_CASES = ((4.0, 0.9, 0.1, False), (2.0, 9.0, 0.1, True))
MLKD_LABELS = (0, 3, 1, 4)


def strong_student_logits() -> np.ndarray:
  return 2.0 * np.cos(0.41 * np.arange(B * C) + 1.0).reshape(B, C)


def strong_teacher_logits() -> np.ndarray:
  return 3.5 * np.sin(0.29 * np.arange(B * C) + 0.2).reshape(B, C)


# (θ, epoch): the initial θ at epoch 3 of the curriculum, another θ after it.
CTKD_CASES = ((1.0, 3), (-0.4, 12))
T_START, T_END = 1.0, 20.0  # train_student.py's --t_start, --t_end


def student_logits() -> np.ndarray:
  return 3.0 * np.sin(0.37 * np.arange(B * C)).reshape(B, C)


def teacher_logits() -> np.ndarray:
  return 4.0 * np.cos(0.23 * np.arange(B * C) + 0.5).reshape(B, C)


def _module(path: pathlib.Path, name: str):
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _class_from(path: pathlib.Path, name: str, namespace: dict):
  """Class `name` of the file at `path`, executed alone in `namespace`."""
  tree = ast.parse(path.read_text())
  (node,) = [n for n in tree.body if getattr(n, 'name', None) == name]
  exec(compile(ast.Module([node], []), str(path), 'exec'), namespace)  # noqa: S102
  return namespace[name]


def _fmt(a) -> str:
  return np.array2string(
    np.asarray(a, np.float64), precision=17, separator=', ', max_line_width=76
  )


def wttm(torch, root: pathlib.Path) -> None:
  zoo = _module(root / 'distiller_zoo' / 'wttm.py', 'wttm_published')
  for power in WTTM_POWERS:
    y_s = torch.tensor(student_logits(), requires_grad=True)
    y_t = torch.tensor(teacher_logits())
    loss = zoo.WTTM(power)(y_s, y_t)
    loss.backward()
    print(f'WTTM l={power}: loss {loss.item()!r}')
    print(f'  grad y_s {_fmt(y_s.grad.numpy())}')


def ctkd(torch, root: pathlib.Path, ls: pathlib.Path | None) -> None:
  temp_global = _module(root / 'models' / 'temp_global.py', 'temp_published')
  kd = _module(root / 'distiller_zoo' / 'KD.py', 'kd_published')
  cosine = _class_from(
    root / 'train_student.py', 'CosineDecay', {'math': math}
  )(max_value=0, min_value=-1, num_loops=10)
  losses = {'CTKD': kd.DistillKL()}
  if ls is not None:
    ls_kd = _module(ls / 'CTKD' / 'distiller_zoo' / 'KD.py', 'ls_published')
    losses['CTKD+LS'] = ls_kd.DistillKL_logit_stand()
  for name, criterion in losses.items():
    for theta, epoch in CTKD_CASES:
      mlp = temp_global.Global_T().double()
      with torch.no_grad():
        mlp.global_T.fill_(theta)
      decay = cosine.get_value(epoch)
      y_s = torch.tensor(student_logits(), requires_grad=True)
      y_t = torch.tensor(teacher_logits())
      temp = T_START + T_END * torch.sigmoid(mlp(y_t, y_s, decay))
      loss = criterion(y_s, y_t, temp)
      loss.backward()
      print(f'{name} θ={theta} epoch={epoch}: decay {decay!r}')
      print(f'  T {temp.item()!r} loss {loss.item()!r}')
      print(f'  grad θ {mlp.global_T.grad.item()!r}')
      print(f'  grad y_s {_fmt(y_s.grad.numpy())}')


def mlkd(torch, ls: pathlib.Path) -> None:
  path = ls / 'mdistiller' / 'distillers' / 'MLKD.py'
  tree = ast.parse(path.read_text())
  keep = [
    n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))
  ]

  class Distiller:  # the _base class: it only holds the two networks
    def __init__(self, student, teacher):
      self.student, self.teacher = student, teacher

  namespace = {
    'torch': torch,
    'nn': torch.nn,
    'F': torch.nn.functional,
    'np': np,
    'Distiller': Distiller,
  }
  exec(compile(ast.Module(keep, []), str(path), 'exec'), namespace)  # noqa: S102
  ns = lambda **k: type('cfg', (), k)  # noqa: E731
  for temp, alpha, gamma, stand in MLKD_CASES:
    s = {
      'weak': torch.tensor(student_logits(), requires_grad=True),
      'strong': torch.tensor(strong_student_logits(), requires_grad=True),
    }
    t = {
      'weak': torch.tensor(teacher_logits()),
      'strong': torch.tensor(strong_teacher_logits()),
    }
    cfg = ns(
      KD=ns(TEMPERATURE=temp, LOSS=ns(CE_WEIGHT=gamma, KD_WEIGHT=alpha)),
      EXPERIMENT=ns(LOGIT_STAND=stand),
    )
    model = namespace['MLKD'](
      lambda view: (s[view], None), lambda view: (t[view], None), cfg
    )
    _, parts = model.forward_train('weak', 'strong', torch.tensor(MLKD_LABELS))
    # The trainer's sum (mdistiller/engine/trainer.py, AugTrainer).
    loss = sum(v.mean() for v in parts.values())
    loss.backward()
    print(f'MLKD T={temp} α={alpha} γ={gamma} logit_stand={stand}:')
    print(f'  loss {loss.item()!r}')
    for name, value in parts.items():
      print(f'  {name} {value.item()!r}')
    print(f'  grad weak {_fmt(s["weak"].grad.numpy())}')
    print(f'  grad strong {_fmt(s["strong"].grad.numpy())}')


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--ttm', type=pathlib.Path)
  parser.add_argument('--ctkd', type=pathlib.Path)
  parser.add_argument('--ls', type=pathlib.Path)
  args = parser.parse_args()
  import torch  # pylint: disable=g-import-not-at-top

  # The published code moves the temperature to the GPU unconditionally.
  torch.Tensor.cuda = lambda self, *a, **k: self
  torch.set_printoptions(precision=17)
  if args.ttm:
    wttm(torch, args.ttm)
  if args.ctkd:
    ctkd(torch, args.ctkd, args.ls)
  if args.ls:
    mlkd(torch, args.ls)


if __name__ == '__main__':
  main()
