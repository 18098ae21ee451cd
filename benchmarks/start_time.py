r"""Time to the first train step and whole wall time of one run, cold and warm.

Runs the same short `launch.py` teacher run twice, each in a fresh workdir
and a fresh process, sharing one persistent compilation cache that starts
empty (in a temporary folder, never the user's): the first run compiles
every step and fills the cache, the second finds them there.

  python benchmarks/start_time.py [--config=configs/teacher.py:smoke] \
      [--epochs=1] [-- more launch.py flags]

Prints, for each run, the seconds from its start to its first logged train
step and to its exit, and the warm/cold ratio of each.
"""

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _first_train_record(metrics: pathlib.Path) -> bool:
  if not metrics.exists():
    return False
  for line in metrics.read_text().splitlines():
    try:
      if json.loads(line).get('kind') == 'train':
        return True
    except ValueError:
      continue
  return False


def timed_run(command: list[str], workdir: pathlib.Path, env) -> dict:
  """(seconds to the first train record, seconds to exit) of one run."""
  start = time.perf_counter()
  proc = subprocess.Popen(
    [*command, f'--workdir={workdir}'],
    cwd=ROOT,
    env=env,
    stdout=subprocess.DEVNULL,
    stderr=subprocess.PIPE,
    text=True,
  )
  first = None
  while proc.poll() is None:
    if first is None and _first_train_record(workdir / 'metrics.jsonl'):
      first = time.perf_counter() - start
    time.sleep(0.02)
  total = time.perf_counter() - start
  stderr = proc.stderr.read()
  if proc.returncode:
    raise SystemExit(f'the run failed ({proc.returncode}):\n{stderr[-3000:]}')
  if first is None:  # The run ended between two polls.
    first = total
  return {'first_step_s': first, 'wall_s': total}


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--config', default='configs/teacher.py:smoke')
  parser.add_argument('--epochs', type=int, default=1)
  args, extra = parser.parse_known_args()
  with tempfile.TemporaryDirectory() as tmp:
    base = pathlib.Path(tmp)
    env = {
      k: v for k, v in os.environ.items() if k != 'JAX_COMPILATION_CACHE_DIR'
    }
    command = [
      sys.executable,
      str(ROOT / 'launch.py'),
      f'--config={args.config}',
      f'--config.num_epochs={args.epochs}',
      '--config.log_every_steps=1',
      f'--config.compilation_cache={base / "xla"}',
      *[a for a in extra if a != '--'],
    ]
    cold = timed_run(command, base / 'cold', env)
    entries = len(list((base / 'xla').iterdir()))
    warm = timed_run(command, base / 'warm', env)
  print(
    f'{args.config}, {args.epochs} epoch(s), cache entries after the '
    f'cold run: {entries}'
  )
  print(f'{"":6}{"first step (s)":>16}{"wall (s)":>10}')
  for name, run in (('cold', cold), ('warm', warm)):
    print(f'{name:6}{run["first_step_s"]:16.1f}{run["wall_s"]:10.1f}')
  print(
    f'warm/cold: first step {warm["first_step_s"] / cold["first_step_s"]:.2f}, '
    f'wall {warm["wall_s"] / cold["wall_s"]:.2f}'
  )
  return 0


if __name__ == '__main__':
  sys.exit(main())
