"""The ablation runner: settings × seeds, each a teacher then its student.

A sweep config holds a `base` pipeline config (teacher + student), `seeds`,
and `settings`, each a string 'NAME: field=value, field=value' of overrides
of the base (fields dotted from the pipeline config, values Python
literals), e.g. 'delta=0.2: teacher.icc.delta=0.2'.

Runs are named by their config (run_store.py): teachers train in
STORE/teachers/<key>, students in STORE/students/<key>, STORE being
`config.store` or else WORKDIR. Settings that ask for the same teacher (or
student) share it, trained once. WORKDIR/<setting>/seed_<seed>/ holds links
`teacher` and `student` to the runs of that (setting, seed) and, once both
have finished, result.json.

Workers. `config.workers` processes share the sweep (each on its own GPU
while there are several, else on the one device). A worker claims a stage
(teacher or student) by holding its workdir's lock (workdir_lock.py), trains
it, and moves on; a stage that another worker holds is skipped for now and
tried again later. Several machines may run the same command on one shared
directory (e.g. a SLURM array): the locks keep any two workers off one
stage. A worker that dies drops its locks with it, and the next worker to
claim its stage resumes it from its checkpoints. Runs are deterministic given their config, so the
results do not depend on how many workers there were or who ran what.

Restarting a sweep skips finished runs (they hold result.json) and resumes
those in progress. The report (results.csv, summary.md, plots) is rewritten
after every run from whatever has finished.

Before training, worker 0 measures the step time of each distinct compiled
step the sweep needs (and one evaluation) and logs the projected wall time
of the whole sweep; the progress lines of its runs then show the sweep's
ETA (estimate.py).
"""

import dataclasses
import glob
import json
import logging as py_logging
import multiprocessing
import os
import sys
import time

from absl import logging
import ml_collections

from icckd_jax.data import input_pipeline
from icckd_jax.errors import UserError
from icckd_jax.experiments import method
from icckd_jax.experiments import report
from icckd_jax.experiments import run_store
from icckd_jax.experiments.settings import Setting, apply_overrides, parse_setting, seeds_of  # noqa: F401
from icckd_jax.training import estimate
from icckd_jax.training import evaluate
from icckd_jax import parallel
from icckd_jax.training import student as student_lib
from icckd_jax.training import preflight
from icckd_jax.training import run_setup
from icckd_jax.training import teacher as teacher_lib
from icckd_jax.training import validate
from icckd_jax.training import workdir_lock
from icckd_jax.training.reuse import Reuse

SWEEP_FILE = 'sweep.json'


def run_config(base: ml_collections.ConfigDict, setting: Setting,
               seed: int) -> ml_collections.ConfigDict:
  config = apply_overrides(base, setting.overrides)
  config.teacher.seed = seed
  config.student.seed = seed
  return config


@dataclasses.dataclass
class Run:
  """One (setting, seed): its teacher's and student's configs and homes."""
  setting: str
  seed: int
  run_dir: str  # WORKDIR/<setting>/seed_<seed>
  teacher: ml_collections.ConfigDict
  student: ml_collections.ConfigDict  # its teacher.workdir is teacher_dir
  teacher_dir: str
  student_dir: str

  @property
  def result_path(self) -> str:
    return os.path.join(self.run_dir, report.RESULT_FILE)


def plan(config: ml_collections.ConfigDict, workdir: str) -> list[Run]:
  """Every (setting, seed) of the sweep, seed by seed (so that a sweep cut
  short holds whole seeds of every setting); checks the settings."""
  settings = [parse_setting(s) for s in config.settings]
  names = [s.name for s in settings]
  if len(set(names)) != len(names):
    raise UserError(f'config.settings has repeated names: {names}')
  if not config.seeds:
    raise UserError('config.seeds is empty')
  unknown = set(config.get('primary_settings') or ()) - set(names)
  if unknown:
    raise UserError(f'config.primary_settings names no setting: '
                    f'{sorted(unknown)}')
  if config.get('primary_settings') and not config.get('primary_seeds'):
    raise UserError('config.primary_seeds is empty')
  workers = config.get('workers', 1)
  if not isinstance(workers, int) or workers < 1:
    raise UserError(f'config.workers={workers!r} must be an integer >= 1')
  store = os.path.abspath(config.get('store') or workdir)
  runs = []
  for seed, index in sorted((seed, index)
                            for index, setting in enumerate(settings)
                            for seed in seeds_of(config, setting.name)):
    setting = settings[index]
    pipeline = run_config(config.base, setting, seed)
    teacher_dir = run_store.teacher_dir(store, pipeline.teacher)
    student = method.student_config(pipeline, teacher_dir)
    runs.append(Run(
        setting=setting.name, seed=seed,
        run_dir=os.path.join(workdir, setting.name, f'seed_{seed}'),
        teacher=pipeline.teacher, student=student, teacher_dir=teacher_dir,
        student_dir=run_store.student_dir(
            store, student, run_store.teacher_key(pipeline.teacher))))
  return runs


