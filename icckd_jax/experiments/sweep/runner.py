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
claim its stage resumes it from its checkpoints. Runs are deterministic
given their config, so the results do not depend on how many workers there
were or who ran what.

Restarting a sweep skips finished runs (they hold result.json) and resumes
those in progress. The report (results.csv, summary.md, plots) is rewritten
after every run from whatever has finished.

Before training, worker 0 measures the step time of each distinct compiled
step the sweep needs (and one evaluation) and logs the projected wall time
of the whole sweep; the progress lines of its runs then show the sweep's
ETA (sweep/eta.py).

The parts: sweep/plan.py (the runs and their stages), sweep/worker.py (one
worker: claims, trains, writes results and the report), sweep/probe.py (the
projection), sweep/pool.py (the worker processes); this module starts them.
"""

import os
import time

from absl import logging
import ml_collections

from icckd_jax.experiments import pipeline
from icckd_jax.errors import UserError
from icckd_jax.experiments import transfer_rule
from icckd_jax.experiments.sweep import report
from icckd_jax.experiments.sweep import plan as sweep_plan
from icckd_jax.experiments.sweep import pool as sweep_pool
from icckd_jax.experiments.sweep import settings as settings_lib
from icckd_jax.experiments.sweep import worker as sweep_worker
from icckd_jax.training import estimate
from icckd_jax.training import metric_writer
from icckd_jax.stages import preflight
from icckd_jax.runs import validate


def write_sweep_file(config: ml_collections.ConfigDict, workdir: str) -> None:
  """WORKDIR/sweep.json, the sweep's config, which the report reads: written
  once per command, before any worker starts, whole or not at all (commands
  on one shared workdir write it alike)."""
  os.makedirs(workdir, exist_ok=True)
  metric_writer.write_json(
    os.path.join(workdir, report.SWEEP_FILE), validate.config_as_dict(config)
  )


def with_transfer_recipe(
  config: ml_collections.ConfigDict,
) -> ml_collections.ConfigDict:
  """`config` with the student recipe stage 1's rule chose, where it
  declares `transfer_from` (the capacity study, design.md's amendment):
  the chosen setting's student fields set in its base, the decision
  recorded for the report. Other sweeps pass unchanged."""
  if 'transfer_from' not in config:
    return config
  if not config.transfer_from:
    raise UserError(
      'config.transfer_from is not set; name the finished workdir of '
      'stage 1 (configs/study.py:capacity_transfer), whose rule chooses '
      "this study's student recipe"
    )
  decision, setting = report.transfer_decision(config.transfer_from)
  recipe = {
    k: v for k, v in setting.overrides.items() if k.startswith('student.')
  }
  chosen = ml_collections.ConfigDict(config.to_dict())
  chosen.base = settings_lib.apply_overrides(config.base, recipe)
  # The decision, as stage 2's report prints it: its first line says
  # whether regime check (b) failed in stage 1.
  chosen.transfer_rule = transfer_rule.lines(
    decision, ', '.join(f'{k}={v!r}' for k, v in recipe.items())
  )
  return chosen


def prepared(
  config: ml_collections.ConfigDict, workdir: str
) -> ml_collections.ConfigDict:
  """The sweep's config (with its transfer recipe), checked, and its
  workdir made with sweep.json in it: what every worker of it, here or on
  a cluster, starts from."""
  # Fail on a bad setting, seed list, worker count or stage field before
  # anything is written or trained.
  preflight.require_workdir(workdir)
  config = with_transfer_recipe(config)
  for run in sweep_plan.plan(config, os.path.abspath(workdir)):
    pipeline.check_stages(
      run.teacher, run.student, f'setting {run.setting!r} seed {run.seed}: '
    )
  write_sweep_file(config, preflight.prepare_workdir(workdir))
  return config


def run_sweep(config: ml_collections.ConfigDict, workdir: str) -> list[dict]:
  """Runs every (setting, seed) not yet finished, in config.workers
  processes; returns the result rows of every finished run."""
  config = prepared(config, workdir)
  workdir = os.path.abspath(workdir)
  start = time.perf_counter()
  if config.get('workers', 1) == 1:
    sweep_worker.work(config, workdir)
  else:
    sweep_pool.run_workers(config, workdir)
  logging.info(
    'Sweep done in %s.', estimate.duration(time.perf_counter() - start)
  )
  return report.write_report(workdir)
