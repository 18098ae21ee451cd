"""The trainer end to end: launch.py on mock CIFAR-100, resume after a kill,
evaluation (docs/method.md §7.2, §7.5, §7.6), and a short real-data run.

launch.py runs in this process (tests/launch_in_process.py); only the run
that is SIGKILLed is a real process."""

import json

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from icckd_jax.stages import evaluate_checkpoint
from icckd_jax.training import metric_writer
from icckd_jax.runs import spec
from helpers import records_without_timings, restore_state
import helpers
from launch_in_process import error_line, launch


@pytest.mark.slow
def test_launch_one_step_on_mock_tfds_set(tmp_path):
  """The full launch.py path (flags, config, data, train, eval, checkpoint)
  in-process, on TFDS's mock SVHN (CIFAR reads its official archives)."""
  workdir = tmp_path / 'run'
  with tfds.testing.mock_data(num_examples=40):
    launch(
      '--config=configs/teacher.py:smoke',
      f'--workdir={workdir}',
      '--config.dataset.name=svhn_cropped',
      '--config.num_epochs=1',
      '--config.batch_size=32',
      '--config.eval_batch_size=32',
    )
  steps = metric_writer.read_records(str(workdir), 'train')
  epochs = metric_writer.read_records(str(workdir), 'epoch')
  assert [r['step'] for r in steps] == [1]
  assert len(epochs) == 1 and epochs[0]['test_count'] == 40
  for key in (
    'loss',
    'ce',
    'intra',
    'accuracy',
    'learning_rate',
    'images_per_second',
    'step_time',
    'gate_pass_rate',
  ):
    assert np.isfinite(steps[0][key]), key
  state, meta = restore_state(workdir)
  assert meta['epoch'] == 1 and int(state['step']) == 1
  assert state['params']['model']['fc']['kernel'].shape[-1] == 10
  assert list((workdir / 'tensorboard').glob('events.out.tfevents.*'))
  saved = json.loads((workdir / 'config.json').read_text())
  assert saved['dataset']['name'] == 'svhn_cropped'


RESUME_ARGS = (
  '--config=configs/teacher.py:smoke',
  '--config.num_epochs=2',
  '--config.dataset.num_train=512',
  '--config.batch_size=32',
  '--config.checkpoint_every_epochs=1',
)


@pytest.mark.slow
def test_resume_after_kill_matches_an_uninterrupted_run(tmp_path):
  """docs/method.md §7.2 with the objective and its cache on: a run SIGKILLed in its
  second epoch and restarted ends with the same state, cache and metrics."""
  straight, resumed = tmp_path / 'straight', tmp_path / 'resumed'
  launch(*RESUME_ARGS, f'--workdir={straight}')

  helpers.kill_after_checkpoint(RESUME_ARGS, resumed, resumed / 'checkpoints')
  launch(*RESUME_ARGS, f'--workdir={resumed}')

  state_a, meta_a = restore_state(straight)
  state_b, meta_b = restore_state(resumed)
  assert meta_a == meta_b
  assert meta_a['epoch'] == 2
  assert int(state_a['cache']['valid'].sum()) == 4
  jax.tree.map(np.testing.assert_array_equal, state_a, state_b)
  records_a = records_without_timings(straight)
  assert records_a == records_without_timings(resumed)
  assert [r['epoch'] for r in records_a if r['kind'] == 'epoch'] == [1, 2]


@pytest.fixture(scope='module')
def trained_on_four(tmp_path_factory):
  """A smoke teacher trained on 4 devices, 2 epochs."""
  workdir = tmp_path_factory.mktemp('four') / 'run'
  launch('--config=configs/teacher.py:smoke', f'--workdir={workdir}')
  return workdir


