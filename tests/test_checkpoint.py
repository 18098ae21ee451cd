"""Saves that fail in Orbax's background threads (training/checkpoint.py):
an I/O error or a full disk found at the next save or before the summary is
one line, exit code 2, with no summary.json beside a missing checkpoint and
no half-written one left.

In process where the behaviour allows it; what needs a real interpreter
(its exit, its stderr from background threads) is slow-marked.
"""

import errno
import os
import subprocess
import sys

import orbax.checkpoint as ocp
import pytest

from conftest import ROOT
from helpers import TEACHER
from launch_in_process import error_line, run_launcher


def _fail_meta_save(monkeypatch, epoch: int, error: OSError) -> None:
  """Makes the background write of the `meta` item of `epoch`'s checkpoint
  raise `error`, as a full disk or a path the system refuses would."""
  save_fn = ocp.JsonCheckpointHandler._save_fn  # pylint: disable=protected-access

  async def failing(self, x, directory):
    if isinstance(x, dict) and x.get('epoch') == epoch and 'best' in x:
      raise error
    await save_fn(self, x, directory)

  monkeypatch.setattr(ocp.JsonCheckpointHandler, '_save_fn', failing)


@pytest.mark.parametrize('epoch', [1, 2])
def test_a_failed_async_save_is_one_line_and_leaves_no_summary(
  tmp_path, monkeypatch, epoch
):
  """The save of epoch 1 (found at epoch 2's save) or of the last epoch
  (found before the summary) fails in the background: one line naming the
  checkpoints, exit 2, no summary.json beside a missing checkpoint."""
  workdir = tmp_path / 'run'
  with monkeypatch.context() as patch:
    _fail_meta_save(patch, epoch, OSError(errno.EIO, 'Input/output error'))
    code, stderr = run_launcher(
      *TEACHER, '--config.num_epochs=2', f'--workdir={workdir}'
    )
  line = error_line(code, stderr)
  assert 'saving a checkpoint in' in line and 'Input/output error' in line
  assert not (workdir / 'summary.json').exists()


def test_a_full_disk_in_a_background_save_is_one_line(tmp_path, monkeypatch):
  """ENOSPC in the background write of the last checkpoint: the disk's
  line, exit 2, epoch 1's checkpoint intact, no half-written one left."""
  workdir = tmp_path / 'run'
  with monkeypatch.context() as patch:
    _fail_meta_save(patch, 2, OSError(errno.ENOSPC, 'No space left on device'))
    code, stderr = run_launcher(
      *TEACHER, '--config.num_epochs=2', f'--workdir={workdir}'
    )
  assert 'disk holding' in error_line(code, stderr)
  assert not (workdir / 'summary.json').exists()
  assert sorted(os.listdir(workdir / 'checkpoints')) == ['1']


@pytest.mark.slow
def test_a_full_disk_mid_run_prints_no_traceback(tmp_path):
  """A real process whose epoch 2 save runs out of space in Orbax's
  background threads: one line, exit 2, no traceback from any thread."""
  wrapper = tmp_path / 'full_disk.py'
  wrapper.write_text(
    'import errno, sys\n'
    f'sys.path.insert(0, {str(ROOT)!r})\n'
    'import orbax.checkpoint as ocp\n'
    'save_fn = ocp.JsonCheckpointHandler._save_fn\n'
    'async def failing(self, x, directory):\n'
    "  if isinstance(x, dict) and x.get('epoch') == 2:\n"
    "    raise OSError(errno.ENOSPC, 'No space left on device')\n"
    '  await save_fn(self, x, directory)\n'
    'ocp.JsonCheckpointHandler._save_fn = failing\n'
    'import launch\n'
    'from absl import app\n'
    'sys.argv[0] = "launch.py"\n'
    'app.run(launch.main, flags_parser=launch.parse_flags)\n'
  )
  result = subprocess.run(
    [
      sys.executable,
      str(wrapper),
      *TEACHER,
      '--config.num_epochs=3',
      f'--workdir={tmp_path / "run"}',
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=300,
    check=False,
  )
  assert 'disk holding' in error_line(result.returncode, result.stderr)
  assert not (tmp_path / 'run' / 'summary.json').exists()
