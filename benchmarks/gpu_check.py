r"""The one command to run when a GPU is available: docs/gpu.md.

  python benchmarks/gpu_check.py --out=DIR --cifar10=path/to/cifar10.tar.gz \
      [--budget_s=720] [--study_config=configs/study.py:capacity_transfer]
  python benchmarks/gpu_check.py --smoke --out=DIR   # every part, CPU, tiny

`--parts=a` runs part a (with b) only; a `--budget_s` that is not a positive
finite number, or a DIR that holds an earlier report, is refused (exit 2).

Parts, in the order a budget gives the most (each timed; a part, or a
variant within one, that would start after `--budget_s` is skipped and
says so):

  a  step throughput (images/s) of the resnet32x4 teacher, cross-entropy and
     intra-class with the feature cache, at batch 64 in float32 and bfloat16
     and at batch 512 in bfloat16, and of the resnet8x4 KD student; each
     beside the same step in PyTorch, eager and under `torch.compile`
     (benchmarks/torch_baseline.py), where PyTorch is importable (a compiled
     step that cannot be built says "not run" and why): compare the ratios,
     not the absolute times
  b  compiled memory of each step (XLA's analysis) and the device's bytes
     in use after it; the process's peak at the end
  c  the input pipeline's images/s at 224x224 beside the step's at that size:
     which of the two bounds an ImageNet-sized epoch
  d  the study (`--study_config`, falling back to configs/study.py:gpu where
     that config argument does not exist) on CIFAR-10 from `--cifar10`, in a
     subprocess, as far as the budget goes: what finished is reported, and
     rerunning the same command resumes the rest

Writes DIR/gpu_check.md and DIR/gpu_check.json: the device's name, the jax
and jaxlib versions, and every figure.
"""

import argparse
import importlib.util
import json
import pathlib
import platform
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import jax  # pylint: disable=g-import-not-at-top
import jaxlib
import numpy as np

from configs import student as student_config
from configs import teacher as teacher_config
from icckd_jax import models
from icckd_jax import parallel
from icckd_jax.data import datasets
from icckd_jax.errors import one_line
from icckd_jax.input_pipeline import resident
from icckd_jax.runs import memory as memory_lib
from icckd_jax.stages import student
from icckd_jax.stages import teacher
from icckd_jax.runs import spec
import budget as budget_lib  # beside this file
import torch_baseline

# (kind, model, batch, dtype) of part (a), most informative first.
FULL_STEPS = (
  ('ce', 'resnet32x4', 64, 'float32'),
  ('icc', 'resnet32x4', 64, 'float32'),
  ('kd', 'resnet8x4', 64, 'float32'),
  ('ce', 'resnet32x4', 64, 'bfloat16'),
  ('icc', 'resnet32x4', 64, 'bfloat16'),
  ('ce', 'resnet32x4', 512, 'bfloat16'),
  ('icc', 'resnet32x4', 512, 'bfloat16'),
)
TEACHER_OF_STUDENT = 'resnet32x4'
REPORT_MD, REPORT_JSON = 'gpu_check.md', 'gpu_check.json'
KINDS = {
  'ce': 'teacher CE',
  'icc': 'teacher intra-class (feature cache)',
  'kd': 'student KD',
}


def _smoke_steps():
  """FULL_STEPS at tiny sizes: resnet8 models, batches of 8 and 16."""
  return tuple(
    (kind, 'resnet8', 8 if batch == 64 else 16, dtype)
    for kind, _, batch, dtype in FULL_STEPS
  )


def _stage_config(kind, model, batch, dtype, size, num_classes):
  """The teacher's (ce, icc) or the student's (kd) config on a synthetic
  set of `size`² images."""
  config = (
    student_config.get_config() if kind == 'kd' else teacher_config.get_config()
  )
  config.model = model
  config.batch_size = batch
  config.dtype = dtype
  config.dataset.name = 'synthetic'
  config.dataset.num_classes = num_classes
  config.dataset.num_train = 4 * batch
  config.dataset.num_test = 100
  config.dataset.image_size = size
  config.crop_padding = 4 * size // 32
  if kind == 'ce':
    config.icc.lam = 0.0
  elif kind == 'icc':
    config.cache.store = 'features'
  else:
    config.distill.method = 'kd'
  return config


def _build(kind, config, dataset, mesh, teacher_model):
  if kind != 'kd':
    return teacher.build_teacher(spec.from_config(config), dataset, mesh)
  net = models.create_model(teacher_model, dataset.num_classes)
  size = dataset.train_images.shape[1]
  variables = jax.jit(
    lambda: net.init(
      jax.random.key(1), np.zeros((1, size, size, 3), np.float32), train=False
    ),
    out_shardings=parallel.replicated(mesh),
  )()
  tconf = teacher_config.get_config()
  tconf.model = teacher_model
  return student.build_student(
    spec.from_config(config), dataset, mesh, tconf, variables
  )