def _stages(run: Run):
  """(name, workdir, config, train function) of the run's two stages."""
  return (('teacher', run.teacher_dir, run.teacher, teacher_lib.train_teacher),
          ('student', run.student_dir, run.student, student_lib.train_student))


def _finished(workdir: str, config: ml_collections.ConfigDict) -> bool:
  return method.finished(workdir, config.num_epochs) is not None


def _link(run: Run) -> None:
  """RUN_DIR/teacher and RUN_DIR/student: relative links to the store."""
  os.makedirs(run.run_dir, exist_ok=True)
  for name, target, _, _ in _stages(run):
    link = os.path.join(run.run_dir, name)
    relative = os.path.relpath(target, run.run_dir)
    if os.path.islink(link) and os.readlink(link) == relative:
      continue
    if os.path.lexists(link):
      raise UserError(f'{link} exists and is not a link to {target}; move it '
                      'away or choose another --workdir')
    try:
      os.symlink(relative, link)
    except FileExistsError:  # Another worker made it a moment ago.
      pass


def _train_claimed(workdir: str, config: ml_collections.ConfigDict,
                   train_fn, reuse: Reuse) -> bool:
  """Trains the stage in `workdir` unless it is done; False (and nothing
  done) when another worker holds it.

  The claim is the run's own workdir lock, which the run entry takes before
  it writes anything and holds while it trains: a worker that finds it held
  moves on. A stage that another worker finished after the check below
  resumes at its last epoch and trains nothing.
  """
  if _finished(workdir, config):
    return True
  try:
    train_fn(config, workdir, reuse)
  except workdir_lock.WorkdirBusy:
    return False
  return True


def _write_report(workdir: str, patience_seconds: float = 120.0) -> None:
  """The report, written by one worker at a time (the others wait)."""
  report_dir = os.path.join(workdir, '.report')
  os.makedirs(report_dir, exist_ok=True)
  deadline = time.monotonic() + patience_seconds
  while (lock := workdir_lock.try_lock(report_dir)) is None:
    if time.monotonic() > deadline:
      logging.warning('The report of %s stays locked; not rewritten now.',
                      workdir)
      return
    time.sleep(0.1)
  try:
    report.write_report(workdir)
  finally:
    lock.release()


def _unfinished_stages(runs: list[Run]) -> list[str]:
  return [directory for run in runs for _, directory, config, _ in
          _stages(run) if not _finished(directory, config)]


def probe(runs: list[Run], reuse: Reuse) -> dict[str, float]:
  """Measures each distinct step (and evaluation) the unfinished stages use
  and projects each stage's seconds: {stage workdir: seconds}.

  A step is built exactly as its run builds it, through `reuse`, so its
  compilation is the one the run will use; students are timed against a
  freshly initialised teacher of the right architecture (their step takes
  the teacher's weights as an argument).
  """
  step_seconds: dict[int, float] = {}
  eval_seconds: dict[str, float] = {}
  projected: dict[str, float] = {}
  teacher_states: dict[str, object] = {}
  for run in runs:
    for name, workdir, config, _ in _stages(run):
      if workdir in projected or _finished(workdir, config):
        continue
      mesh = parallel.make_mesh(config.get('num_devices') or None)
      dataset = run_setup.load_dataset(config, reuse)
      teacher_setup = teacher_lib.build_teacher(run.teacher, dataset, mesh, reuse)
      if name == 'teacher':
        setup = teacher_setup
      else:
        # Any teacher of the right architecture will do for timing: one
        # state per architecture, not one compilation per student.
        if run.teacher.model not in teacher_states:
          teacher_states[run.teacher.model] = teacher_setup.create_state(mesh)
        variables = teacher_states[run.teacher.model]
        setup = student_lib.build_student(
            config, dataset, mesh, run.teacher,
            {'params': variables.params['model'],
             'batch_stats': variables.batch_stats}, reuse)
      train_split, test_split = input_pipeline.to_device(dataset, mesh)
      if id(setup.train_step) not in step_seconds:
        state = setup.create_state(mesh)
        seconds, _ = estimate.time_steps(
            setup.train_step, state,
            setup.batches(config, train_split, mesh, 0), setup.step_args)
        step_seconds[id(setup.train_step)] = seconds
        logging.info('Measured %s step (%s, batch %d): %.1f ms, %.0f img/s.',
                     name, config.model, config.batch_size, 1000 * seconds,
                     config.batch_size / seconds)
      eval_key = f'{name}|{config.model}|{run.teacher.model}'
      if eval_key not in eval_seconds:
        eval_seconds[eval_key] = _time_evaluation(setup, config, dataset,
                                                  mesh, test_split)
        logging.info('Measured %s evaluation (%s, %d test images): %s.', name,
                     config.model, len(dataset.test_labels),
                     estimate.duration(eval_seconds[eval_key]))
      # Evaluations: every `eval_every_epochs` and the last epoch, plus a
      # student's evaluation of its teacher before it starts.
      every = config.get('eval_every_epochs', 1)
      evaluations = (config.num_epochs // every +
                     (config.num_epochs % every != 0) + (name == 'student'))
      projected[workdir] = (
          config.num_epochs * setup.steps_per_epoch *
          step_seconds[id(setup.train_step)] +
          evaluations * eval_seconds[eval_key])
  return projected


