"""A one-node SLURM on localhost for the tests (scripts/local_slurm.sh:
slurmctld, slurmd and munged of their own, under a temporary folder), or
the reason there is none.

Debian's packages: apt-get install -y --no-install-recommends slurmctld
slurmd slurm-client munge. CI does not install them (its 10 minutes have no
room for the packages and the whole runs these tests make), so there the
tests that need a cluster skip, saying why; `make test-all` runs them where
the packages are.
"""

import os
import pathlib
import shutil
import subprocess

from conftest import ROOT
import helpers

SCRIPT = ROOT / 'scripts' / 'local_slurm.sh'
COMMANDS = ('slurmctld', 'slurmd', 'munged', 'sbatch', 'srun', 'squeue')


class Unavailable(Exception):
  """Why no cluster could be started here."""


def start(directory: pathlib.Path) -> dict[str, str]:
  """Starts the cluster under `directory`; returns the environment its
  commands need (SLURM_CONF, and the worktree on PYTHONPATH so that a
  task imports this checkout). Raises Unavailable with the reason."""
  missing = [c for c in COMMANDS if shutil.which(c) is None]
  if missing:
    raise Unavailable(
      f'SLURM is not installed ({", ".join(missing)} missing; '
      'scripts/local_slurm.sh says how to install it)'
    )
  env = dict(os.environ, SLURM_PORT=str(helpers.free_port()))
  started = subprocess.run(
    [str(SCRIPT), 'start', str(directory)],
    env=env,
    capture_output=True,
    text=True,
    timeout=120,
    check=False,
  )
  if started.returncode:
    raise Unavailable(
      f'the local SLURM did not start: {started.stderr.strip()[-500:]}'
    )
  conf = started.stdout.strip().removeprefix('export SLURM_CONF=')
  pythonpath = os.pathsep.join(
    p for p in (str(ROOT), os.environ.get('PYTHONPATH')) if p
  )
  return dict(os.environ, SLURM_CONF=conf, PYTHONPATH=pythonpath)


def stop(directory: pathlib.Path) -> None:
  subprocess.run([str(SCRIPT), 'stop', str(directory)], check=False, timeout=60)
