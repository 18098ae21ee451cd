"""The hostile cases that once lost work, printed a traceback, hung or were
silently accepted: each must now be one `error:` line and exit code 2 (or a
clean exit), with nothing good moved, deleted or overwritten.

In process wherever the behaviour allows it; the multi-host waits need real
processes.
"""

import errno
import json
import pathlib
import shutil
import subprocess
import sys
import time

import pytest

from conftest import ROOT
from test_robust_runs import SMOKE, TRAINED, error_line, run_launcher, snapshot
from test_robust_runs import trained  # noqa: F401  (the fixture)
from icckd_jax.runs import memory
from icckd_jax.training import checkpoint
from icckd_jax.stages import evaluate_checkpoint
from icckd_jax.stages import preflight
from icckd_jax.runs import layout
import helpers


@pytest.fixture
def copy(trained, tmp_path) -> pathlib.Path:  # noqa: F811
  """A private copy of the trained run, for cases that edit it."""
  target = tmp_path / 'run'
  shutil.copytree(trained, target)
  (target / '.lock').unlink(missing_ok=True)
  return target


def _edit_config(workdir: pathlib.Path, **changes) -> None:
  path = workdir / 'config.json'
  saved = json.loads(path.read_text())
  saved.update(changes)
  path.write_text(json.dumps(saved))


def test_edited_config_json_cannot_pass_another_model_off_as_damage(copy):
  """Case 1: config.json says resnet14, the checkpoints hold resnet8. Two
  attempts: both refused from the checkpoints' own config, nothing moved."""
  _edit_config(copy, model='resnet14')
  before = snapshot(copy)
  for _ in range(2):
    code, stderr = run_launcher(
      *TRAINED,
      '--config.model=resnet14',
      '--config.num_epochs=3',
      f'--workdir={copy}',
    )
    line = error_line(code, stderr)
    assert "model='resnet8' (now 'resnet14')" in line
    assert 'checkpoints' in line
  assert not (copy / layout.DAMAGED_DIR).exists()
  assert snapshot(copy) == before


@pytest.mark.parametrize(
  'args,expected',
  [
    (['--config.model=resnet14'], "model='resnet8' (now 'resnet14')"),
    (['--config.learning_rate=0.2'], 'learning_rate=0.05 (now 0.2)'),
  ],
)
def test_removed_config_json_still_refuses_another_run(copy, args, expected):
  """Cases 2 and 3: following the advice to move config.json aside does not
  let another model or learning rate resume the checkpoints."""
  (copy / 'config.json').unlink()
  before = snapshot(copy)
  code, stderr = run_launcher(
    *TRAINED, *args, '--config.num_epochs=3', f'--workdir={copy}'
  )
  assert expected in error_line(code, stderr)
  assert snapshot(copy) == before
  assert not (copy / layout.DAMAGED_DIR).exists()


def test_metrics_line_with_a_non_integer_step_is_skipped(copy):
  """Case 4: an edited metrics.jsonl line does not stop the resume."""
  with (copy / 'metrics.jsonl').open('a') as f:
    f.write(json.dumps({'kind': 'train', 'step': 'x'}) + '\n')
  code, stderr = run_launcher(
    *TRAINED, '--config.num_epochs=3', f'--workdir={copy}'
  )
  assert code == 0, stderr[-2000:]
  assert json.loads((copy / 'summary.json').read_text())['epochs'] == 3


def test_disk_full_during_a_save_is_one_line_and_leaves_no_partial(
  copy, monkeypatch
):
  """Case 5: the save fails with ENOSPC after Orbax made its temporary
  directory: one line about the disk, exit 2, the temporary directory
  removed and the earlier checkpoints intact."""
  partial = copy / 'checkpoints' / f'3{checkpoint.PARTIAL_SUFFIX}-1'

  def full_disk(self, epoch, *args, **kwargs):
    partial.mkdir(parents=True)
    (partial / 'part').write_bytes(b'x' * 10)
    raise OSError(errno.ENOSPC, 'No space left on device')

  monkeypatch.setattr(checkpoint.Checkpoints, 'save', full_disk)
  intact = snapshot(copy / 'checkpoints')
  code, stderr = run_launcher(
    *TRAINED, '--config.num_epochs=3', f'--workdir={copy}'
  )
  assert 'disk holding' in error_line(code, stderr)
  assert not partial.exists()
  assert snapshot(copy / 'checkpoints') == intact


def test_evaluating_a_read_only_workdir_prints_the_result(
  trained,  # noqa: F811  (the imported fixture)
  monkeypatch,
  capsys,
  caplog,
):
  """Case 6: eval_best.json cannot be written; the result is printed and a
  warning says where it could not go. (Root ignores file modes, so the
  refusal is simulated at `open`.)"""
  real_open = open

  def read_only(path, mode='r', *args, **kwargs):
    if 'w' in mode and str(path).startswith(str(trained)):
      raise PermissionError(errno.EACCES, 'Permission denied', str(path))
    return real_open(path, mode, *args, **kwargs)

  monkeypatch.setattr(evaluate_checkpoint, 'open', read_only, raising=False)
  before = snapshot(trained)
  code, stderr = run_launcher(
    '--config=configs/eval.py', f'--config.workdir={trained}'
  )
  assert code in (0, None), stderr[-2000:]
  assert 'Traceback' not in stderr
  assert any(
    'Could not write' in r.getMessage() and 'eval_best.json' in r.getMessage()
    for r in caplog.records
  )
  printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert 0 <= printed['top1'] <= 1 and printed['count'] > 0
  assert snapshot(trained) == before


