"""Stop requests (training/preemption.py): every signal a terminal sends is
one, a request nested in another hands its signal on, and a stop after a
run's last step ends it with the signal's exit code, not 0.
"""

import json
import os
import signal

import pytest

from icckd_jax.training import preemption
from helpers import TEACHER, signal_after_last_epoch
from launch_in_process import run_launcher


@pytest.mark.parametrize(
  'signum', [signal.SIGTERM, signal.SIGINT, signal.SIGHUP]
)
def test_every_signal_a_terminal_sends_is_a_stop_request(signum):
  """SIGHUP (a closed ssh session) is a stop request like SIGTERM and
  Ctrl-C, not the end of the process without a save."""
  previous = signal.getsignal(signum)
  with preemption.StopRequest() as stop:
    handler = signal.getsignal(signum)
    assert getattr(handler, '__self__', None) is stop
    os.kill(os.getpid(), signum)
    assert stop.requested(0) == signum
  assert signal.getsignal(signum) == previous


def test_one_stop_sent_two_ways_is_one_request(monkeypatch):
  """The same signal twice within ECHO_SECONDS (SLURM's, and the
  supervisor's forward of it) is one request; another signal, or the same
  one later, is a user's second and interrupts at once."""
  clock = [100.0]
  monkeypatch.setattr(preemption.time, 'monotonic', lambda: clock[0])
  with preemption.StopRequest() as stop:
    os.kill(os.getpid(), signal.SIGTERM)
    os.kill(os.getpid(), signal.SIGTERM)
    assert stop.requested(0) == signal.SIGTERM
    with pytest.raises(KeyboardInterrupt):
      os.kill(os.getpid(), signal.SIGINT)
    clock[0] += preemption.StopRequest.ECHO_SECONDS
    with pytest.raises(KeyboardInterrupt):
      os.kill(os.getpid(), signal.SIGTERM)


def test_a_stop_request_nested_in_another_hands_its_signal_on():
  """A run's request inherits its job's signal and hands on one that came
  after the run's last check: a pipeline or a worker cannot forget it."""
  with preemption.StopRequest() as job:
    with preemption.StopRequest() as run:
      os.kill(os.getpid(), signal.SIGTERM)
    assert job.signum == signal.SIGTERM
    with preemption.StopRequest() as next_run:
      assert next_run.requested(0) == signal.SIGTERM
    with pytest.raises(preemption.Preempted) as stopped:
      job.stop_if_requested('the student stage')
    assert stopped.value.signum == signal.SIGTERM
  del run


def test_a_stop_after_a_runs_last_step_is_not_exit_0(tmp_path, monkeypatch):
  """SIGHUP after a lone run's last step: its summary and final checkpoint
  are written, and the process says it was stopped (exit 128 + 1)."""
  workdir = tmp_path / 'run'
  with monkeypatch.context() as patch:
    signal_after_last_epoch(patch, 'run', signal.SIGHUP)
    code, stderr = run_launcher(
      *TEACHER, '--config.num_epochs=1', f'--workdir={workdir}'
    )
  assert code == 128 + signal.SIGHUP, stderr[-2000:]
  assert json.loads((workdir / 'summary.json').read_text())['epochs'] == 1
  assert os.listdir(workdir / 'checkpoints') == ['1']
