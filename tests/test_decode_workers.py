"""input_pipeline/decode_workers.py: a stop signal sent to the process group
of a streamed run (SIGHUP, SIGTERM, SIGINT) leaves its decode workers
running, for the training process to close, and multiprocessing's resource
tracker alive, so that nothing the processes leave stays in /dev/shm. (The
whole run under each signal: test_stream.py, marked slow.)"""

import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT
import helpers

# A training process in small: it starts the tracker as the streamed path
# does, a decode worker (forked, as ignoring the stop signals as Grain's
# are), and each holds a shared-memory segment it never unlinks, as
# batches in flight are when a run stops. At the signal it reports whether
# its worker outlived it, ends the worker and exits 128 + the signal.
_RUN = """
import os, signal, sys, time
from multiprocessing import shared_memory
from icckd_jax.input_pipeline import decode_workers

decode_workers.start_resource_tracker()
ready, done = os.pipe()
worker = os.fork()
if worker == 0:
  decode_workers.ignore_stop_signals(0, 1)
  segment = shared_memory.SharedMemory(create=True, size=64)
  os.write(done, segment.name.encode() + b'\\n')
  time.sleep(60)
  os._exit(0)
segment = shared_memory.SharedMemory(create=True, size=64)
print(segment.name, os.read(ready, 100).decode().strip(), flush=True)

def stop(signum, frame):
  time.sleep(0.2)
  alive = os.waitpid(worker, os.WNOHANG) == (0, 0)
  print('worker alive' if alive else 'worker died', flush=True)
  os.kill(worker, signal.SIGKILL)
  os.waitpid(worker, 0)
  sys.exit(128 + signum)

signal.signal(signum := int(sys.argv[1]), stop)
time.sleep(60)
"""


@pytest.mark.parametrize(
  'signum', [signal.SIGHUP, signal.SIGTERM, signal.SIGINT]
)
def test_a_stop_signal_to_the_process_group_leaves_nothing_in_shm(signum):
  proc = subprocess.Popen(
    [sys.executable, '-c', _RUN, str(int(signum))],
    cwd=ROOT,
    env=dict(os.environ, PYTHONPATH=str(ROOT)),
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
    start_new_session=True,
  )
  names = proc.stdout.readline().split()
  assert len(names) == 2, proc.stderr.read()
  assert set(names) <= helpers.shared_memory_names()
  os.killpg(proc.pid, signum)
  stdout, stderr = proc.communicate(timeout=30)
  assert proc.returncode == 128 + signum, stderr
  assert stdout.strip() == 'worker alive'
  assert 'Traceback' not in stderr and 'died unexpectedly' not in stderr
  # The tracker unlinks them once every process holding it has ended.
  deadline = time.time() + 10
  while set(names) & helpers.shared_memory_names():
    assert time.time() < deadline, f'{names} left in /dev/shm'
    time.sleep(0.05)