def test_a_step_too_big_for_memory_is_refused_before_writing(
  tmp_path, monkeypatch
):
  """Case 7: the compiled step's memory against what the device has, checked
  before the workdir exists (the available figure is made small here)."""
  monkeypatch.setattr(memory, 'available_memory', lambda device=None: 1024)
  new = tmp_path / 'new'
  code, stderr = run_launcher(*SMOKE, f'--workdir={new}')
  line = error_line(code, stderr)
  assert 'the train step needs' in line and 'GiB available' in line
  assert not new.exists()


def test_ctrl_c_before_training_exits_130_without_a_traceback(
  tmp_path, monkeypatch
):
  """Case 8: an interrupt while compiling (here: raised from the ahead-of-
  time compilation) is a clean exit 130."""

  def interrupted(*args, **kwargs):
    raise KeyboardInterrupt

  monkeypatch.setattr(preflight, 'check_step_memory', interrupted)
  code, stderr = run_launcher(*SMOKE, f'--workdir={tmp_path / "new"}')
  assert code == 130
  assert 'Traceback' not in stderr and 'interrupted' in stderr


@pytest.mark.parametrize('process_id', [0, 1])
def test_a_peer_that_never_comes_is_a_bounded_wait(tmp_path, process_id):
  """Cases 9 and 10: alone in a two-process cluster, either process says
  what it waits for, gives up after --multihost_timeout, one line, exit 2,
  nothing written."""
  new = tmp_path / 'new'
  start = time.monotonic()
  result = subprocess.run(
    [
      sys.executable,
      str(ROOT / 'launch.py'),
      *SMOKE,
      f'--workdir={new}',
      '--multihost',
      f'--coordinator_address=127.0.0.1:{helpers.free_port()}',
      '--num_processes=2',
      f'--process_id={process_id}',
      '--multihost_timeout=3',
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert time.monotonic() - start < 90
  line = error_line(result.returncode, result.stderr)
  assert 'did not all connect' in line and '--multihost_timeout' in line
  assert 'Waiting up to 3 s for 2 processes' in result.stderr
  assert not new.exists()


def test_cluster_flags_without_multihost_are_refused(tmp_path):
  """Case 11."""
  new = tmp_path / 'new'
  code, stderr = run_launcher(
    *SMOKE, '--num_processes=2', '--process_id=1', f'--workdir={new}'
  )
  line = error_line(code, stderr)
  assert '--num_processes, --process_id given without --multihost' in line
  assert not new.exists()


def test_a_path_for_the_synthetic_set_is_refused(tmp_path):
  """Case 12."""
  new = tmp_path / 'new'
  code, stderr = run_launcher(
    *SMOKE, f'--config.dataset.path={tmp_path}', f'--workdir={new}'
  )
  line = error_line(code, stderr)
  assert "'synthetic' data set is generated" in line
  assert not new.exists()


def test_a_student_on_other_data_than_its_teacher_is_refused(trained, tmp_path):  # noqa: F811
  """Case 13: the synthetic set drawn from another seed."""
  new = tmp_path / 'student'
  before = snapshot(trained)
  code, stderr = run_launcher(
    '--config=configs/student.py:smoke',
    f'--config.teacher.workdir={trained}',
    '--config.dataset.num_train=64',
    '--config.dataset.seed=7',
    f'--workdir={new}',
  )
  assert (
    'config.dataset.seed=7 but the teacher was trained on dataset.seed=0'
  ) in error_line(code, stderr)
  assert not new.exists()
  assert snapshot(trained) == before


@pytest.mark.parametrize(
  'args,expected',
  [
    (
      ['--config=configs/pipeline.py:smoke', '--config.student.model=resnet9'],
      "config.student.model='resnet9' is unknown",
    ),
    (
      [
        '--config=configs/ablation_margin.py:smoke',
        '--config.base.student.model=resnet9',
      ],
      "setting 'delta=0.2' seed 0: config.student.model='resnet9' is unknown",
    ),
    (
      [
        '--config=configs/ablation_margin.py:smoke',
        '--config.base.teacher.icc.margin_kind=rank',
      ],
      "config.teacher.icc.margin_kind='rank' is unknown",
    ),
  ],
)
def test_every_stage_is_checked_before_the_first_starts(
  tmp_path, args, expected
):
  """Cases 14 and 15: a bad student field of a pipeline or a sweep is found
  before any teacher trains, named with its stage (and setting)."""
  new = tmp_path / 'new'
  code, stderr = run_launcher(*args, f'--workdir={new}')
  assert expected in error_line(code, stderr)
  assert not new.exists()


def test_a_full_disk_leaves_no_write_probe(tmp_path, monkeypatch):
  """A workdir whose probe file is created but cannot be written."""
  real_open = open

  class Full:
    def __init__(self, path):
      self._file = real_open(path, 'w')

    def __enter__(self):
      return self

    def write(self, _):
      raise OSError(errno.ENOSPC, 'No space left on device')

    def __exit__(self, *exc):
      self._file.close()

  monkeypatch.setattr(
    preflight, 'open', lambda path, mode='r': Full(path), raising=False
  )
  with pytest.raises(preflight.UserError, match='not writable: No space left'):
    preflight.prepare_workdir(str(tmp_path / 'w'))
  assert list((tmp_path / 'w').iterdir()) == []
