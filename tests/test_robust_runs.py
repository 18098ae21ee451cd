"""Long runs that cannot lose good work: bad values rejected before any write,
divergence stopped before saving, one run per workdir, damaged checkpoints
falling back, preemption saving mid-epoch and resuming bit for bit, and
two processes under jax.distributed training like one.

Most cases call launch.py's `main` in this process (a subprocess costs
seconds of imports per case); the exit-code path, the lock and the
signals are exercised in real subprocesses.
"""

import json
import logging
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import ROOT
from icckd_jax.training import checkpoint
from icckd_jax.training import metric_writer
from icckd_jax.training import divergence
from icckd_jax.training import preemption
from icckd_jax.training import resume
from icckd_jax.stages import teacher_source
from icckd_jax.runs import spec
from icckd_jax.runs import workdir_lock
from icckd_jax.runs.train_state import TrainState
from icckd_jax.runs import layout
import helpers
from helpers import SMOKE, TRAINED, assert_same_run, restore_state, snapshot
from launch_in_process import error_line, run_launcher


def _refused(assignment: str, said: str = '') -> tuple[list[str], str]:
  """(['--' + assignment], what the error line must say): the assignment
  itself, then `said`."""
  return [f'--{assignment}'], assignment + said


# (arguments, what the error line must say). `{new}` is a workdir that does
# not exist, `{run}` the trained teacher's.
BAD_INPUTS = {
  'checkpoint_every_0': _refused(
    'config.checkpoint_every_epochs=0', ' is out of range'
  ),
  'log_every_0': _refused('config.log_every_steps=0', ' is out of range'),
  'num_epochs_0': _refused('config.num_epochs=0'),
  'keep_0': _refused('config.keep_checkpoints=0'),
  'lr_negative': _refused(
    'config.learning_rate=-0.1',
    ' is out of range; it must be a finite number > 0',
  ),
  'lr_zero': _refused('config.learning_rate=0'),
  'lr_inf': _refused('config.learning_rate=inf'),
  'delta_nan': _refused('config.icc.delta=nan'),
  'tau_inf': _refused('config.icc.tau=inf'),
  'lam_negative': _refused('config.icc.lam=-1'),
  'lr_decay_rate_nan': _refused('config.lr_decay_rate=nan'),
  'lr_decay_epoch_negative': _refused('config.lr_decay_epochs=(-1,)'),
  'momentum_1.5': _refused('config.momentum=1.5'),
  'weight_decay_negative': _refused('config.weight_decay=-0.0001'),
  'batch_0': _refused('config.batch_size=0'),
  'eval_batch_0': _refused('config.eval_batch_size=0'),
  'eval_batch_indivisible': _refused(
    'config.eval_batch_size=30', ' is not divisible'
  ),
  'batch_over_data': _refused(
    'config.batch_size=512', ' is larger than the 256'
  ),
  'cache_negative': _refused('config.cache.size=-1'),
  'num_train_0': _refused('config.dataset.num_train=0'),
  'one_class': _refused('config.dataset.num_classes=1'),
  'seed_negative': _refused('config.seed=-1'),
  'crop_negative': _refused('config.crop_padding=-1'),
  'num_devices_negative': _refused('config.num_devices=-1'),
  'nested_misspelt': (
    ['--config.icc.lamda=1'],
    'no such config field: lamda (did you mean "lam" instead of "lamda"?)',
  ),
  'pipeline_student_alpha': (
    ['--config=configs/pipeline.py:smoke', '--config.student.distill.alpha=-1'],
    'config.student.distill.alpha=-1',
  ),
  'student_temperature_0': (
    [
      '--config=configs/student.py:smoke',
      '--config.teacher.workdir={run}',
      '--config.distill.temperature=0',
    ],
    'config.distill.temperature=0',
  ),
  'student_image_size': (
    [
      '--config=configs/student.py:smoke',
      '--config.teacher.workdir={run}',
      '--config.dataset.image_size=16',
    ],
    'config.dataset.image_size=16 but the teacher was trained on '
    'dataset.image_size=32',
  ),
  'student_no_teacher': (
    [
      '--config=configs/student.py:smoke',
      '--config.teacher.workdir={new}_teacher',
    ],
    'config.teacher.workdir=',
  ),
}

