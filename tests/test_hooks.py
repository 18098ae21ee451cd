"""The train loop's hooks (icckd_jax/training/hooks.py): a hook handed in
through `Reuse.hooks` sees every step and every epoch of each run, resumed
ones included, and its note ends the run's progress lines."""

import logging

from configs import teacher as teacher_config
from icckd_jax.runs.reuse import Reuse
from icckd_jax.stages import teacher
from icckd_jax.training import hooks


class Recorder(hooks.Hook):
  """Every call the loop makes, in order."""

  def __init__(self):
    self.calls = []

  def on_start(self, start_step, total_steps):
    self.calls.append(('start', start_step, total_steps))

  def on_step(self, step, metrics):
    assert 'loss' in metrics
    self.calls.append(('step', step))

  def on_epoch(self, epoch, record):
    assert record['epoch'] == epoch
    self.calls.append(('epoch', epoch))

  def note(self):
    return ' | recorded'


def _tiny(num_epochs):
  """32 8x8 images of 10 classes, batches of 8: 4 steps an epoch."""
  config = teacher_config.get_config('smoke')
  config.dataset.update(num_train=32, num_test=16, image_size=8)
  config.batch_size = 8
  config.eval_batch_size = 16
  config.log_every_steps = 2
  config.icc.lam = 0.0
  config.num_epochs = num_epochs
  return config


def test_hooks_see_each_step_and_epoch_of_a_run_and_of_its_resume(
  tmp_path, caplog
):
  caplog.set_level(logging.INFO, logger='absl')
  workdir = str(tmp_path / 'run')
  recorder = Recorder()
  reuse = Reuse(hooks=[recorder])
  teacher.train_teacher(_tiny(1), workdir, reuse)
  assert recorder.calls == [
    ('start', 0, 4),
    *[('step', s) for s in range(1, 5)],
    ('epoch', 1),
  ]
  progress = [r.getMessage() for r in caplog.records if ' | ETA ' in r.msg]
  assert len(progress) == 2  # every 2 steps
  assert all(line.endswith(' | recorded') for line in progress)

  recorder.calls.clear()
  teacher.train_teacher(_tiny(2), workdir, reuse)  # resumes at step 4
  assert recorder.calls == [
    ('start', 4, 8),
    *[('step', s) for s in range(5, 9)],
    ('epoch', 2),
  ]