def time_step(kind, model, batch, dtype, size, steps, teacher_model, classes):
  """Compile time, images/s over `steps` timed steps (dispatched, then
  synchronised once), compiled memory and bytes in use of one step."""
  mesh = parallel.make_mesh()
  config = _stage_config(kind, model, batch, dtype, size, classes)
  dataset = datasets.load(spec.data_request(config.dataset))
  source = resident.ResidentSource.of(dataset)
  setup = _build(kind, config, dataset, mesh, teacher_model)
  state = setup.create_state(mesh)
  batches = setup.batches(spec.from_config(config).recipe, source, mesh, 0)
  first = next(batches)
  start = time.perf_counter()
  compiled = setup.train_step.lower(state, first, setup.step_args).compile()
  compile_s = time.perf_counter() - start
  state, metrics = compiled(state, first, setup.step_args)
  jax.block_until_ready(metrics)
  inputs = [next(batches) for _ in range(min(steps, 4))]
  start = time.perf_counter()
  for i in range(steps):
    state, metrics = compiled(state, inputs[i % len(inputs)], setup.step_args)
  jax.block_until_ready((state, metrics))
  seconds = time.perf_counter() - start
  memory = memory_lib.compiled_memory(compiled)
  return {
    'compile_s': compile_s,
    'images_per_second': steps * batch / seconds,
    'ms_per_step': 1000 * seconds / steps,
    'compiled_mib': memory.get('total_bytes', 0) / 2**20,
    'temp_mib': memory.get('temp_bytes', 0) / 2**20,
    'in_use_mib': _mib(memory_lib.device_bytes_in_use()),
  }


def time_pipeline(batch, size, steps, classes):
  """Images/s of the training input pipeline alone (augmented batches on the
  device, as the train step receives them)."""
  mesh = parallel.make_mesh()
  config = _stage_config('ce', 'resnet8', batch, 'float32', size, classes)
  dataset = datasets.load(spec.data_request(config.dataset))
  source = resident.ResidentSource.of(dataset)
  setup = teacher.build_teacher(spec.from_config(config), dataset, mesh)
  batches = setup.batches(spec.from_config(config).recipe, source, mesh, 0)
  jax.block_until_ready(next(batches))  # compiles the augmentation
  start = time.perf_counter()
  for _ in range(steps):
    last = next(batches)
  jax.block_until_ready(last)
  return {'images_per_second': steps * batch / (time.perf_counter() - start)}


def _mib(value):
  return None if value is None else value / 2**20


def _torch_figures(kind, model, batch, dtype, args, compiled):
  """The same step in PyTorch, eager or under `torch.compile`; a compiled
  step that cannot be built here (no compiler toolchain, an unsupported
  backend) is 'not run', with why, and the table goes on."""
  try:
    return torch_baseline.measure(
      model,
      batch,
      views=2 if kind == 'icc' else 1,
      bf16=dtype == 'bfloat16',
      channels_last=dtype == 'bfloat16',
      teacher=args.teacher if kind == 'kd' else None,
      steps=args.steps,
      compiled=compiled,
    )
  except Exception as e:  # pylint: disable=broad-except
    if not compiled:
      raise
    return {'status': f'not run: {type(e).__name__}: {one_line(e)}'}


def part_steps(variants, args, budget, report):
  """Parts (a) and (b): each JAX step, and beside it the same step in
  PyTorch eager and under `torch.compile` where PyTorch is importable."""
  rows = []
  torch_ok = torch_baseline.available()
  for kind, model, batch, dtype in variants:
    name = f'{KINDS[kind]} {model} b{batch} {dtype}'
    if budget.left() <= 0:
      rows.append({'step': name, 'status': 'skipped: budget spent'})
      continue
    row = {'step': name, 'model': model, 'batch': batch, 'dtype': dtype}
    row.update(
      time_step(
        kind, model, batch, dtype, args.size, args.steps, args.teacher, 100
      )
    )
    if torch_ok:
      for key, compiled in (('torch', False), ('torch_compile', True)):
        row[key] = _torch_figures(kind, model, batch, dtype, args, compiled)
        if 'images_per_second' in row[key]:
          row[f'jax_over_{key}'] = (
            row['images_per_second'] / row[key]['images_per_second']
          )
    else:
      row['torch'] = row['torch_compile'] = {
        'status': 'not run: PyTorch not importable'
      }
    row['status'] = 'done'
    rows.append(row)
    report(rows)
  return {
    'torch': torch_baseline.version() if torch_ok else 'not importable',
    'rows': rows,
    'peak_mib': _mib(memory_lib.peak_device_memory()),
  }