# Changes that build another run: refused on the trained workdir.
RESUME_MISMATCHES = {
  'model': (
    ['--config.model=resnet14'],
    "holds a run with model='resnet8' (now 'resnet14')",
  ),
  'batch_size': (['--config.batch_size=64'], 'batch_size=32 (now 64)'),
  'image_size': (
    ['--config.dataset.image_size=16'],
    'dataset.image_size=32 (now 16)',
  ),
  # The trained run is a CE teacher (λ = 0), which has no cache: its
  # cache fields are not part of it (test_config_schema), λ is.
  'objective': (
    ['--config.icc.lam=0.1', '--config.cache.size=2'],
    'icc.lam=0.0 (now 0.1)',
  ),
  'seed': (['--config.seed=3'], 'seed=0 (now 3)'),
  'learning_rate': (
    ['--config.learning_rate=0.1'],
    'learning_rate=0.05 (now 0.1)',
  ),
  'bad_value_first': (
    ['--config.num_epochs=0', '--config.model=resnet14'],
    'config.num_epochs=0',
  ),
}


def _fill(args, run, new):
  return [a.format(run=run, new=new) for a in args]


@pytest.mark.parametrize('name', sorted(BAD_INPUTS))
def test_bad_input_is_one_line_exit_2_and_writes_nothing(
  name, trained, tmp_path
):
  """Every bad value of a new run: exit 2, one line, no workdir created, and
  the teacher it may read left byte for byte as it was."""
  args, expected = BAD_INPUTS[name]
  new = tmp_path / 'new'
  config = [] if any(a.startswith('--config=') for a in args) else list(SMOKE)
  before = snapshot(trained)
  code, stderr = run_launcher(
    *config, *_fill(args, trained, new), f'--workdir={new}'
  )
  assert expected in error_line(code, stderr)
  assert not new.exists()
  assert snapshot(trained) == before


@pytest.mark.parametrize('name', sorted(RESUME_MISMATCHES))
def test_resume_with_another_run_config_is_refused(name, trained):
  args, expected = RESUME_MISMATCHES[name]
  before = snapshot(trained)
  code, stderr = run_launcher(*TRAINED, *args, f'--workdir={trained}')
  assert expected in error_line(code, stderr)
  assert snapshot(trained) == before


@pytest.mark.parametrize(
  'args,expected',
  [
    (['--config.eval_batch_size=0'], 'config.eval_batch_size=0'),
    (['--config.checkpoint=middle'], "config.checkpoint='middle' is unknown"),
  ],
)
def test_bad_eval_values_are_one_line(trained, args, expected):
  before = snapshot(trained)
  code, stderr = run_launcher(
    '--config=configs/eval.py', f'--config.workdir={trained}', *args
  )
  assert expected in error_line(code, stderr)
  assert snapshot(trained) == before


def test_a_held_workdir_is_refused_naming_its_holder(trained):
  with workdir_lock.WorkdirLock(str(trained)):
    before = snapshot(trained)
    code, stderr = run_launcher(*TRAINED, f'--workdir={trained}')
    after = snapshot(trained)
  line = error_line(code, stderr)
  assert f'is in use by process {os.getpid()} on host' in line
  assert after == before


