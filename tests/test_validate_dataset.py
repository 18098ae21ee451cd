"""Data set fields the chosen set ignores, given on the command line, are
refused (runs/validate.py `check_given_fields`, called by launch.py): the
generated set's sizes, classes, channels and seed asked for a set that has
its own would be recorded with the run as if used."""

import pytest

from configs import teacher as teacher_config
from icckd_jax.errors import UserError
from icckd_jax.runs import validate
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
