r"""Writes store_d8b658b.tar.gz, kept unpacked (plain files, reviewable) in
tests/fixtures/store_d8b658b/: a sweep's run store as the
code at commit d8b658b (before issue 35's refactor) left it, for
tests/test_old_runs.py.

  git worktree add /tmp/old_main d8b658b
  cd /tmp/old_main && JAX_PLATFORMS=cpu PYTHONPATH=. \
      XLA_FLAGS=--xla_force_host_platform_device_count=4 \
      python path/to/this/checkout/tests/make_store_d8b658b.py /tmp/out
  tar xzf /tmp/out/store_d8b658b.tar.gz \
      -C path/to/this/checkout/tests/fixtures/store_d8b658b

On the tests' four emulated CPU devices (conftest.py), where they resume it
bit for bit. The sweep is `config()`, one setting and two seeds: seed 0's
teacher and student finish; seed 1's teacher is stopped by SIGTERM before
step STOP_AT (mid-epoch: the loop saves it in the teacher's preempted/),
before its student starts. (A student that stopped half-way could not be
resumed from an unpacked copy: its saved config names its teacher's absolute
path.) Left out of the archive, to keep it small: seed 0's student's
checkpoints and each teacher's best/ (a copy of its last checkpoint), for a
run with its result is done without them, and the report's plots, which the
next run rewrites. Added: reference.json, the records and
summaries of seed 1's teacher and student from a second, uninterrupted
sweep of the same config, as the old code computed them.

`config()` is built from the configs of the checkout that runs it: the old
one here, today's in the test, which finds the stored runs by their keys.
"""

import ml_collections

from configs import ablation_margin

STOP_AT = 6  # of a teacher's 8 steps: 2 epochs of 4
ARCHIVE = 'store_d8b658b.tar.gz'
TIMING_KEYS = {'step_time', 'images_per_second', 'epoch_time'}


def config() -> ml_collections.ConfigDict:
  """Tiny δ = 0.2 teachers and their KD students: resnet8 on 8x8 synthetic
  images, 4 steps an epoch, 2 epochs each; checkpointed and evaluated at the
  last epoch only."""
  c = ablation_margin.get_config('smoke')
  c.settings = ('delta=0.2: teacher.icc.delta=0.2',)
  c.seeds = (0, 1)
  t, s = c.base.teacher, c.base.student
  t.dataset.update(num_train=128, num_test=32, image_size=8)
  for stage in (t, s):
    stage.num_epochs = 2
    stage.lr_decay_epochs = (1,)
    stage.keep_checkpoints = 1
    stage.checkpoint_every_epochs = 2
    stage.eval_every_epochs = 2
    stage.log_every_steps = 2
  return c


def records(workdir: str) -> dict:
  """The train and epoch records and the summary of the run in `workdir`,
  less wall-clock timings."""
  # pylint: disable=g-import-not-at-top
  import json
  import os

  from icckd_jax.training import metric_writer

  with open(os.path.join(workdir, 'summary.json')) as f:
    summary = json.load(f)
  return {
    'records': [
      {k: v for k, v in r.items() if k not in TIMING_KEYS}
      for r in metric_writer.read_records(workdir)
      if r['kind'] in ('train', 'epoch')
    ],
    'summary': {k: v for k, v in summary.items() if k not in TIMING_KEYS},
  }


def _stop_before(workdir: str) -> None:
  """SIGTERM to this process before step STOP_AT of the run in `workdir`:
  the old loop saves there and raises Preempted."""
  # pylint: disable=g-import-not-at-top,protected-access
  import os
  import signal

  from icckd_jax.training import loop
  from icckd_jax.training import preemption

  run, requested = loop._Loop.run, preemption.StopRequest.requested
  current = {}

  def run_noting_workdir(self, *args, **kwargs):
    current['workdir'] = self.workdir
    return run(self, *args, **kwargs)

  def requested_or_stop(self, step):
    if current.get('workdir') == workdir and step == STOP_AT:
      os.kill(os.getpid(), signal.SIGTERM)
    return requested(self, step)

  loop._Loop.run = run_noting_workdir
  preemption.StopRequest.requested = requested_or_stop


def main(out: str) -> None:
  # pylint: disable=g-import-not-at-top
  import json
  import os
  import shutil
  import tarfile

  from icckd_jax.experiments.sweep import plan as sweep_plan
  from icckd_jax.experiments.sweep import runner
  from icckd_jax.training import preemption

  straight = os.path.abspath(os.path.join(out, 'straight'))
  runner.run_sweep(config(), straight)
  _, run = sweep_plan.plan(config(), straight)
  reference = {
    'teacher': records(run.teacher_dir),
    'student': records(run.student_dir),
  }
  store = os.path.abspath(os.path.join(out, 'store'))
  done, stopped = sweep_plan.plan(config(), store)
  _stop_before(stopped.teacher_dir)
  try:
    runner.run_sweep(config(), store)
    raise SystemExit('the teacher was not stopped')
  except preemption.Preempted:
    pass
  for directory in ('checkpoints', 'best'):
    shutil.rmtree(os.path.join(done.student_dir, directory))
  for teacher in (done, stopped):
    shutil.rmtree(os.path.join(teacher.teacher_dir, 'best'))
  for plot in ('accuracy.png', 'curves.png'):
    os.remove(os.path.join(store, plot))
  with open(os.path.join(store, 'reference.json'), 'w') as f:
    json.dump(reference, f, indent=1)
  archive = os.path.join(out, ARCHIVE)
  with tarfile.open(archive, 'w:gz') as tar:
    tar.add(store, arcname='store')
  print(archive, os.path.getsize(archive))


if __name__ == '__main__':
  import sys

  main(sys.argv[1])