def part_pipeline(args, budget):
  """Part (c): the input pipeline against the step, both at --pipeline_size."""
  if budget.left() <= 0:
    return {'status': 'skipped: budget spent'}
  size, batch = args.pipeline_size, args.pipeline_batch
  result = {
    'size': size,
    'batch': batch,
    'pipeline': time_pipeline(batch, size, args.steps, 1000),
  }
  if budget.left() > 0:
    result['step'] = time_step(
      'ce', args.pipeline_model, batch, 'bfloat16', size, args.steps, None, 1000
    )
    result['step']['model'] = args.pipeline_model
    result['bound_by'] = (
      'input pipeline'
      if result['pipeline']['images_per_second']
      < result['step']['images_per_second']
      else 'train step'
    )
  result['status'] = 'done'
  return result


def _study_config(requested: str) -> str:
  """`requested` if its file accepts its argument, else :gpu of the same
  file (an older tree without that config argument)."""
  path, _, arg = requested.partition(':')
  spec = importlib.util.spec_from_file_location('study_config', ROOT / path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  try:
    module.get_config(arg or None)
    return requested
  except ValueError:
    return f'{path}:gpu'


def _finished_runs(workdir: pathlib.Path) -> list[dict]:
  """The study's finished (setting, seed) results: every result.json."""
  found = []
  for path in sorted(workdir.rglob('result.json')):
    # result.json holds {'row': the run's figures, 'epochs': ...}.
    row = json.loads(path.read_text()).get('row', {})
    found.append(
      {
        'run': str(path.parent.relative_to(workdir)),
        **{k: v for k, v in row.items() if k.endswith('top1_last')},
      }
    )
  return found


def part_study(args, budget, out: pathlib.Path):
  """Part (d): the study in a subprocess, stopped (SIGTERM: it saves and
  can resume) when the budget is spent."""
  if budget.left() <= 0:
    return {'status': 'skipped: budget spent'}
  config = _study_config(args.study_config)
  workdir = out / 'study'
  command = [
    sys.executable,
    str(ROOT / 'launch.py'),
    f'--config={config}',
    f'--workdir={workdir}',
  ]
  if args.cifar10:
    command.append(f'--config.base.teacher.dataset.path={args.cifar10}')
  ran = budget_lib.run_until(command, budget.left(), out / 'study.log', ROOT)
  return {
    'status': 'stopped by the budget' if ran['stopped'] else 'done',
    'config': config,
    'command': ' '.join(command),
    'exit_code': ran['exit_code'],
    'seconds': ran['seconds'],
    'finished_runs': _finished_runs(workdir),
  }


def _fmt(value, digits=0):
  if value is None:
    return '-'
  return f'{value:,.{digits}f}'


def markdown(result: dict) -> str:
  """DIR/gpu_check.md: every figure of `result`."""
  lines = [
    '# gpu_check',
    '',
    f'{result["device"]} ({result["platform"]}), jax {result["jax"]}, jaxlib '
    f'{result["jaxlib"]}, PyTorch {result["parts"]["a"]["torch"]}; '
    f'{result["date"]}; budget {result["budget_s"]:.0f} s'
    f'{", smoke (tiny sizes)" if result["smoke"] else ""}.',
    '',
    '## a, b: train steps',
    '',
    '| step | img/s | ms/step | compile s | compiled MiB | temp MiB | '
    'in use MiB | torch img/s | torch peak MiB | jax/torch | '
    'torch.compile img/s | jax/torch.compile |',
    '|---|---|---|---|---|---|---|---|---|---|---|---|',
  ]
  for row in result['parts']['a']['rows']:
    if row['status'] != 'done':
      lines.append(f'| {row["step"]} | {row["status"]} |||||||||||')
      continue
    torch = row.get('torch') or {}
    compiled = row.get('torch_compile') or {}
    lines.append(
      f'| {row["step"]} | {_fmt(row["images_per_second"])} | '
      f'{_fmt(row["ms_per_step"], 2)} | {_fmt(row["compile_s"], 1)} | '
      f'{_fmt(row["compiled_mib"], 1)} | {_fmt(row["temp_mib"], 1)} | '
      f'{_fmt(row["in_use_mib"], 1)} | '
      f'{_fmt(torch.get("images_per_second"))} | '
      f'{_fmt(torch.get("peak_mib"), 1)} | '
      f'{_fmt(row.get("jax_over_torch"), 2)} | '
      f'{_fmt(compiled.get("images_per_second"))} | '
      f'{_fmt(row.get("jax_over_torch_compile"), 2)} |'
    )
  not_run = sorted(
    {
      f'{key}: {row[key]["status"]}'
      for row in result['parts']['a']['rows']
      for key in ('torch', 'torch_compile')
      if 'status' in row.get(key, {})
    }
  )
  lines += [''] + [f'- {line}' for line in not_run]
  lines += [
    '',
    f'Process peak device memory: {_fmt(result["parts"]["a"]["peak_mib"], 1)} '
    'MiB (- where the backend reports none).',
    '',
  ]
  pipeline = result['parts']['c']
  lines += ['## c: input pipeline against the step', '']
  if pipeline['status'] != 'done':
    lines.append(pipeline['status'])
  else:
    step = pipeline.get('step')
    lines.append(
      f'At {pipeline["size"]}x{pipeline["size"]}, batch {pipeline["batch"]}: '
      f'pipeline {_fmt(pipeline["pipeline"]["images_per_second"])} img/s'
      + (
        f', {step["model"]} bf16 CE step {_fmt(step["images_per_second"])} '
        f'img/s: bound by the {pipeline["bound_by"]}.'
        if step
        else '; the step: skipped, budget spent.'
      )
    )
  study = result['parts']['d']
  lines += ['', '## d: the study', '', f'Status: {study["status"]}.']
  if 'config' in study:
    lines += [
      f'`{study["command"]}`, exit code {study["exit_code"]}, '
      f'{study["seconds"]:.0f} s; {len(study["finished_runs"])} run(s) '
      'finished:',
      '',
    ]
    lines += [f'- {json.dumps(run)}' for run in study['finished_runs']]
  lines += ['', '## time per part (s)', '']
  lines += [f'- {k}: {v:.1f}' for k, v in result['seconds'].items()]
  return '\n'.join(lines) + '\n'


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--out', required=True)
  parser.add_argument('--cifar10', default=None, help='CIFAR-10 archive')
  parser.add_argument('--budget_s', default=None, help='default 720, smoke 80')
  parser.add_argument(
    '--parts',
    default='acd',
    help="which parts run: 'a' (with b), 'c', 'd'; the others say not run",
  )
  parser.add_argument(
    '--study_config', default='configs/study.py:capacity_transfer'
  )
  parser.add_argument('--smoke', action='store_true')
  args = parser.parse_args()
  out = pathlib.Path(args.out)
  try:
    if args.budget_s is not None:
      args.budget_s = budget_lib.seconds(args.budget_s)
    if out.exists() and not out.is_dir():
      raise budget_lib.Refused(
        f'--out={out} is a file, not a folder; give an empty output folder'
      )
    budget_lib.refuse_existing([out / REPORT_MD, out / REPORT_JSON])
  except budget_lib.Refused as e:
    return budget_lib.exit_refused(e)
  out.mkdir(parents=True, exist_ok=True)
  if args.smoke:
    variants = _smoke_steps()
    args.size, args.steps, args.teacher = 16, 3, 'resnet8'
    args.pipeline_size, args.pipeline_batch = 32, 8
    args.pipeline_model = 'resnet8'
    args.study_config = 'configs/study.py:smoke'
  else:
    variants = FULL_STEPS
    args.size, args.steps, args.teacher = 32, 50, TEACHER_OF_STUDENT
    args.pipeline_size, args.pipeline_batch = 224, 64
    args.pipeline_model = 'resnet32x4'
  if args.budget_s is None:
    args.budget_s = 80.0 if args.smoke else 720.0
  budget = budget_lib.Budget(args.budget_s)
  device = jax.devices()[0]
  result = {
    'device': device.device_kind,
    'platform': device.platform,
    'device_count': jax.device_count(),
    'host': platform.node(),
    'jax': jax.__version__,
    'jaxlib': jaxlib.__version__,
    'date': time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime()),
    'budget_s': args.budget_s,
    'smoke': args.smoke,
    'seconds': {},
    'parts': {
      'a': {'torch': '-', 'rows': [], 'peak_mib': None},
      'c': {'status': 'not run'},
      'd': {'status': 'not run'},
    },
  }

  def write():
    (out / REPORT_JSON).write_text(json.dumps(result, indent=2))
    (out / REPORT_MD).write_text(markdown(result))

  def partial(rows):
    result['parts']['a']['rows'] = rows
    write()

  for part, run in (
    ('a', lambda: part_steps(variants, args, budget, partial)),
    ('c', lambda: part_pipeline(args, budget)),
    ('d', lambda: part_study(args, budget, out)),
  ):
    if part not in args.parts:
      continue
    start = time.perf_counter()
    result['parts'][part] = run()
    result['seconds'][part] = time.perf_counter() - start
    write()
    print(f'part {part}: {result["seconds"][part]:.1f} s', flush=True)
  print((out / REPORT_MD).read_text())
  return 0


if __name__ == '__main__':
  sys.exit(main())