def _time_evaluation(setup: run_setup.RunSetup, config, dataset, mesh,
                     test_split) -> float:
  """Seconds of one whole test-split evaluation, after compiling."""
  reference = setup.reference[0] if setup.reference else None
  evaluate_fn = evaluate.make_eval_fn(
      setup.model, mesh, mean=dataset.mean, std=dataset.std,
      dtype=run_setup.compute_dtype(config), batch_size=config.eval_batch_size,
      reference=reference)
  state = setup.create_state(mesh)
  variables = {'params': state.params['model'],
               'batch_stats': state.batch_stats}
  reference_variables = setup.reference[1] if setup.reference else None
  evaluate_fn(variables, test_split, reference_variables)
  start = time.perf_counter()
  evaluate_fn(variables, test_split, reference_variables)
  return time.perf_counter() - start


def work(config: ml_collections.ConfigDict, workdir: str, worker: int = 0,
         poll_seconds: float = 5.0) -> int:
  """One worker: claims and trains stages until every run has finished;
  returns how many stages it trained or resumed.

  Worker 0 of each command first measures the steps and logs the sweep's
  projected wall time; its progress lines then show the sweep's ETA (the
  other workers' lines do not: they have no projection).
  """
  workdir = os.path.abspath(workdir)
  runs = plan(config, workdir)
  # The report reads the settings from it; a worker may be the first here.
  _write_sweep_file(config, workdir)
  workers = config.get('workers', 1)
  reuse = Reuse()
  if worker == 0 and config.get('estimate', True) and _unfinished_stages(runs):
    projected = probe(runs, reuse)
    reuse.sweep_clock = estimate.SweepClock(projected, workers)
    logging.info('Projected wall time of the %d unfinished stages: %s with %d '
                 'worker(s) (%s of training in all; workers sharing one '
                 'device slow each other, which the ETA corrects as stages '
                 'finish).', len(projected),
                 estimate.duration(reuse.sweep_clock.total_seconds()), workers,
                 estimate.duration(sum(projected.values())))
  clock = reuse.sweep_clock
  trained, first_pass = 0, True
  while True:
    waiting = []
    for index, run in enumerate(runs):
      if os.path.exists(run.result_path):
        if first_pass:
          logging.info('[%d/%d] %s seed %d: finished earlier, skipped.',
                       index + 1, len(runs), run.setting, run.seed)
        continue
      _link(run)
      claimed_all = True
      for name, directory, stage_config, train_fn in _stages(run):
        if _finished(directory, stage_config):
          continue
        logging.info('[worker %d] [%d/%d] %s seed %d: %s in %s', worker,
                     index + 1, len(runs), run.setting, run.seed, name,
                     directory)
        if clock is not None:
          clock.set_remaining(_unfinished_stages(runs))
          clock.start_stage(directory)
        claimed = _train_claimed(directory, stage_config, train_fn, reuse)
        if clock is not None:
          clock.end_stage(counted=claimed)
        if not claimed:
          logging.info('[worker %d] %s is held by another worker.', worker,
                       directory)
          claimed_all = False
          break
        trained += 1
      if not claimed_all:
        waiting.append(f'{run.setting} seed {run.seed}')
        continue
      _write_result(run, config)
      _write_report(workdir)
    first_pass = False
    if not waiting:
      break
    logging.info('[worker %d] waiting for other workers on: %s', worker,
                 ', '.join(waiting))
    time.sleep(poll_seconds)
  logging.info('[worker %d] done; compiled steps: %s', worker,
               dict(reuse.builds))
  return trained


