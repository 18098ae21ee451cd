"""Resuming a run (training/resume.py, and runs/validate.py's check of a
workdir's config against its checkpoints'): another model or learning rate
is refused whether config.json was edited or removed, an edited metrics line
does not stop the resume, a full disk during a resumed save leaves no partial
checkpoint, and a resume past the new end is refused; each refusal is one
`error:` line and exit code 2 with nothing good moved, deleted or
overwritten.

The trained run these share (a module-scoped fixture, built once per module)
also serves two readers of a finished run: configs/eval.py on a read-only
workdir, and a student refused on other data than its teacher's.
"""

import errno
import json
import pathlib
import shutil

import pytest

from icckd_jax.runs import layout
from icckd_jax.stages import evaluate_checkpoint
from icckd_jax.training import checkpoint
from helpers import TEACHER
from launch_in_process import error_line, run_launcher
from helpers import TRAINED, snapshot


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


def test_resuming_past_the_new_end_is_refused(tmp_path):
  """A finished 2-epoch run resumed with num_epochs=1 is refused, its
  summary and checkpoints unchanged."""
  workdir = tmp_path / 'run'
  code, stderr = run_launcher(
    *TEACHER, '--config.num_epochs=2', f'--workdir={workdir}'
  )
  assert code == 0, stderr[-2000:]
  summary = (workdir / 'summary.json').read_bytes()
  code, stderr = run_launcher(
    *TEACHER, '--config.num_epochs=1', f'--workdir={workdir}'
  )
  assert 'past the 2 steps of config.num_epochs=1' in error_line(code, stderr)
  assert (workdir / 'summary.json').read_bytes() == summary


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
