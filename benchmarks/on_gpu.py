r"""The Python half of benchmarks/on_gpu.sh: one part of the capacity study on
a GPU machine, within its wall-time budget, its results packed for $OUT.

  python benchmarks/on_gpu.py run --part=1|2 --out=DIR [--smoke]
      [--budget_s=N] [--records=FILE] [--cifar10=PATH]
  python benchmarks/on_gpu.py check_out DIR   # the $OUT contract

Part 1: stage 1 (configs/study.py:capacity_transfer, smoke
:capacity_transfer_smoke), then, with what the budget has left, the
throughput table (benchmarks/gpu_check.py part a, with PyTorch eager and
`torch.compile` beside each step). Part 2: stage 2 (:capacity, smoke
:capacity_smoke) with --config.transfer_from= stage 1's workdir. A study
past its budget is stopped with SIGTERM (it saves); the report says which
whole seeds are done.

DIR/part<N>/ receives report.md, records.tar.gz (every finished run's
result.json and its stages' summary.json, config.json and metrics.jsonl;
stage 1's and, for part 2, stage 2's; no checkpoints), log.txt (the end of
each command's output) and, for part 1, gpu_check.md. `--records=FILE`
unpacks such an archive first: its finished runs are skipped (a run with
its result.json is done without its checkpoints), so a study cut short
finishes on the next machine.

The machine's own state (the wheels installed, the studies' workdirs)
lives in .gpu_run/ of the repository (or $ICCKD_GPU_STATE), ignored by git:
part 2 finds part 1's workdir there when both run on one machine.
"""

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tarfile
import time
import zipfile

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import budget as budget_lib  # beside this file, standard library only

WHEELS = ROOT / '.gpu' / 'wheels'
DATA = ROOT / '.gpu' / 'data' / 'cifar10-jpeg.tar.gz'
# The machine's own state; the rehearsal keeps its own.
STATE = pathlib.Path(os.environ.get('ICCKD_GPU_STATE', ROOT / '.gpu_run'))
STAGES = {1: 'stage1', 2: 'stage2'}
CONFIGS = {
  (1, False): 'configs/study.py:capacity_transfer',
  (1, True): 'configs/study.py:capacity_transfer_smoke',
  (2, False): 'configs/study.py:capacity',
  (2, True): 'configs/study.py:capacity_smoke',
}
# Wall seconds of each part, compilation included: both fit one GPU
# machine's 15 minutes with its start-up.
BUDGETS = {1: 240.0, 2: 480.0}
# Seconds kept back from the study for packing and the report.
RESERVE_S = 15.0
# Part 1's throughput table starts only with this much left (a JAX compile
# and two PyTorch runs of one step).
CHECK_MIN_S = {False: 60.0, True: 20.0}
OUT_FILES, OUT_FILE_BYTES, OUT_DEPTH = 8, 16 * 2**20, 2
REPORT, RECORDS, LOG, CHECK = (
  'report.md',
  'records.tar.gz',
  'log.txt',
  'gpu_check.md',
)
# What a stage's directory keeps in the records: no checkpoints.
STAGE_RECORDS = ('summary.json', 'config.json', 'metrics.jsonl')
# A sweep workdir's report files, beside its runs.
SWEEP_FILES = (
  'sweep.json',
  'summary.md',
  'results.csv',
  'epochs.csv',
  'accuracy.png',
  'transfer.png',
  'curves.png',
)
RESULT = 'result.json'
LOG_TAIL = 400  # lines of each command's output kept in log.txt


def install_wheels(site: pathlib.Path) -> list[str]:
  """Installs .gpu/wheels into `site` offline (pip, else unpacking the
  wheels: those carried are pure Python); returns their file names."""
  wheels = sorted(WHEELS.glob('*.whl'))
  if not wheels:
    raise budget_lib.Refused(
      f'{WHEELS} holds no wheels; run `bash benchmarks/on_gpu.sh prepare '
      '--cifar10=PATH` on a machine with a network first'
    )
  site.mkdir(parents=True, exist_ok=True)
  pip = subprocess.run(
    [sys.executable, '-m', 'pip', 'install', '-q', '--no-index', '--no-deps']
    + ['--upgrade', '--target', str(site), *map(str, wheels)],
    capture_output=True,
    text=True,
    check=False,
  )
  if pip.returncode != 0:
    for wheel in wheels:
      with zipfile.ZipFile(wheel) as z:
        z.extractall(site)
  return [w.name for w in wheels]


