"""A run resumes only on the data it started on, on the input path it
started on (runs/data_identity.py), and an intact checkpoint of other
shapes is never taken for a damaged one (training/checkpoint_reader.py)."""

import json
import os
import shutil

import pytest

from icckd_jax.errors import UserError
from icckd_jax.input_pipeline import inputs
from icckd_jax.runs import data_identity
from icckd_jax.runs import layout
from icckd_jax.runs import spec
from launch_in_process import error_line, run_launcher
import helpers
from helpers import snapshot

TEACHER = (
  '--config=configs/teacher.py:smoke',
  '--config.dataset.name=array_record',
  '--config.dataset.image_size=8',
  '--config.batch_size=8',
  '--config.eval_batch_size=4',
  '--config.num_devices=1',
  '--config.icc.lam=0',
)


@pytest.fixture(scope='module')
def sets(tmp_path_factory):
  """Three converted sets: 'abc' (3 classes), 'other' (3 classes, other
  images of the same shapes), 'two' (2 classes); and a teacher run of one
  epoch on 'abc', started with input.mode='auto' (resident: it is tiny)."""
  base = tmp_path_factory.mktemp('identity')
  found = {
    name: helpers.convert_folder(
      helpers.png_folder(base / f'src_{name}', classes, seed), base / name
    )
    for name, classes, seed in (
      ('abc', 'abc', 0),
      ('other', 'abc', 1),
      ('two', 'ab', 2),
    )
  }
  data = base / 'data'
  shutil.copytree(found['abc'], data)
  workdir = base / 'run'
  code, stderr = run_launcher(
    *TEACHER,
    f'--config.dataset.path={data}',
    '--config.num_epochs=1',
    f'--workdir={workdir}',
  )
  assert code == 0, stderr[-2000:]
  assert 'Input: resident' in stderr
  found['run'] = workdir
  return found


def _stopped_run(sets, tmp_path, data_set: str):
  """A copy of the one-epoch run, its data folder (the path its config
  names) now holding `data_set`; (workdir, data path)."""
  data = sets['run'].parent / 'data'
  shutil.rmtree(data)
  shutil.copytree(sets[data_set], data)
  workdir = tmp_path / 'run'
  shutil.copytree(sets['run'], workdir)
  return workdir, data


def _resume(workdir, data, *extra):
  return run_launcher(
    *TEACHER,
    f'--config.dataset.path={data}',
    '--config.num_epochs=2',
    f'--workdir={workdir}',
    *extra,
  )


def _checkpoints_as_they_were(workdir, before):
  assert snapshot(workdir / 'checkpoints') == before
  assert not (workdir / layout.DAMAGED_DIR).exists()


@pytest.mark.parametrize(
  'data_set, named',
  [('two', 'classes 3 (now 2)'), ('other', 'digest')],
)
def test_a_resume_on_replaced_data_is_refused_before_any_checkpoint(
  sets, tmp_path, data_set, named
):
  """The data folder replaced between stop and resume (another class
  count, or other images of the same shapes): one line, exit 2, every
  checkpoint where it was, nothing moved to damaged/."""
  workdir, data = _stopped_run(sets, tmp_path, data_set)
  before = snapshot(workdir / 'checkpoints')
  line = error_line(*_resume(workdir, data))
  assert 'other data' in line and named in line, line
  _checkpoints_as_they_were(workdir, before)


def test_a_run_without_a_data_record_resumes_with_a_warning(sets, tmp_path):
  """A run of an older version (no data.json) on its own data: resumed,
  with a warning that its data is not checked; data.json is written."""
  workdir, data = _stopped_run(sets, tmp_path, 'abc')
  (workdir / layout.DATA_FILE).unlink()
  code, stderr = _resume(workdir, data)
  assert code == 0, stderr[-2000:]
  assert 'does not record the data it started on' in stderr
  assert (workdir / layout.DATA_FILE).is_file()
  assert (workdir / layout.SUMMARY_FILE).is_file()


def test_an_old_run_on_data_of_another_class_count_is_not_damaged(
  sets, tmp_path
):
  """No data.json to tell (an older version's run), another class count:
  the checkpoint restores into arrays of other shapes, which is refused in
  one line naming the array, never taken for damage."""
  workdir, data = _stopped_run(sets, tmp_path, 'two')
  (workdir / layout.DATA_FILE).unlink()
  before = snapshot(workdir / 'checkpoints')
  line = error_line(*_resume(workdir, data))
  assert 'is intact but holds another run' in line, line
  assert 'saved [3], this run [2]' in line, line
  _checkpoints_as_they_were(workdir, before)


def test_input_mode_auto_resumes_on_the_path_the_run_started_on(
  sets, tmp_path, monkeypatch
):
  """Started resident under 'auto'; at the resume the host's memory would
  make 'auto' stream: it stays resident. An explicit other path is
  refused by the resume check (input.mode is part of the run)."""
  workdir, data = _stopped_run(sets, tmp_path, 'abc')
  # As if the page cache had grown: 'auto' chosen afresh would stream.
  monkeypatch.setattr(inputs, 'RESIDENT_FRACTION', 0.0)
  code, stderr = _resume(workdir, data)
  assert code == 0, stderr[-2000:]
  assert 'resumes on the resident path the run started on' in stderr
  assert 'Input: resident' in stderr
  assert 'Input: streaming' not in stderr
  assert os.path.isfile(workdir / layout.SUMMARY_FILE)


@pytest.mark.parametrize(
  'recorded, asked, resumed',
  [
    ('fast', 'auto', 'fast'),
    ('exact', 'auto', 'exact'),
    ('torchvision', 'auto', 'torchvision'),
    ('exact', 'torchvision', None),
    (None, 'auto', 'exact'),  # streamed before input.decode existed
    ('fast', 'exact', None),
    (None, 'fast', None),
  ],
)
def test_input_decode_resumes_as_the_run_started_or_is_refused(
  tmp_path, recorded, asked, resumed
):
  """A streamed run's decode decides its crops' pixels: 'auto' resumes with
  the one it started with ('exact' if it recorded none); another one is
  refused in one line."""
  (tmp_path / 'checkpoints' / '3').mkdir(parents=True)
  data = {'name': 'array_record', 'classes': 3}
  record = {'data': data, 'input': 'stream'}
  if recorded:
    record['decode'] = recorded
  (tmp_path / layout.DATA_FILE).write_text(json.dumps(record))
  inputs_now = data_identity.resumed_inputs(
    spec.Inputs(mode='auto', decode=asked), str(tmp_path)
  )
  assert inputs_now.mode == 'stream'
  now = {'data': data, 'input': 'stream', 'decode': inputs_now.decode}
  if resumed is None:
    assert inputs_now.decode == asked
    with pytest.raises(UserError, match='started with config.input.decode='):
      data_identity.check(str(tmp_path), now)
  else:
    assert inputs_now.decode == resumed
    data_identity.check(str(tmp_path), now)
