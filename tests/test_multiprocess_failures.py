"""Several processes (--multihost on localhost) when one of them fails: the
others stop with one line naming it, within a bounded wait, exit code 2,
having written nothing (a refusal) or kept their checkpoints (a peer lost
mid-run). Behaviour of icckd_jax/parallel.py's agreements and launch.py."""

import os
import pathlib
import signal
import time

import pytest

from launch_in_process import error_line
from helpers import start_processes

SMOKE = ('--config=configs/teacher.py:smoke', '--config.log_every_steps=1')


@pytest.mark.slow
@pytest.mark.parametrize('refusing', [0, 1])
def test_a_process_that_refuses_its_data_stops_every_process(
  tmp_path, refusing
):
  """One process given a data path that does not exist: each process stops
  with one line naming the refusing process and its reason, exit code 2,
  before the workdir exists (process 0, which holds the coordinator, waits
  until the other has heard)."""
  workdir = tmp_path / 'run'
  per_process = [()] * 2
  per_process[refusing] = (
    '--config.dataset.name=image_folder',
    f'--config.dataset.path={tmp_path / "missing"}',
  )
  procs = start_processes(
    *SMOKE, f'--workdir={workdir}', per_process=per_process
  )
  for i, proc in enumerate(procs):
    _, stderr = proc.communicate(timeout=300)
    line = error_line(proc.returncode, stderr)
    assert str(tmp_path / 'missing') in line, line
    if i != refusing:
      assert f'process {refusing} refused the run' in line, line
  assert not workdir.exists()


def _checkpoints(workdir: pathlib.Path) -> list[str]:
  folder = workdir / 'checkpoints'
  if not folder.exists():
    return []
  return sorted(n for n in os.listdir(folder) if n.isdigit())


@pytest.mark.slow
def test_a_peer_killed_mid_run_stops_the_survivor_in_one_line(tmp_path):
  """Process 1 SIGKILLed after the first epoch's checkpoint: process 0
  stops within seconds (not the coordination service's 100 s heartbeat and
  a native abort) with one line naming process 1, exit code 2, its
  checkpoints as they were."""
  workdir = tmp_path / 'run'
  procs = start_processes(
    *SMOKE, '--config.num_epochs=50', f'--workdir={workdir}'
  )
  deadline = time.monotonic() + 400
  while not _checkpoints(workdir):
    for proc in procs:
      assert proc.poll() is None, proc.communicate()[1][-3000:]
    assert time.monotonic() < deadline
    time.sleep(0.05)
  procs[1].send_signal(signal.SIGKILL)
  killed = time.monotonic()
  _, stderr = procs[0].communicate(timeout=300)
  assert time.monotonic() - killed < 60, stderr[-2000:]
  line = error_line(procs[0].returncode, stderr)
  assert 'process 1 of 2 stopped answering' in line, line
  procs[1].communicate()
  assert _checkpoints(workdir)
