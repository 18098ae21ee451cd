"""stages/teacher_source.py: a student's data set against its teacher's."""

import os

import pytest

from icckd_jax.data import datasets
from icckd_jax.errors import UserError
from icckd_jax.stages import teacher_source

_FOLDER = dict(name='image_folder', image_size=32, channels=3)


@pytest.mark.parametrize('spelling', ['trailing slash', 'relative', 'link'])
def test_the_teachers_folder_however_named_is_the_same_folder(
  tmp_path, monkeypatch, spelling
):
  """A student naming the teacher's data folder with a trailing slash,
  relative to the working directory, or through a link is accepted."""
  folder = tmp_path / 'data'
  folder.mkdir()
  os.symlink(folder, tmp_path / 'link')
  monkeypatch.chdir(tmp_path)
  path = {
    'trailing slash': f'{folder}/',
    'relative': 'data',
    'link': str(tmp_path / 'link'),
  }[spelling]
  student = datasets.DataSpec.from_fields(dict(_FOLDER, path=path))
  teacher_source.check_same_data(student, dict(_FOLDER, path=str(folder)))


def test_another_folder_is_refused(tmp_path):
  (tmp_path / 'a').mkdir()
  (tmp_path / 'b').mkdir()
  student = datasets.DataSpec.from_fields(
    dict(_FOLDER, path=str(tmp_path / 'a'))
  )
  with pytest.raises(UserError, match='config.dataset.path='):
    teacher_source.check_same_data(
      student, dict(_FOLDER, path=str(tmp_path / 'b'))
    )