def stage_dir(part: int) -> pathlib.Path:
  return STATE / STAGES[part]


def _run_dirs(workdir: pathlib.Path):
  """The run directories (WORKDIR/<setting>/seed_<n>) holding a result."""
  return sorted(p.parent for p in workdir.glob(f'*/seed_*/{RESULT}'))


def pack_records(workdirs: dict[str, pathlib.Path], path: pathlib.Path):
  """One archive of the finished runs of `workdirs` ({name in the archive:
  workdir}): each run's result.json, its stages' records (the links to the
  store followed, so that a run carries its own), the sweep's files; no
  checkpoints. Returns how many runs it holds."""
  runs = 0
  with tarfile.open(path, 'w:gz') as tar:
    for name, workdir in workdirs.items():
      for file in SWEEP_FILES:
        if (workdir / file).is_file():
          tar.add(workdir / file, f'{name}/{file}')
      for run in _run_dirs(workdir):
        inside = f'{name}/{run.relative_to(workdir)}'
        tar.add(run / RESULT, f'{inside}/{RESULT}')
        for stage in ('teacher', 'student'):
          for file in STAGE_RECORDS:
            source = run / stage / file
            if source.is_file():
              tar.add(source.resolve(), f'{inside}/{stage}/{file}')
        runs += 1
  return runs


def unpack_records(path: pathlib.Path, state: pathlib.Path) -> int:
  """Unpacks an archive of `pack_records` into `state`: the runs finished
  there and not here (a run finished here is kept as it is; an unfinished
  one here loses only its links to the store, which the sweep makes again
  if it must), and the sweep files missing here. Returns the runs added."""
  added = 0
  with tarfile.open(path, 'r:gz') as tar:
    members = tar.getmembers()
    runs = {
      str(pathlib.PurePosixPath(m.name).parent)
      for m in members
      if m.name.endswith(f'/{RESULT}')
    }
    for run in sorted(runs):
      target = state / run
      if (target / RESULT).exists():
        continue
      for stage in ('teacher', 'student'):
        if (target / stage).is_symlink():
          (target / stage).unlink()
      inside = [m for m in members if m.name.startswith(f'{run}/')]
      tar.extractall(state, members=inside, filter='data')
      added += 1
    loose = [
      m
      for m in members
      if m.name.count('/') == 1 and not (state / m.name).exists()
    ]
    tar.extractall(state, members=loose, filter='data')
  return added


def whole_seeds(workdir: pathlib.Path) -> tuple[list, list]:
  """(seeds every setting of the sweep finished, seeds it planned)."""
  # Imported here: it needs ml_collections, installed by install_wheels.
  from icckd_jax.experiments.sweep import settings as settings_lib

  path = workdir / 'sweep.json'
  if not path.exists():
    return [], []
  sweep = json.loads(path.read_text())
  planned = {}
  for text in sweep['settings']:
    name = settings_lib.parse_setting(text).name
    for seed in settings_lib.seeds_of(sweep, name):
      planned.setdefault(seed, []).append(name)
  done = [
    seed
    for seed, names in sorted(planned.items())
    if all((workdir / n / f'seed_{seed}' / RESULT).exists() for n in names)
  ]
  return done, sorted(planned)


def _tail(path: pathlib.Path, lines: int = LOG_TAIL) -> str:
  if not path.exists():
    return ''
  return ''.join(path.read_text(errors='replace').splitlines(True)[-lines:])


def _study(part, args, budget, env, logs) -> dict:
  """Runs the part's study until it finishes or the budget (less the
  reserve) is spent."""
  workdir = stage_dir(part)
  config = CONFIGS[(part, args.smoke)]
  command = [
    sys.executable,
    str(ROOT / 'launch.py'),
    f'--config={config}',
    f'--workdir={workdir}',
  ]
  if not args.smoke:  # the smoke configs train on the synthetic set
    command.append(f'--config.base.teacher.dataset.path={args.cifar10}')
  if part == 2:
    command.append(f'--config.transfer_from={stage_dir(1)}')
  log = STATE / f'part{args.part}_stage{part}.log'
  ran = budget_lib.run_until(command, budget.left() - RESERVE_S, log, ROOT, env)
  logs.append(log)
  done, planned = whole_seeds(workdir)
  return {
    'stage': part,
    'config': config,
    'command': ' '.join(command),
    'status': 'stopped by the budget' if ran['stopped'] else 'ended',
    **ran,
    'whole_seeds_done': done,
    'seeds_planned': planned,
  }


