r"""Soak test of resume (not part of CI): kill a run at random moments, with
SIGKILL and SIGTERM, restart it each time, and compare its final state and
metrics with an uninterrupted run's, bit for bit.

  python benchmarks/soak_resume.py --workdir=/tmp/soak --kills=20

The run is the smoke teacher (objective and cache on) for a few epochs,
sized so that a restart makes progress; the moments are uniform over the
uninterrupted run's wall time, so they land in start-up, compilation,
mid-epoch steps, evaluation and checkpoint writes alike. All runs share a
persistent XLA compilation cache (the same executables, so the same
numbers), which keeps a restart's start-up short enough for a run to make
progress between kills. Prints one line per kill and a verdict; exits 1 if
anything differs.
"""

import argparse
import json
import os
import pathlib
import random
import shutil
import signal
import subprocess
import sys
import time

from absl import logging
import jax
import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from icckd_jax.training import checkpoint  # pylint: disable=g-import-not-at-top
from icckd_jax.training import metric_writer  # pylint: disable=g-import-not-at-top
from icckd_jax import parallel  # pylint: disable=g-import-not-at-top

TIMING_KEYS = {'step_time', 'images_per_second', 'epoch_time'}
RUN_ARGS = (
  '--config=configs/teacher.py:smoke',
  '--config.num_epochs=6',
  '--config.log_every_steps=2',
  '--config.checkpoint_every_epochs=1',
)


def _command(workdir: pathlib.Path) -> list[str]:
  return [
    sys.executable,
    str(ROOT / 'launch.py'),
    *RUN_ARGS,
    f'--workdir={workdir}',
  ]


def _env(base: pathlib.Path) -> dict[str, str]:
  return dict(
    os.environ,
    JAX_PLATFORMS='cpu',
    JAX_COMPILATION_CACHE_DIR=str(base / 'xla_cache'),
    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
    JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES='0',
  )


def _final(workdir: pathlib.Path):
  ckpts = checkpoint.Checkpoints(str(workdir), read_only=True)
  state, meta = ckpts.restore(None, mesh=parallel.make_mesh(1))
  ckpts.close()
  strip = lambda rs: [
    {k: v for k, v in r.items() if k not in TIMING_KEYS} for r in rs
  ]
  return (
    jax.device_get(state),
    meta,
    strip(metric_writer.read_records(str(workdir))),
  )


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--workdir', required=True)
  parser.add_argument('--kills', type=int, default=20)
  parser.add_argument('--seed', type=int, default=0)
  args = parser.parse_args()
  logging.set_verbosity(logging.ERROR)  # Orbax's notes on read-only reads.
  rng = random.Random(args.seed)
  base = pathlib.Path(args.workdir)
  shutil.rmtree(base, ignore_errors=True)
  straight, soaked = base / 'straight', base / 'soaked'

  env = _env(base)
  start = time.perf_counter()
  subprocess.run(
    _command(straight),
    cwd=ROOT,
    check=True,
    env=env,
    stdout=subprocess.DEVNULL,
    stderr=subprocess.DEVNULL,
  )
  print(f'uninterrupted run, compiling: {time.perf_counter() - start:.1f} s')
  shutil.rmtree(straight)
  start = time.perf_counter()
  subprocess.run(
    _command(straight),
    cwd=ROOT,
    check=True,
    env=env,
    stdout=subprocess.DEVNULL,
    stderr=subprocess.DEVNULL,
  )
  full = time.perf_counter() - start
  print(f'uninterrupted run, compilation cached: {full:.1f} s')

  def compare() -> bool:
    state_a, meta_a, records_a = _final(straight)
    state_b, meta_b, records_b = _final(soaked)
    same_state = all(
      jax.tree.leaves(jax.tree.map(np.array_equal, state_a, state_b))
    )
    checks = {
      'state (params, BatchNorm, optimiser, cache)': same_state,
      'checkpoint meta': meta_a == meta_b,
      'metrics.jsonl (timings aside)': records_a == records_b,
    }
    for what, same in checks.items():
      print(f'  {what}: {"identical" if same else "DIFFERENT"}')
    return all(checks.values())

  # A round is one interrupted run taken to its end and compared; the kills
  # of every round count.
  kills, rounds, verdicts = 0, 1, []
  while kills < args.kills:
    sig = rng.choice((signal.SIGKILL, signal.SIGTERM))
    delay = rng.uniform(0, full)
    proc = subprocess.Popen(
      _command(soaked),
      cwd=ROOT,
      env=env,
      stdout=subprocess.DEVNULL,
      stderr=subprocess.PIPE,
      text=True,
    )
    try:
      proc.wait(timeout=delay)
    except subprocess.TimeoutExpired:
      proc.send_signal(sig)
    _, stderr = proc.communicate()
    if proc.returncode == 0:
      print(f'round {rounds} finished before a kill at {delay:.1f} s:')
      verdicts.append(compare())
      shutil.rmtree(soaked)
      rounds += 1
      continue
    if proc.returncode not in (
      -signal.SIGKILL,
      128 + signal.SIGTERM,
      -signal.SIGTERM,
    ):
      print(f'run failed with exit code {proc.returncode}:\n{stderr[-3000:]}')
      return 1
    kills += 1
    ckpts = checkpoint.Checkpoints(str(soaked), read_only=True)
    saved = (ckpts.latest_steps('last'), ckpts.latest_steps('preempted'))
    ckpts.close()
    print(
      f'kill {kills:2d} (round {rounds}): {signal.Signals(sig).name} after '
      f'{delay:5.1f} s, exit {proc.returncode}; epoch checkpoints '
      f'{saved[0]}, preempted at step {saved[1]}'
    )
  subprocess.run(
    _command(soaked),
    cwd=ROOT,
    check=True,
    env=env,
    stdout=subprocess.DEVNULL,
    stderr=subprocess.DEVNULL,
  )
  print(f'round {rounds} finished after its last kill:')
  verdicts.append(compare())
  print(
    json.dumps({'kills': kills, 'rounds': rounds, 'identical': all(verdicts)})
  )
  return 0 if all(verdicts) else 1


if __name__ == '__main__':
  os.environ.setdefault('JAX_PLATFORMS', 'cpu')
  sys.exit(main())
