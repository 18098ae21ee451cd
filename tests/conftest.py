"""Test setup: four emulated CPU devices, set before JAX is first imported."""

import os
import pathlib

# Emulated devices are threads: on a loaded 2-core machine one can reach a
# collective minutes after the others, so XLA's rendezvous must wait, not abort.
COLLECTIVE_PATIENCE = (
  '--xla_cpu_collective_timeout_seconds=900 '
  '--xla_cpu_collective_call_terminate_timeout_seconds=900'
)
# Most of the suite's time is XLA compiling small steps that then run a few
# times: LLVM's optimisation of the CPU code costs more than it saves there
# (a cold suite takes about half as long without it). The programs stay the
# same HLO, and a run still equals itself bit for bit.
QUICK_COMPILE = '--xla_backend_optimization_level=0'
os.environ['XLA_FLAGS'] = (
  f'{os.environ.get("XLA_FLAGS", "")} '
  f'--xla_force_host_platform_device_count=4 {COLLECTIVE_PATIENCE} '
  f'{QUICK_COMPILE}'
).strip()
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
# Most of the suite's time is XLA compiling the same few smoke steps, in this
# process and in the launch.py subprocesses the tests start (which inherit
# the environment). One persistent compilation cache, shared by the xdist
# workers and the subprocesses, compiles each distinct step once; a cached
# executable is the same program, so results stay bit for bit.
os.environ.setdefault(
  'JAX_COMPILATION_CACHE_DIR',
  str(pathlib.Path(__file__).resolve().parents[1] / '.pytest_cache' / 'xla'),
)
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '0')

import pytest  # pylint: disable=g-import-not-at-top

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / 'shared' / 'data'
CIFAR10_ARCHIVE = SHARED_DATA / 'cifar10-jpeg.tar.gz'
FASHION_MNIST_DIR = pathlib.Path('/usr/share/datasets/fashion-mnist')
# Set (to 1) where ../shared must be present, as in CI: a test that needs a
# file from it then fails without it instead of skipping.
REQUIRE_FIXTURES = 'ICCKD_REQUIRE_FIXTURES'


def shared_fixture(path: pathlib.Path) -> pathlib.Path:
  """`path`, a file or folder under ../shared (PyTorch-written checkpoints,
  real CIFAR-10), which a checkout need not have beside it: without it the
  calling test is skipped, saying so, or fails where $ICCKD_REQUIRE_FIXTURES
  is 1."""
  if path.exists():
    return path
  message = f'the shared test data {path} is absent'
  if os.environ.get(REQUIRE_FIXTURES) == '1':
    pytest.fail(
      f'{message}, and {REQUIRE_FIXTURES}=1 requires it', pytrace=False
    )
  pytest.skip(f'{message} (set {REQUIRE_FIXTURES}=1 to fail instead)')


@pytest.fixture
def smoke_config():
  """The teacher's smoke config: resnet8 on the synthetic set."""
  from configs import teacher  # pylint: disable=g-import-not-at-top

  return teacher.get_config('smoke')


@pytest.fixture(autouse=True, scope='session')
def _data_dir(tmp_path_factory):
  """Downloads and decoded-array caches go to a temporary folder, never the
  user's ~/.cache; launch.py subprocesses inherit it."""
  os.environ['ICCKD_DATA_DIR'] = str(tmp_path_factory.mktemp('data'))


@pytest.fixture(scope='module')
def trained(tmp_path_factory) -> pathlib.Path:
  """A smoke teacher (helpers.TRAINED), 2 epochs on 1 device:
  checkpoints/1, /2 and best."""
  # Imported here: conftest is imported before the tests' modules.
  import helpers  # pylint: disable=g-import-not-at-top
  from launch_in_process import run_launcher  # pylint: disable=g-import-not-at-top

  workdir = tmp_path_factory.mktemp('trained') / 'run'
  code, stderr = run_launcher(*helpers.TRAINED, f'--workdir={workdir}')
  assert code == 0, stderr[-2000:]
  return workdir


@pytest.fixture(scope='session')
def slurm(tmp_path_factory):
  """The environment of a one-node SLURM on localhost (tests/
  slurm_cluster.py), started once per session; the test skips, saying why,
  where it cannot start."""
  import slurm_cluster  # pylint: disable=g-import-not-at-top

  directory = tmp_path_factory.mktemp('slurm')
  try:
    env = slurm_cluster.start(directory)
  except slurm_cluster.Unavailable as e:
    pytest.skip(str(e))
  yield env
  slurm_cluster.stop(directory)
