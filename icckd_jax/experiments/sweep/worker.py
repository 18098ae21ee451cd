"""One sweep worker: claims the stages of the plan in the shared store, trains
them, and writes each finished run's result and the report.

A worker claims a stage (teacher or student) by holding its workdir's lock
(workdir_lock.py), trains it, and moves on; a stage that another worker
holds is skipped for now and tried again later. A worker that dies drops
its locks with it, and the next worker to claim its stage resumes it from
its checkpoints.
"""

import os
import time

from absl import logging
import ml_collections

from icckd_jax.errors import UserError
from icckd_jax.experiments.sweep import eta
from icckd_jax.experiments.sweep import report
from icckd_jax.experiments.sweep import results
from icckd_jax.experiments.sweep import plan as sweep_plan
from icckd_jax.experiments.sweep import probe as sweep_probe
from icckd_jax.training import estimate
from icckd_jax.runs import workdir_lock
from icckd_jax.stages import preflight
from icckd_jax.training.preemption import StopRequest
from icckd_jax.runs.reuse import Reuse


def _link(run: sweep_plan.Run) -> None:
  """RUN_DIR/teacher and RUN_DIR/student: relative links to the store."""
  os.makedirs(run.run_dir, exist_ok=True)
  for name, target, _, _ in sweep_plan.stages(run):
    link = os.path.join(run.run_dir, name)
    relative = os.path.relpath(target, run.run_dir)
    if os.path.islink(link) and os.readlink(link) == relative:
      continue
    if os.path.lexists(link):
      raise UserError(
        f'{link} exists and is not a link to {target}; move it '
        'away or choose another --workdir'
      )
    try:
      os.symlink(relative, link)
    except FileExistsError:  # Another worker made it a moment ago.
      pass


def _train_claimed(
  workdir: str,
  config: ml_collections.ConfigDict,
  train_fn,
  reuse: Reuse,
  hooks=(),
) -> bool:
  """Trains the stage in `workdir` unless it is done, its loop calling
  `hooks`; False (and nothing done) when another worker holds it.

  The claim is the stage's own workdir lock, taken here before the stage
  loads or builds anything, and handed to the stage, which trains holding
  it: a busy stage costs a worker one try of a lock. The lock file is the
  stage's WORKDIR/.lock, as for a single run (workdir_lock.py), so the
  stage's directory in the store is made first; a single run's checks come
  before its workdir is written, a worker's after (the sweep's own checks
  ran before any worker started).
  """
  if sweep_plan.finished(workdir, config):
    return True
  lock = workdir_lock.try_lock(preflight.prepare_workdir(workdir))
  if lock is None:
    return False
  try:
    # Another worker may have finished it since the check above.
    if not sweep_plan.finished(workdir, config):
      train_fn(config, workdir, reuse, claim=lock, hooks=hooks)
  finally:
    lock.release()
  return True


def _write_result(
  run: sweep_plan.Run, config: ml_collections.ConfigDict
) -> None:
  """RUN_DIR/result.json, written whole or not at all: several workers may
  write the same (identical) file."""
  results.write_result(
    run.run_dir,
    run.setting,
    run.seed,
    run.teacher.to_dict(),
    run.student.to_dict(),
    config.get('reach_train_accuracy'),
  )


def has_result(run: sweep_plan.Run) -> bool:
  """Whether the run's result.json is there and readable: a damaged one is
  written again from the run's stages (which have finished)."""
  if not os.path.exists(run.result_path):
    return False
  result, _ = results.read_result(run.result_path, run.setting, run.seed)
  return result is not None


def _write_report(workdir: str, patience_seconds: float = 120.0) -> None:
  """The report, written by one worker at a time (the others wait)."""
  report_dir = os.path.join(workdir, '.report')
  os.makedirs(report_dir, exist_ok=True)
  deadline = time.monotonic() + patience_seconds
  while (lock := workdir_lock.try_lock(report_dir)) is None:
    if time.monotonic() > deadline:
      logging.warning(
        'The report of %s stays locked; not rewritten now.', workdir
      )
      return
    time.sleep(0.1)
  try:
    report.write_report(workdir)
  except UserError as e:  # The report cannot be written now; the runs can.
    logging.warning('The report of %s is not rewritten now: %s', workdir, e)
  finally:
    lock.release()


def _projected_clock(
  runs: list[sweep_plan.Run], reuse: Reuse, workers: int
) -> eta.SweepClock:
  """Measures the steps, logs the sweep's projected wall time and returns
  its clock."""
  projected = sweep_probe.probe(runs, reuse)
  clock = eta.SweepClock(projected, workers)
  logging.info(
    'Projected wall time of the %d unfinished stages: %s with %d '
    'worker(s) (%s of training in all; workers sharing one '
    'device slow each other, which the ETA corrects as stages '
    'finish).',
    len(projected),
    estimate.duration(clock.total_seconds()),
    workers,
    estimate.duration(sum(projected.values())),
  )
  return clock


