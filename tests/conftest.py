"""Test setup: four emulated CPU devices, set before JAX is first imported."""

import os
import pathlib

os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                           ' --xla_force_host_platform_device_count=4').strip()
os.environ.setdefault('JAX_PLATFORMS', 'cpu')

import pytest  # pylint: disable=g-import-not-at-top

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / 'shared' / 'data'
CIFAR10_ARCHIVE = SHARED_DATA / 'cifar10-jpeg.tar.gz'
FASHION_MNIST_DIR = pathlib.Path('/usr/share/datasets/fashion-mnist')


@pytest.fixture
def smoke_config():
  """The teacher's smoke config: resnet8 on the synthetic set."""
  from configs import teacher  # pylint: disable=g-import-not-at-top
  return teacher.get_config('smoke')