def _throughput(args, budget, env, logs, out: pathlib.Path) -> str:
  """Part 1's table with what its budget has left: gpu_check part a (its
  markdown), or why it was not run."""
  left = budget.left() - RESERVE_S
  if left < CHECK_MIN_S[args.smoke]:
    return f'not run: {left:.0f} s left of the budget'
  check = STATE / 'gpu_check'
  for name in ('gpu_check.md', 'gpu_check.json'):
    (check / name).unlink(missing_ok=True)  # the last machine's, packed then
  # gpu_check skips a step that would start after its own budget; the
  # signal stops a step that overruns.
  command = [
    sys.executable,
    str(ROOT / 'benchmarks' / 'gpu_check.py'),
    '--parts=a',
    f'--out={check}',
    f'--budget_s={max(left - CHECK_MIN_S[args.smoke], 1)}',
  ] + (['--smoke'] if args.smoke else [])
  log = STATE / 'gpu_check.log'
  ran = budget_lib.run_until(command, left, log, ROOT, env)
  logs.append(log)
  if not (check / CHECK).exists():
    return f'not run: gpu_check wrote no table (exit code {ran["exit_code"]})'
  (out / CHECK).write_bytes((check / CHECK).read_bytes())
  return (
    f'{"stopped by the budget" if ran["stopped"] else "done"}: '
    f'{CHECK} beside this report'
  )


def _report(part, args, studies, extra, wheels, seconds) -> str:
  """report.md: what ran, on what, how far; then the part's sweep summary."""
  # Only the device's name: this process must not take the GPU's memory.
  os.environ.setdefault('XLA_PYTHON_CLIENT_PREALLOCATE', 'false')
  import jax  # pylint: disable=g-import-not-at-top

  device = jax.devices()[0]
  lines = [
    f'# on_gpu part {part}{" (smoke)" if args.smoke else ""}',
    '',
    f'Device: {device.device_kind} ({device.platform}); jax {jax.__version__};'
    f' {time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}; budget '
    f'{args.budget_s:.0f} s, wall {seconds:.0f} s; wheels installed: '
    f'{", ".join(wheels)}.',
  ]
  for study in studies:
    done, planned = study['whole_seeds_done'], study['seeds_planned']
    lines += [
      '',
      f'Stage {study["stage"]}: `{study["command"]}`: {study["status"]} after '
      f'{study["seconds"]:.0f} s, exit code {study["exit_code"]}; whole seeds '
      f'done: {len(done)} of {len(planned)} {done}.',
    ]
  lines += [''] + [f'{key}: {value}' for key, value in extra.items()]
  summary = stage_dir(part) / 'summary.md'
  if summary.exists():
    lines += ['', '---', '', summary.read_text()]
  return '\n'.join(lines) + '\n'


def _prepared(args, out: pathlib.Path) -> list[str]:
  """The refusals, before anything is written; then the wheels installed
  and the records unpacked. Returns the wheels' names."""
  args.budget_s = (
    BUDGETS[args.part]
    if args.budget_s is None
    else budget_lib.seconds(args.budget_s)
  )
  budget_lib.refuse_existing(
    [out / name for name in (REPORT, RECORDS, LOG, CHECK)]
  )
  if args.records and not pathlib.Path(args.records).is_file():
    raise budget_lib.Refused(f'--records={args.records} is not a file')
  args.cifar10 = args.cifar10 or str(DATA)
  if not args.smoke and not pathlib.Path(args.cifar10).is_file():
    raise budget_lib.Refused(f'--cifar10={args.cifar10} is not a file')
  if args.part == 2 and not args.records:
    if not (stage_dir(1) / 'sweep.json').exists():
      raise budget_lib.Refused(
        f'stage 1 has not run here ({stage_dir(1)} is empty): run --part=1 '
        "first, or give --records= part 1's records.tar.gz"
      )
  STATE.mkdir(parents=True, exist_ok=True)
  wheels = install_wheels(STATE / 'site')
  if args.records:
    added = unpack_records(pathlib.Path(args.records), STATE)
    print(f'{added} finished run(s) unpacked from {args.records}', flush=True)
  return wheels


