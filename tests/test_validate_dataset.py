"""Data set fields the chosen set ignores, given on the command line, are
refused (runs/validate.py `check_given_fields`, called by launch.py): the
generated set's sizes, classes, channels and seed asked for a set that has
its own, and an image size other than that of a converted set of one size,
would be recorded with the run as if used."""

import pytest

from configs import teacher as teacher_config
from icckd_jax.errors import UserError
from icckd_jax.runs import validate
import helpers
from launch_in_process import error_line, run_launcher

FIELDS = ['num_train', 'num_test', 'num_classes', 'channels', 'seed']


@pytest.mark.parametrize('field', FIELDS)
@pytest.mark.parametrize('name', ['array_record', 'cifar100', 'image_folder'])
def test_the_generated_sets_fields_asked_for_another_set_are_refused(
  name, field
):
  config = teacher_config.get_config('smoke')  # sets sizes of its own
  config.dataset.name = name
  validate.check_given_fields(config, ['dataset.name'])  # the file's: kept
  with pytest.raises(UserError, match=f'config.dataset.{field}='):
    validate.check_given_fields(config, [f'dataset.{field}'])
  config.dataset.name = 'synthetic'  # the set that reads them
  validate.check_given_fields(config, [f'dataset.{field}'])


def test_a_refusal_from_the_command_line_writes_nothing(tmp_path):
  workdir = tmp_path / 'run'
  line = error_line(
    *run_launcher(
      '--config=configs/teacher.py',
      '--config.dataset.name=array_record',
      f'--config.dataset.path={tmp_path}',
      '--config.dataset.num_classes=5',
      f'--workdir={workdir}',
    )
  )
  assert 'config.dataset.num_classes=5 is read only by the generated' in line
  assert not workdir.exists()


def test_an_image_size_a_converted_set_of_one_size_ignores_is_refused(
  tmp_path,
):
  """8x8 images are read at 8x8 (resident, or streamed with 'crop'):
  image_size=16 given is refused naming both sizes; 8, the file's own
  value, and 'resized_crop' (which crops to it) are accepted."""
  data = helpers.convert_folder(
    helpers.png_folder(tmp_path / 'src', 'ab', 0), tmp_path / 'out'
  )
  config = teacher_config.get_config('smoke')
  config.dataset.name = 'array_record'
  config.dataset.path = str(data)
  config.dataset.image_size = 16
  for mode in ('auto', 'resident', 'stream'):
    config.input.mode = mode
    with pytest.raises(UserError, match='image_size=16 is not read.*8x8'):
      validate.check_given_fields(config, ['dataset.image_size'])
  validate.check_given_fields(config, ['dataset.name'])  # the file's: kept
  config.dataset.augment = 'resized_crop'
  validate.check_given_fields(config, ['dataset.image_size'])
  config.dataset.augment = 'auto'
  config.dataset.image_size = 8
  validate.check_given_fields(config, ['dataset.image_size'])