def test_bad_value_in_a_real_process_exits_2_before_writing(tmp_path):
  """The exit-code path outside pytest: a fresh interpreter, a bad value."""
  new = tmp_path / 'new'
  result = subprocess.run(
    [
      sys.executable,
      str(ROOT / 'launch.py'),
      *SMOKE,
      '--config.icc.lamda=1',
      f'--workdir={new}',
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
  )
  assert 'no such config field: lamda (did you mean "lam"' in error_line(
    result.returncode, result.stderr
  )
  assert not new.exists()


def test_student_data_must_have_the_teacher_image_shape(trained):
  """The shape recorded with the teacher's checkpoint is what the student's
  images are checked against (channels included)."""
  from icckd_jax.stages import student  # pylint: disable=g-import-not-at-top
  from configs import teacher  # pylint: disable=g-import-not-at-top

  ckpts = checkpoint.Checkpoints(str(trained), read_only=True)
  shape = ckpts.input_shape('last')
  ckpts.close()
  assert shape == [32, 32, 3]
  data = teacher.get_config('smoke').dataset
  mine = spec.data_request(data)
  teacher_source.check_same_data(mine, data, (32, 32, 3), shape)
  with pytest.raises(
    student.UserError,
    match=r'images of shape \(32, 32, 1\)'
    r'.* trained on \(32, 32, 3\)',
  ):
    teacher_source.check_same_data(mine, data, (32, 32, 1), shape)


def test_loss_and_state_checks_catch_what_they_must():
  """check_losses: a finite loss 100x the first step's is divergence;
  check_state: NaN only in BatchNorm statistics is divergence too."""

  class NoCheckpoints:
    def latest_epoch(self):
      return 3

  ckpts = NoCheckpoints()
  divergence.check_losses(np.array([2.3, 50.0, 229.0]), 1, 2.3, ckpts)
  with pytest.raises(
    divergence.Diverged, match='loss 231 at step 8 .*last good: epoch 3'
  ):
    divergence.check_losses(np.array([2.0, 231.0]), 7, 2.3, ckpts)
  with pytest.raises(divergence.Diverged, match='loss nan at step 2'):
    divergence.check_losses(np.array([2.0, np.nan]), 1, 2.3, ckpts)
  state = TrainState(
    step=jnp.zeros((), jnp.int32),
    params={'w': jnp.ones(3)},
    batch_stats={'mean': jnp.zeros(3)},
    opt_state=({'m': jnp.zeros(3)},),
  )
  divergence.check_state(state, 5, ckpts)
  with pytest.raises(
    divergence.Diverged, match=r'state arrays at step 5 .*mean'
  ):
    divergence.check_state(
      state.replace(batch_stats={'mean': jnp.array([0.0, jnp.nan, 0.0])}),
      5,
      ckpts,
    )
  with pytest.raises(divergence.Diverged, match='1 state arrays'):
    divergence.check_state(
      state.replace(opt_state=({'m': jnp.array([jnp.inf, 0.0, 0.0])},)),
      5,
      ckpts,
    )


def test_diverging_run_keeps_its_good_checkpoints(tmp_path, caplog):
  """The learning rate jumps x1e6 after epoch 1: epoch 1 is saved, epoch 2
  diverges; with keep_checkpoints=1 the good checkpoint stays, NaN-free,
  with its config.json. A stale
  memory record of a run killed before its first checkpoint is dropped. The
  run's header comes before compiling."""
  caplog.set_level(logging.INFO)
  # absl's own logger level follows --verbosity, which an earlier in-process
  # test of this worker may have left above INFO.
  caplog.set_level(logging.INFO, logger='absl')
  workdir = tmp_path / 'run'
  workdir.mkdir()
  (workdir / 'metrics.jsonl').write_text(
    '{"kind": "memory", "step": 0}\n{"kind": "train", "step": 4}\n'
  )
  args = (
    *TRAINED,
    '--config.lr_decay_epochs=(1,)',
    '--config.lr_decay_rate=1e6',
    '--config.keep_checkpoints=1',
    f'--workdir={workdir}',
  )
  line = error_line(*run_launcher(*args))
  assert 'training diverged' in line and 'last good: epoch 1' in line
  log = caplog.text
  assert log.index('64 train / 128 test images 32x32x3') < log.index(
    'Compiling the train step'
  )
  for shown in (
    '2 steps per epoch x 2 epochs',
    'parameters; 1 cpu device(s)',
    'compute dtype float32',
    'a new run',
  ):
    assert shown in log, shown
  assert sorted(os.listdir(workdir / 'checkpoints')) == ['1']
  assert not os.listdir(workdir / 'preempted')
  state, meta = restore_state(workdir)
  assert meta['epoch'] == 1
  for leaf in jax.tree.leaves(state):
    assert np.all(np.isfinite(leaf))
  saved = json.loads((workdir / 'config.json').read_text())
  assert saved['keep_checkpoints'] == 1
  assert [r['kind'] for r in metric_writer.read_records(str(workdir))].count(
    'memory'
  ) == 1


def _truncate_largest(directory: pathlib.Path) -> pathlib.Path:
  largest = max(
    (p for p in directory.rglob('*') if p.is_file()),
    key=lambda p: p.stat().st_size,
  )
  with open(largest, 'r+b') as f:
    f.truncate(64)
  return largest


def test_damaged_latest_checkpoint_falls_back(trained, tmp_path):
  """A truncated file in checkpoints/2: evaluation uses epoch 1 and leaves
  the workdir alone; resuming moves checkpoint 2 aside intact (never
  deleted) and trains on from epoch 1; a damaged only-checkpoint is one
  line and exit 2."""
  workdir = tmp_path / 'run'
  shutil.copytree(trained, workdir)
  _truncate_largest(workdir / 'checkpoints' / '2' / 'state')
  damaged = snapshot(workdir / 'checkpoints' / '2')

  code, stderr = run_launcher(
    '--config=configs/eval.py',
    f'--config.workdir={workdir}',
    '--config.checkpoint=last',
  )
  assert code == 0, stderr[-2000:]
  assert json.loads((workdir / 'eval_last.json').read_text())['epoch'] == 1
  assert snapshot(workdir / 'checkpoints' / '2') == damaged

  code, stderr = run_launcher(
    *TRAINED, '--config.num_epochs=3', f'--workdir={workdir}'
  )
  assert code == 0, stderr[-2000:]
  assert snapshot(workdir / 'damaged' / 'checkpoints-2') == damaged
  assert sorted(os.listdir(workdir / 'checkpoints')) == ['2', '3']
  epochs = metric_writer.read_records(str(workdir), 'epoch')
  assert [r['epoch'] for r in epochs] == [1, 2, 3]

  best = workdir / 'best'
  _truncate_largest(best / os.listdir(best)[0] / 'state')
  line = error_line(
    *run_launcher('--config=configs/eval.py', f'--config.workdir={workdir}')
  )
  assert 'no intact best checkpoint' in line


def test_metrics_file_is_repaired_or_rebuilt_on_rerun(trained, tmp_path):
  """A finished run rerun with its metrics.jsonl truncated mid-line, or
  deleted: no crash, the same summary; the torn line dropped and every
  whole one kept; a missing file said once."""
  workdir = tmp_path / 'run'
  shutil.copytree(trained, workdir)
  path = workdir / 'metrics.jsonl'
  original = metric_writer.read_records(str(workdir))
  summary = json.loads((workdir / 'summary.json').read_text())
  path.write_bytes(path.read_bytes()[:-40])
  code, stderr = run_launcher(*TRAINED, f'--workdir={workdir}')
  assert code == 0, stderr[-2000:]
  assert original[-1]['kind'] == 'epoch'
  assert metric_writer.read_records(str(workdir)) == original[:-1]
  assert len(path.read_text().splitlines()) == len(original) - 1
  # The file is the only record: deleted, it is said once, and the rerun
  # goes on with the summary the checkpoint holds.
  path.unlink()
  code, stderr = run_launcher(*TRAINED, f'--workdir={workdir}')
  assert code == 0, stderr[-2000:]
  assert stderr.count('metrics.jsonl is missing') == 1, stderr[-2000:]
  assert 'records of the steps before 4 are gone' in stderr
  assert metric_writer.read_records(str(workdir)) == []
  assert summary['final_top1'] is not None
  assert (
    json.loads((workdir / 'summary.json').read_text())['final_top1']
    == summary['final_top1']
  )


def _non_array_bytes(checkpoint_dir: pathlib.Path) -> int:
  """The bytes of a checkpoint's files outside its arrays (`state`)."""
  return sum(
    p.stat().st_size
    for p in checkpoint_dir.rglob('*')
    if p.is_file() and 'state' not in p.relative_to(checkpoint_dir).parts
  )


def test_checkpoint_metadata_does_not_grow_with_the_run(trained, tmp_path):
  """The part of a checkpoint beside its arrays is the same size at epoch 8
  as at epoch 2 (within 1 KiB): the run's records live in metrics.jsonl,
  on disk before the checkpoint that follows them."""
  workdir = tmp_path / 'run'
  shutil.copytree(trained, workdir)
  at_2 = _non_array_bytes(workdir / 'checkpoints' / '2')
  code, stderr = run_launcher(
    *TRAINED, '--config.num_epochs=8', f'--workdir={workdir}'
  )
  assert code == 0, stderr[-2000:]
  at_8 = _non_array_bytes(workdir / 'checkpoints' / '8')
  assert abs(at_8 - at_2) <= 1024, (at_2, at_8)
  _, meta = restore_state(workdir)
  assert meta['epoch'] == 8 and 'history' not in meta
  epochs = metric_writer.read_records(str(workdir), 'epoch')
  assert [r['epoch'] for r in epochs] == list(range(1, 9))
  assert all(len(r['step_losses']) == 2 for r in epochs)


def _save_meta_as_before(monkeypatch, workdir) -> None:
  """Checkpoints of the run in `workdir` saved the way the code before the
  run's record left them did: every epoch's record, as metrics.jsonl has
  it, in meta['history'], and no 'test'."""
  original = resume.checkpoint_meta

  def meta_with_history(at, epoch, input_shape, **extra):
    meta = original(at, epoch, input_shape, **extra)
    del meta['test']
    meta['history'] = metric_writer.read_records(str(workdir), 'epoch') or None
    return meta

  monkeypatch.setattr(resume, 'checkpoint_meta', meta_with_history)


def test_checkpoints_with_history_in_meta_still_resume_and_evaluate(
  trained, tmp_path, monkeypatch
):
  """A run whose checkpoints carry 'history' (as before the records left
  them), stopped mid-epoch 2: it evaluates, and resumes to the state,
  metadata and records of the uninterrupted `trained` run, bit for bit; a
  finished one rerun keeps its summary's top-1."""
  workdir = tmp_path / 'run'
  calls = []

  def requested(self, step):
    del self, step
    calls.append(1)
    return signal.SIGTERM if len(calls) == 4 else 0  # before step 4 of 4

  with monkeypatch.context() as patch:
    _save_meta_as_before(patch, workdir)
    patch.setattr(preemption.StopRequest, 'requested', requested)
    code, stderr = run_launcher(*TRAINED, f'--workdir={workdir}')
  assert code == 128 + signal.SIGTERM, stderr[-2000:]
  _, old_meta = restore_state(workdir)
  assert old_meta['epoch'] == 1 and len(old_meta['history']) == 1
  assert 'test' not in old_meta
  assert os.listdir(workdir / 'preempted') == ['3']

  code, stderr = run_launcher(
    '--config=configs/eval.py', f'--config.workdir={workdir}'
  )
  assert code == 0, stderr[-2000:]
  assert json.loads((workdir / 'eval_best.json').read_text())['epoch'] == 1

  code, stderr = run_launcher(*TRAINED, f'--workdir={workdir}')
  assert code == 0, stderr[-2000:]
  assert_same_run(trained, workdir)

  finished = tmp_path / 'finished'
  with monkeypatch.context() as patch:
    _save_meta_as_before(patch, finished)
    code, stderr = run_launcher(*TRAINED, f'--workdir={finished}')
  assert code == 0, stderr[-2000:]
  summary = json.loads((finished / 'summary.json').read_text())
  code, stderr = run_launcher(*TRAINED, f'--workdir={finished}')
  assert code == 0, stderr[-2000:]
  rerun = json.loads((finished / 'summary.json').read_text())
  assert summary['final_top1'] is not None
  assert rerun['final_top1'] == summary['final_top1']


def test_tensorboard_purges_steps_past_the_resumed_one(
  trained, tmp_path, monkeypatch
):
  purge_steps = []

  class Recorder:
    def __init__(self, logdir, purge_step=None):
      del logdir
      purge_steps.append(purge_step)

    def close(self):
      pass

  monkeypatch.setattr(metric_writer, 'SummaryWriter', Recorder)
  metric_writer.MetricWriter(str(trained), 12).close()
  assert purge_steps == [13]


# A run long enough to be stopped mid-epoch: 8 steps per epoch, 2 epochs,
# every step logged, the objective and its cache on; on 2 devices.
PREEMPT_ARGS = (*SMOKE, '--config.log_every_steps=1')


@pytest.fixture(scope='module')
def straight_run(tmp_path_factory) -> pathlib.Path:
  """PREEMPT_ARGS uninterrupted, one process, two devices."""
  workdir = tmp_path_factory.mktemp('straight') / 'run'
  code, stderr = run_launcher(
    *PREEMPT_ARGS, '--config.num_devices=2', f'--workdir={workdir}'
  )
  assert code == 0, stderr[-2000:]
  return workdir


@pytest.mark.slow
def test_sigterm_mid_epoch_saves_and_resumes_bit_for_bit(
  straight_run, tmp_path
):
  """A second run on a busy workdir is refused at once; SIGTERM mid-epoch
  saves at the next step and exits 143; the rerun ends bit-identical to the
  uninterrupted run, state and metrics (timings aside)."""
  workdir = tmp_path / 'run'
  proc = helpers.launch_process(
    *PREEMPT_ARGS, f'--workdir={workdir}', devices=2
  )
  deadline = time.time() + 300

  def wait_for(condition):
    while not condition():
      assert proc.poll() is None and time.time() < deadline, proc.stderr.read()[
        -3000:
      ]
      time.sleep(0.05)

  # The lock is taken before compiling, so the second run meets it while
  # the first is still seconds away from its first step.
  wait_for(
    lambda: (
      f'process {proc.pid} '
      in workdir_lock.describe_holder(str(workdir / layout.LOCK_FILE))
    )
  )
  line = error_line(*run_launcher(*PREEMPT_ARGS, f'--workdir={workdir}'))
  assert f'is in use by process {proc.pid}' in line
  wait_for(
    lambda: any(
      r['kind'] == 'train' and r['step'] >= 1
      for r in metric_writer.read_records(str(workdir))
    )
  )
  proc.send_signal(signal.SIGTERM)
  _, stderr = proc.communicate(timeout=300)
  assert proc.returncode == 128 + signal.SIGTERM, stderr[-2000:]
  assert 'preempted: stopped by SIGTERM at step' in stderr
  (step,) = (int(s) for s in os.listdir(workdir / 'preempted'))
  assert step % 8, f'stopped at step {step}, an epoch boundary: not mid-epoch'

  code, stderr = run_launcher(
    *PREEMPT_ARGS, '--config.num_devices=2', f'--workdir={workdir}'
  )
  assert code == 0, stderr[-2000:]
  assert_same_run(straight_run, workdir)
  assert not os.listdir(workdir / 'preempted')


@pytest.mark.slow
def test_two_processes_train_like_one_process_with_two_devices(
  straight_run, tmp_path
):
  """--multihost for real: two processes on localhost, one CPU device each,
  coordinated by jax.distributed (gloo collectives), write one checkpoint
  that restores in this process and equals the one-process run's."""
  workdir = tmp_path / 'run'
  helpers.wait_for_success(
    helpers.start_processes(*PREEMPT_ARGS, f'--workdir={workdir}')
  )
  state_a, meta_a = restore_state(straight_run)
  state_b, meta_b = restore_state(workdir)
  differences = jax.tree.leaves(
    jax.tree.map(
      lambda a, b: float(
        np.max(
          np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)),
          initial=0,
        )
      ),
      state_a,
      state_b,
    )
  )
  print(f'two processes vs one: max abs difference {max(differences)!r}')
  jax.tree.map(np.testing.assert_array_equal, state_a, state_b)
  assert meta_a['epoch'] == meta_b['epoch'] == 2


