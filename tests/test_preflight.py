"""The checks before a run writes anything (stages/preflight.py): a train
step too big for the device's memory, a workdir whose checkpoints' paths
would not fit the system's limits, and a write probe on a full disk; each
refused with one line, nothing left behind.
"""

import errno

import pytest

from icckd_jax.runs import memory
from icckd_jax.stages import preflight
from helpers import TEACHER
from launch_in_process import error_line, run_launcher
from helpers import SMOKE


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


def test_a_workdir_with_no_room_for_its_checkpoints_paths_is_refused(tmp_path):
  """About 4,000 bytes of path, each name under 255: the write probe would
  pass, every save would fail. Refused before anything is written."""
  parts = ['d' * 250] * 16
  workdir = tmp_path.joinpath(*parts)
  code, stderr = run_launcher(*TEACHER, f'--workdir={workdir}')
  line = error_line(code, stderr)
  assert 'bytes long' in line and 'shorter --workdir' in line
  assert not (tmp_path / parts[0]).exists()


def test_a_workdir_name_over_the_name_limit_is_refused(tmp_path):
  workdir = tmp_path / ('n' * 300) / 'run'
  with pytest.raises(preflight.UserError, match='300 bytes, over the'):
    preflight.prepare_workdir(str(workdir))
  assert not list(tmp_path.iterdir())
