"""The train loop's hooks (icckd_jax/training/hooks.py): a hook handed to
one run (`train_teacher`, `main.run`, launch.py --hook=module:callable)
sees every step and every epoch of it, resumed ones included, and its note
ends the run's progress lines."""

import logging

from configs import teacher as teacher_config
from icckd_jax import main
from icckd_jax.stages import teacher
from icckd_jax.training import hooks
from launch_in_process import error_line, run_launcher

# The hooks `recording_hook` made, for the command-line test to inspect.
MADE = []


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
  teacher.train_teacher(_tiny(1), workdir, hooks=[recorder])
  assert recorder.calls == [
    ('start', 0, 4),
    *[('step', s) for s in range(1, 5)],
    ('epoch', 1),
  ]
  progress = [r.getMessage() for r in caplog.records if ' | ETA ' in r.msg]
  assert len(progress) == 2  # every 2 steps
  assert all(line.endswith(' | recorded') for line in progress)

  recorder.calls.clear()
  teacher.train_teacher(_tiny(2), workdir, hooks=[recorder])  # resumes
  assert recorder.calls == [
    ('start', 4, 8),
    *[('step', s) for s in range(5, 9)],
    ('epoch', 2),
  ]


def recording_hook() -> Recorder:
  """launch.py --hook=test_hooks:recording_hook makes its hook here."""
  MADE.append(Recorder())
  return MADE[-1]


def not_a_hook() -> object:
  return object()


def test_a_hook_given_to_main_run_sees_the_run(tmp_path):
  recorder = Recorder()
  main.run(_tiny(1), str(tmp_path / 'run'), hooks=[recorder])
  assert recorder.calls[0] == ('start', 0, 4)
  assert recorder.calls[-1] == ('epoch', 1)


def test_a_hook_named_on_the_command_line_sees_the_run(tmp_path):
  MADE.clear()
  args = (
    '--config=configs/teacher.py:smoke',
    '--config.dataset.num_train=32',
    '--config.dataset.num_test=16',
    '--config.dataset.image_size=8',
    '--config.batch_size=8',
    '--config.eval_batch_size=16',
    '--config.icc.lam=0.0',
    '--config.num_epochs=1',
    f'--workdir={tmp_path / "run"}',
  )
  code, stderr = run_launcher(*args, '--hook=test_hooks:recording_hook')
  assert code == 0, stderr[-2000:]
  assert len(MADE) == 1
  assert MADE[0].calls == [
    ('start', 0, 4),
    *[('step', s) for s in range(1, 5)],
    ('epoch', 1),
  ]


def test_a_hook_that_cannot_be_loaded_is_one_error_line(tmp_path):
  workdir = tmp_path / 'run'
  for hook, says in (
    ('no_colon', 'is not module:callable'),
    ('no_such_module_here:Hook', 'cannot import no_such_module_here'),
    ('test_hooks:nothing', "has no callable 'nothing'"),
    ('test_hooks:not_a_hook', 'not an icckd_jax.training.hooks.Hook'),
  ):
    code, stderr = run_launcher(
      '--config=configs/teacher.py:smoke',
      f'--workdir={workdir}',
      f'--hook={hook}',
    )
    assert says in error_line(code, stderr)
  assert not workdir.exists()
