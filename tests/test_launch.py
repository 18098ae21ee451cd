"""launch.py's own refusals and exits: Ctrl-C before training is exit 130
without a traceback, a multi-host peer that never comes is a bounded wait,
cluster flags need --multihost, and a sequence override given twice is
refused; each one line, exit code 2, nothing written.

The multi-host waits need real processes; the rest run in process.
"""

import subprocess
import sys
import time

import pytest

from conftest import ROOT
from icckd_jax.stages import preflight
import helpers
from helpers import TEACHER
from launch_in_process import error_line, refusal, run_launcher
from helpers import SMOKE


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
  line = refusal(
    tmp_path / 'new', *SMOKE, '--num_processes=2', '--process_id=1'
  )
  assert '--num_processes, --process_id given without --multihost' in line


def test_a_sequence_override_given_twice_is_refused(tmp_path):
  """ml_collections joins a tuple given twice ((0, 1) then (0,): [0, 1,
  0]); a scalar given twice keeps its last value, as absl does."""
  code, stderr = run_launcher(
    *TEACHER,
    '--config.lr_decay_epochs=(1,)',
    '--config.lr_decay_epochs=(2,)',
    f'--workdir={tmp_path / "run"}',
  )
  assert 'config.lr_decay_epochs is given 2 times' in error_line(code, stderr)
  assert not (tmp_path / 'run').exists()