def _train_stages(run, position, runs, worker, clock, reuse, held, stop):
  """Trains the unfinished stages of `run` ('[i/n]' in the plan) that this
  worker can claim, in order; (stages trained, whether all were claimed).
  A stage held by another worker is logged once (`held`). A stop requested
  (`stop`, during a stage or between two) ends the worker before the next."""
  trained, claimed_all = 0, True
  for name, directory, stage_config, train_fn in sweep_plan.stages(run):
    if sweep_plan.finished(directory, stage_config):
      continue
    stop.stop_if_requested(f'{run.setting} seed {run.seed}: {name}')
    if directory not in held:
      logging.info(
        '[worker %d] %s %s seed %d: %s in %s',
        worker,
        position,
        run.setting,
        run.seed,
        name,
        directory,
      )
    if clock is not None:
      clock.set_remaining(sweep_plan.unfinished_stages(runs))
      clock.start_stage(directory)
    # Every stage's loop shows the sweep's ETA on its progress lines.
    claimed = _train_claimed(
      directory,
      stage_config,
      train_fn,
      reuse,
      hooks=() if clock is None else (clock,),
    )
    if clock is not None:
      clock.end_stage(counted=claimed)
    if not claimed:
      if directory not in held:
        logging.info(
          '[worker %d] %s is held by another worker.', worker, directory
        )
        held.add(directory)
      claimed_all = False
      break
    trained += 1
  return trained, claimed_all


def _pass(
  runs: list[sweep_plan.Run],
  config: ml_collections.ConfigDict,
  workdir: str,
  context: tuple,
  first_pass: bool,
) -> tuple[int, list[str]]:
  """One pass of a worker over the sweep's runs: each run not finished has
  its stages claimed and trained, then its result and the report written.
  `context`: `_train_stages`'s (todo, worker, clock, reuse, held, stop).
  Returns (stages trained or resumed, the runs waiting on other workers)."""
  trained, waiting = 0, []
  for index, run in enumerate(runs):
    if has_result(run):
      if first_pass:
        logging.info(
          '[%d/%d] %s seed %d: finished earlier, skipped.',
          index + 1,
          len(runs),
          run.setting,
          run.seed,
        )
      continue
    _link(run)
    stages_trained, claimed_all = _train_stages(
      run, f'[{index + 1}/{len(runs)}]', *context
    )
    trained += stages_trained
    if not claimed_all:
      waiting.append(f'{run.setting} seed {run.seed}')
      continue
    _write_result(run, config)
    _write_report(workdir)
  return trained, waiting


def work(
  config: ml_collections.ConfigDict,
  workdir: str,
  worker: int = 0,
  poll_seconds: float = 5.0,
) -> int:
  """One worker: claims and trains stages until every run has finished;
  returns how many stages it trained or resumed.

  WORKDIR must hold the sweep's sweep.json (runner.write_sweep_file): the
  report, rewritten after every run, reads the settings from it.

  Worker 0 of each command first measures the steps and logs the sweep's
  projected wall time; its progress lines then show the sweep's ETA (the
  other workers' lines do not: they have no projection).
  """
  workdir = os.path.abspath(workdir)
  runs = sweep_plan.plan(config, workdir)
  # A run with its result is done even where its stages' checkpoints are
  # not here (records carried from another machine): it is neither
  # measured nor projected, and its teacher is not retrained for it.
  todo = [run for run in runs if not has_result(run)]
  reuse, clock = Reuse(), None
  if (
    worker == 0
    and config.get('estimate', True)
    and sweep_plan.unfinished_stages(todo)
  ):
    clock = _projected_clock(todo, reuse, config.get('workers', 1))
  trained, first_pass = 0, True
  # Stages seen held by another worker: said once, so that a waiting
  # worker's poll logs one line.
  held = set()
  with StopRequest() as stop:
    while True:
      done, waiting = _pass(
        runs,
        config,
        workdir,
        (todo, worker, clock, reuse, held, stop),
        first_pass,
      )
      trained += done
      first_pass = False
      if not waiting:
        break
      logging.info(
        '[worker %d] waiting for other workers on: %s',
        worker,
        ', '.join(waiting),
      )
      stop.stop_if_requested('the next poll')
      time.sleep(poll_seconds)
  logging.info(
    '[worker %d] done; compiled steps: %s', worker, dict(reuse.builds)
  )
  return trained