def test_eval_counts_every_example_once_on_any_device_count(trained_on_four):
  """docs/method.md §7.5 and §7.6: 128 test examples in batches of 48 (padded, masked);
  the same accuracy on 1, 2 and 4 devices as a direct NumPy count."""
  from icckd_jax import models  # pylint: disable=g-import-not-at-top
  from icckd_jax.data import datasets  # pylint: disable=g-import-not-at-top
  from configs import teacher  # pylint: disable=g-import-not-at-top

  results = {
    n: evaluate_checkpoint.evaluate_checkpoint(
      str(trained_on_four), 'last', n, batch_size=48
    )
    for n in (1, 2, 4)
  }
  dataset = datasets.load(
    spec.data_request(teacher.get_config('smoke').dataset)
  )
  state, _ = restore_state(trained_on_four)
  model = models.create_model('resnet8', dataset.num_classes)
  x = (dataset.test_images.astype(np.float32) - dataset.mean) / dataset.std
  logits, _ = model.apply(
    {'params': state['params']['model'], 'batch_stats': state['batch_stats']},
    x,
    train=False,
  )
  expected = float(np.mean(np.argmax(logits, -1) == dataset.test_labels))
  for n, r in results.items():
    assert r['count'] == len(dataset.test_labels) == 128, n
    assert r['devices'] == n
    assert r['top1'] == pytest.approx(expected, abs=1e-9), n
    assert r['loss'] == pytest.approx(results[1]['loss'], rel=1e-5)
  assert (
    json.loads((trained_on_four / 'eval_last.json').read_text())['count'] == 128
  )


def _error_line(result):
  return error_line(result.returncode, result.stderr)


@pytest.mark.parametrize(
  'args,expected',
  [
    (['--config.model=resnet9'], "config.model='resnet9' is unknown"),
    (['--config.dataset.name=no_such_set'], 'no_such_set'),
    (
      ['--config.batch_size=30'],
      'config.batch_size=30 is not divisible by the 4 devices',
    ),
    (['--config.icc.margin_kind=rank'], 'config.icc.margin_kind'),
  ],
)
def test_config_errors_are_one_line_and_exit_2(tmp_path, args, expected):
  result = launch(
    '--config=configs/teacher.py:smoke',
    f'--workdir={tmp_path / "run"}',
    *args,
    check=False,
  )
  assert expected in _error_line(result)
  assert not (tmp_path / 'run' / 'checkpoints').exists()


@pytest.mark.parametrize(
  'args,expected',
  [
    (['--config=configs/teacher.py:bogus'], "unknown config argument 'bogus'"),
    (
      ['--config=configs/teacher.py', '--config.nonexistent=1'],
      'no such config field: nonexistent',
    ),
    (
      ['--config=configs/teacher.py', '--config.batch_size=abc'],
      'flag --config.batch_size=abc',
    ),
    (
      ['--config=configs/absent.py'],
      "No such file or directory: 'configs/absent.py'",
    ),
  ],
)
def test_command_line_errors_are_one_line_and_exit_2(tmp_path, args, expected):
  result = launch(*args, f'--workdir={tmp_path / "run"}', check=False)
  assert expected in _error_line(result)


def test_unwritable_workdir_is_a_user_error(tmp_path):
  blocker = tmp_path / 'file'
  blocker.write_text('not a directory')
  result = launch(
    '--config=configs/teacher.py:smoke',
    f'--workdir={blocker / "run"}',
    check=False,
  )
  assert f'workdir {blocker / "run"} is not writable' in _error_line(result)


def test_missing_checkpoint_is_a_user_error(tmp_path):
  result = launch(
    '--config=configs/eval.py', f'--config.workdir={tmp_path}', check=False
  )
  assert 'no best checkpoint' in _error_line(result)
  result = launch(
    '--config=configs/eval.py',
    f'--config.workdir={tmp_path / "absent"}',
    check=False,
  )
  assert 'absent' in _error_line(result)


def test_teacher_without_cache_trains_and_checkpoints(tmp_path):
  """cache.size = 0, the cache ablation's "removed" setting, end to end."""
  workdir = tmp_path / 'run'
  launch(
    '--config=configs/teacher.py:smoke',
    '--config.cache.size=0',
    '--config.num_epochs=1',
    '--config.num_devices=1',
    f'--workdir={workdir}',
  )
  (epoch,) = metric_writer.read_records(str(workdir), 'epoch')
  assert epoch['neg_cache'] == 0.0 and epoch['cache_bytes'] == 0
  assert epoch['neg_in_batch'] > 0.0
  state, _ = restore_state(workdir)
  assert not jax.tree.leaves(state.get('cache'))
