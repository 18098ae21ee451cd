"""Several processes (--multihost on localhost) when one of them fails: the
others stop with one line naming it, within a bounded wait, exit code 2,
having written nothing (a refusal) or kept their checkpoints (a peer lost
mid-run). Behaviour of icckd_jax/parallel.py's agreements and launch.py."""

import os
import pathlib
import time

import pytest

from launch_in_process import error_line
from helpers import kill_with_children, start_processes

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


def _kill_mid_run(workdir, victim: int) -> tuple[int, str]:
  """Two processes of a long run; process `victim` SIGKILLed (its
  supervisor and the child that runs) once the first epoch's checkpoint is
  on disk. (The other's exit code, its stderr), which it must reach within
  60 s."""
  procs = start_processes(
    *SMOKE, '--config.num_epochs=50', f'--workdir={workdir}'
  )
  deadline = time.monotonic() + 400
  while not _checkpoints(workdir):
    for proc in procs:
      assert proc.poll() is None, proc.communicate()[1][-3000:]
    assert time.monotonic() < deadline
    time.sleep(0.05)
  kill_with_children(procs[victim])
  killed = time.monotonic()
  _, stderr = procs[1 - victim].communicate(timeout=300)
  assert time.monotonic() - killed < 60, stderr[-2000:]
  procs[victim].communicate()
  return procs[1 - victim].returncode, stderr


@pytest.mark.slow
def test_a_peer_killed_mid_run_stops_the_survivor_in_one_line(tmp_path):
  """Process 1 SIGKILLed after the first epoch's checkpoint: process 0
  stops within seconds (not the coordination service's 100 s heartbeat and
  a native abort) with one line naming process 1, exit code 2, its
  checkpoints as they were."""
  workdir = tmp_path / 'run'
  line = error_line(*_kill_mid_run(workdir, 1))
  assert 'process 1 of 2 stopped answering' in line, line
  assert _checkpoints(workdir)


@pytest.mark.slow
def test_a_coordinator_killed_mid_run_keeps_the_checkpoints(tmp_path):
  """Process 0 (the coordination service's) SIGKILLed: JAX's native client
  aborts process 1 within seconds, which its supervisor turns into one
  line naming process 0, exit code 2 (not rc 134 and a native stack:
  docs/robustness.md); the checkpoints written before stay intact, and the
  same command on both processes resumes from them."""
  workdir = tmp_path / 'run'
  code, stderr = _kill_mid_run(workdir, 0)
  assert code == 2, stderr[-2000:]
  line = error_line(code, stderr)
  assert line.startswith(
    'error: --multihost: process 0 of 2 (the coordinator) stopped answering'
  ), line
  assert 'rerun the same command on every process to resume' in line, line
  assert 'stack trace' not in stderr and 'Fatal Python error' not in stderr
  saved = _checkpoints(workdir)
  assert saved
  procs = start_processes(
    *SMOKE, f'--config.num_epochs={int(saved[-1]) + 1}', f'--workdir={workdir}'
  )
  outputs = [proc.communicate(timeout=400)[1] for proc in procs]
  for proc, stderr in zip(procs, outputs):
    assert proc.returncode == 0, stderr[-3000:]
  assert 'Resumed from' in outputs[0], outputs[0][-3000:]