def _write_sweep_file(config: ml_collections.ConfigDict, workdir: str) -> None:
  """WORKDIR/sweep.json, whole or not at all (workers write it alike)."""
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, SWEEP_FILE)
  with open(f'{path}.{os.getpid()}.tmp', 'w') as f:
    json.dump(validate.config_as_dict(config), f, indent=2)
  os.replace(f'{path}.{os.getpid()}.tmp', path)


def _write_result(run: Run, config: ml_collections.ConfigDict) -> None:
  """RUN_DIR/result.json, written whole or not at all: several workers may
  write the same (identical) file."""
  report.write_result(run.run_dir, run.setting, run.seed,
                      run.teacher.to_dict(), run.student.to_dict(),
                      config.get('reach_train_accuracy'))


def _visible_gpus() -> list[str]:
  """The GPU ids CUDA would show a child process (none on a CPU machine)."""
  visible = os.environ.get('CUDA_VISIBLE_DEVICES')
  if visible is not None:
    return [d for d in visible.split(',') if d.strip()]
  return [str(i) for i in range(len(glob.glob('/proc/driver/nvidia/gpus/*')))]


class _OwnInfoOnly(py_logging.Filter):
  """A worker's log: this package's INFO lines, every library's warnings
  (as launch.py does for the main process; Orbax logs every file it
  writes at INFO)."""

  def filter(self, record):
    return (record.levelno >= py_logging.WARNING or
            f'{os.sep}icckd_jax{os.sep}' in record.pathname)


def _worker_main(config_dict: dict, workdir: str, worker: int,
                 gpu: str | None, verbosity: int) -> None:
  """A worker process: its own device set-up and logging, then `work`."""
  if gpu is not None:
    os.environ['CUDA_VISIBLE_DEVICES'] = gpu
  # Processes sharing a GPU must not each take most of its memory up front.
  os.environ.setdefault('XLA_PYTHON_CLIENT_PREALLOCATE', 'false')
  logging.set_verbosity(verbosity)
  logging.use_absl_handler()
  logging.get_absl_handler().addFilter(_OwnInfoOnly())
  try:
    work(ml_collections.ConfigDict(config_dict), workdir, worker)
  except UserError as e:
    print(f'error: [worker {worker}] {e}', file=sys.stderr)
    sys.exit(2)


def _run_workers(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Starts config.workers processes and waits for them all."""
  gpus = _visible_gpus()
  context = multiprocessing.get_context('spawn')
  processes = []
  for worker in range(config.workers):
    gpu = gpus[worker % len(gpus)] if len(gpus) > 1 else None
    process = context.Process(
        target=_worker_main, name=f'sweep-worker-{worker}',
        args=(config.to_dict(), workdir, worker, gpu,
              logging.get_verbosity()))
    process.start()
    processes.append(process)
  for process in processes:
    process.join()
  failed = [(i, p.exitcode) for i, p in enumerate(processes) if p.exitcode]
  if failed:
    raise UserError('sweep worker(s) failed (worker, exit code): '
                    f'{failed}; finished runs are kept, run the same command '
                    'again to resume the rest')


def run_sweep(config: ml_collections.ConfigDict, workdir: str) -> list[dict]:
  """Runs every (setting, seed) not yet finished, in config.workers
  processes; returns the result rows of every finished run."""
  # Fail on a bad setting, seed list, worker count or stage field before
  # anything is written or trained.
  preflight.require_workdir(workdir)
  for run in plan(config, os.path.abspath(workdir)):
    method.check_stages(run.teacher, run.student,
                        f'setting {run.setting!r} seed {run.seed}: ')
  workdir = preflight.prepare_workdir(workdir)
  _write_sweep_file(config, workdir)

  start = time.perf_counter()
  if config.get('workers', 1) == 1:
    work(config, workdir)
  else:
    _run_workers(config, workdir)
  logging.info('Sweep done in %s.',
               estimate.duration(time.perf_counter() - start))
  rows = report.write_report(workdir)
  print(report.headline(rows))
  print(f'Every metric: {os.path.join(workdir, report.SUMMARY_FILE)}, '
        f'{report.RESULTS_CSV} and the plots beside it.')
  return rows