@pytest.mark.slow
def test_sigterm_on_one_of_two_processes_stops_both_at_the_same_step(
  straight_run, tmp_path
):
  """--multihost, two processes agreeing every 3 steps (not every step):
  SIGTERM to process 1 alone stops both at the same step, a multiple of 3,
  within 3 steps of the signal, saved in WORKDIR/preempted; the rerun (one
  process, two devices) ends bit-identical to the uninterrupted run."""
  workdir = tmp_path / 'run'
  procs = helpers.start_processes(
    *PREEMPT_ARGS,
    '--config.preemption_check_every_steps=3',
    f'--workdir={workdir}',
  )
  deadline = time.time() + 480
  while not any(
    r['kind'] == 'train' for r in metric_writer.read_records(str(workdir))
  ):
    for proc in procs:
      assert proc.poll() is None, proc.communicate()[1][-3000:]
    assert time.time() < deadline
    time.sleep(0.05)
  signalled_after = max(
    r['step'] for r in metric_writer.read_records(str(workdir), 'train')
  )
  procs[1].send_signal(signal.SIGTERM)
  stops = []
  for proc in procs:
    _, stderr = proc.communicate(timeout=540)
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-3000:]
    (line,) = [l for l in stderr.splitlines() if 'stopped by SIGTERM' in l]
    stops.append(int(line.split(' at step ')[1].split(';')[0]))
  assert stops[0] == stops[1] and stops[0] % 3 == 0, stops
  # The signal came after `signalled_after` steps, perhaps a few later.
  assert signalled_after <= stops[0], (signalled_after, stops)
  assert os.listdir(workdir / 'preempted') == [str(stops[0])]

  code, stderr = run_launcher(
    *PREEMPT_ARGS, '--config.num_devices=2', f'--workdir={workdir}'
  )
  assert code == 0, stderr[-2000:]
  state_a, meta_a = restore_state(straight_run)
  state_b, meta_b = restore_state(workdir)
  jax.tree.map(np.testing.assert_array_equal, state_a, state_b)
  assert meta_a == meta_b


def test_several_processes_agree_on_a_stop_every_n_steps(monkeypatch):
  """On two processes the stop check runs its collective at steps 0, 3, 6,
  9 of 0..10 (every=3), not at every step, and a signal that arrived at step
  4 stops at step 6."""
  gathered = []

  def allgather(value):
    gathered.append(int(value))
    return np.array([value, 0])

  monkeypatch.setattr(jax, 'process_count', lambda: 2)
  monkeypatch.setattr(
    preemption.multihost_utils, 'process_allgather', allgather
  )
  stop = preemption.StopRequest(every=3)
  stops = []
  for step in range(11):
    if step == 4:
      stop.signum = signal.SIGTERM
    stops.append(stop.requested(step))
  assert len(gathered) == 4
  assert stops.index(signal.SIGTERM) == 6 and not any(stops[:6])
