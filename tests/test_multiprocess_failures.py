"""Several processes (--multihost on localhost) when one of them fails: the
others stop with one line naming it, within a bounded wait, exit code 2,
having written nothing (a refusal) or kept their checkpoints (a peer lost
mid-run). Behaviour of icckd_jax/parallel.py's agreements and launch.py."""

import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import pytest

from conftest import COLLECTIVE_PATIENCE, ROOT
from launch_in_process import error_line

SMOKE = ('--config=configs/teacher.py:smoke', '--config.log_every_steps=1')


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def _start(per_process: list[tuple[str, ...]]) -> list[subprocess.Popen]:
  """One launch.py process of a --multihost run per entry (its own
  arguments), one CPU device each."""
  port = _free_port()
  env = dict(
    os.environ,
    JAX_PLATFORMS='cpu',
    XLA_FLAGS=f'--xla_force_host_platform_device_count=1 {COLLECTIVE_PATIENCE}',
  )
  return [
    subprocess.Popen(
      [
        sys.executable,
        str(ROOT / 'launch.py'),
        *args,
        '--multihost',
        f'--coordinator_address=localhost:{port}',
        f'--num_processes={len(per_process)}',
        f'--process_id={i}',
        '--multihost_timeout=120',
      ],
      cwd=ROOT,
      env=env,
      stdout=subprocess.DEVNULL,
      stderr=subprocess.PIPE,
      text=True,
    )
    for i, args in enumerate(per_process)
  ]


@pytest.mark.parametrize('refusing', [0, 1])
def test_a_process_that_refuses_its_data_stops_every_process(
  tmp_path, refusing
):
  """One process given a data path that does not exist: each process stops
  with one line naming the refusing process and its reason, exit code 2,
  before the workdir exists (process 0, which holds the coordinator, waits
  until the other has heard)."""
  workdir = tmp_path / 'run'
  args = [(*SMOKE, f'--workdir={workdir}')] * 2
  args[refusing] = (
    *args[refusing],
    '--config.dataset.name=image_folder',
    f'--config.dataset.path={tmp_path / "missing"}',
  )
  for i, proc in enumerate(_start(args)):
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
  procs = _start(
    [(*SMOKE, '--config.num_epochs=50', f'--workdir={workdir}')] * 2
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