def _studies(args, budget, env, logs) -> list[dict]:
  """Part 1: stage 1. Part 2: stage 1 first where it is unfinished (cut
  short on the last machine: stage 2 reads all of it), then stage 2."""
  studies = []
  if args.part == 2:
    done, planned = whole_seeds(stage_dir(1))
    if done != planned or not planned:
      studies.append(_study(1, args, budget, env, logs))
  studies.append(_study(args.part, args, budget, env, logs))
  for study in studies:
    print(
      f'stage {study["stage"]}: {study["status"]}, whole seeds done '
      f'{study["whole_seeds_done"]} of {study["seeds_planned"]}',
      flush=True,
    )
  return studies


def run(args) -> int:
  """`run`: the part, its report and records into OUT/part<N>/."""
  start = time.perf_counter()
  out = pathlib.Path(args.out) / f'part{args.part}'
  try:
    wheels = _prepared(args, out)
  except budget_lib.Refused as e:
    return budget_lib.exit_refused(e)
  # The installation counts against the part's wall time.
  budget = budget_lib.Budget(args.budget_s - (time.perf_counter() - start))
  site = STATE / 'site'
  sys.path.insert(0, str(site))
  env = dict(
    os.environ,
    PYTHONPATH=os.pathsep.join(
      [str(site), str(ROOT), os.environ.get('PYTHONPATH', '')]
    ).rstrip(os.pathsep),
  )
  logs = []
  studies = _studies(args, budget, env, logs)
  out.mkdir(parents=True, exist_ok=True)
  extra = {}
  if args.part == 1:
    extra['Throughput table'] = _throughput(args, budget, env, logs, out)
  workdirs = {STAGES[p]: stage_dir(p) for p in range(1, args.part + 1)}
  extra['Records'] = (
    f'{pack_records(workdirs, out / RECORDS)} finished run(s) in {RECORDS}'
  )
  (out / LOG).write_text(
    ''.join(f'==> {log.name} <==\n{_tail(log)}\n' for log in logs)
  )
  report = _report(
    args.part, args, studies, extra, wheels, time.perf_counter() - start
  )
  (out / REPORT).write_text(report)
  print(report.split('\n---\n')[0], flush=True)
  problems = check_out(pathlib.Path(args.out))
  for problem in problems:
    print(f'$OUT contract: {problem}', file=sys.stderr)
  return 1 if problems else 0


def check_out(out: pathlib.Path, parts=()) -> list[str]:
  """What breaks the $OUT contract (at most OUT_FILES files, each at most
  OUT_FILE_BYTES, at most OUT_DEPTH folders deep; for each of `parts`, its
  report and records present); empty when it holds."""
  files = [p for p in out.rglob('*') if not p.is_dir()]
  problems = []
  if len(files) > OUT_FILES:
    problems.append(f'{len(files)} files, more than {OUT_FILES}')
  for file in files:
    inside = file.relative_to(out)
    if file.is_symlink() or not file.is_file():
      problems.append(f'{inside} is not a plain file')
    elif file.stat().st_size > OUT_FILE_BYTES:
      problems.append(f'{inside} is {file.stat().st_size} bytes, over 16 MiB')
    if len(inside.parts) - 1 > OUT_DEPTH:
      problems.append(f'{inside} is more than {OUT_DEPTH} folders deep')
  for part in parts:
    for name in (REPORT, RECORDS):
      if not (out / f'part{part}' / name).is_file():
        problems.append(f'part{part}/{name} is missing')
  return problems


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  verbs = parser.add_subparsers(dest='verb', required=True)
  run_parser = verbs.add_parser('run')
  run_parser.add_argument('--part', type=int, choices=(1, 2), default=1)
  run_parser.add_argument('--out', default=os.environ.get('OUT'))
  run_parser.add_argument('--smoke', action='store_true')
  run_parser.add_argument('--budget_s', default=None)
  run_parser.add_argument('--records', default=None)
  run_parser.add_argument('--cifar10', default=None)
  check_parser = verbs.add_parser('check_out')
  check_parser.add_argument('out')
  check_parser.add_argument('--parts', default='')
  args = parser.parse_args()
  if args.verb == 'check_out':
    problems = check_out(
      pathlib.Path(args.out), [int(p) for p in args.parts if p.strip()]
    )
    print('\n'.join(problems) or f'{args.out}: the $OUT contract holds')
    return 1 if problems else 0
  if not args.out:
    return budget_lib.exit_refused(
      budget_lib.Refused('--out is not given and $OUT is not set')
    )
  return run(args)


if __name__ == '__main__':
  sys.exit(main())
