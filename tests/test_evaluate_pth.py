"""A `.pth` file's refusals (stages/evaluate_pth.py, interop/torch_import.py):
evaluated at an image size other than the set's, or holding a value that
is not finite (as an evaluated network or as a student's teacher)."""

import numpy as np
import pytest

import helpers
from launch_in_process import error_line, run_launcher
from torch_files import random_state_dict, write_pth


@pytest.fixture(scope='module')
def pth(tmp_path_factory):
  """A resnet8 .pth of 3 classes, and one with a NaN in a weight."""
  base = tmp_path_factory.mktemp('pth')
  state = random_state_dict('resnet8', 3)
  write_pth(base / 'good.pth', state)
  key = next(k for k in state if k.endswith('conv1.weight'))
  state[key] = state[key].copy()
  state[key].flat[5] = np.nan
  write_pth(base / 'nan.pth', state)
  return base


def test_a_pth_evaluated_at_another_size_than_the_sets_is_refused(
  pth, tmp_path
):
  """8x8 images evaluated with dataset.image_size=32: the set's size would
  be used and the figure read as 32x32's; one line, exit 2."""
  data = helpers.convert_folder(
    helpers.png_folder(tmp_path / 'src', 'abc', 0), tmp_path / 'out'
  )
  args = (
    '--config=configs/eval.py',
    f'--config.pth={pth / "good.pth"}',
    '--config.model=resnet8',
    '--config.dataset.name=array_record',
    f'--config.dataset.path={data}',
    '--config.eval_batch_size=4',
  )
  line = error_line(*run_launcher(*args, '--config.dataset.image_size=32'))
  assert 'config.dataset.image_size=32' in line and '8x8' in line, line
  code, stderr = run_launcher(*args, '--config.dataset.image_size=8')
  assert code == 0, stderr[-2000:]


def test_a_pth_with_a_non_finite_weight_is_refused(pth, tmp_path):
  """Evaluated or distilled from: one line naming the tensor, exit 2, no
  student workdir."""
  line = error_line(
    *run_launcher(
      '--config=configs/eval.py',
      f'--config.pth={pth / "nan.pth"}',
      '--config.model=resnet8',
      '--config.dataset.name=synthetic',
      '--config.dataset.num_classes=3',
      '--config.dataset.image_size=32',
    )
  )
  assert 'conv1.weight' in line and '1 NaN or infinite' in line, line
  workdir = tmp_path / 'student'
  line = error_line(
    *run_launcher(
      '--config=configs/student.py:smoke',
      f'--config.teacher.pth={pth / "nan.pth"}',
      '--config.teacher.model=resnet8',
      '--config.dataset.num_classes=3',
      f'--workdir={workdir}',
    )
  )
  assert 'NaN or infinite' in line, line
  assert not workdir.exists()
