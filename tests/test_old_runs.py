"""Run stores written before the house's second storey keep their names.

A sweep finds a finished run by its key (experiments/sweep/run_store.py): a
key that changed would retrain every stored run under a new name. The keys
below were computed by the code at commit 89d87a0, the last before the
package's rooms were redrawn, from the shipped configs."""

import json
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

import conftest
from configs import eval as eval_config
from configs import student
from configs import teacher
from icckd_jax import main
from icckd_jax.experiments.sweep import plan as sweep_plan
from icckd_jax.experiments.sweep import run_store
from icckd_jax.runs import layout
import make_store_d8b658b


@pytest.mark.parametrize(
  'lam, key', [(0.1, '9be5306a3d71d418'), (0.0, '27ba195317b33b37')]
)
def test_teacher_keys_are_those_of_earlier_stores(lam, key):
  config = teacher.get_config()
  config.icc.lam = lam
  assert run_store.teacher_key(config) == key


@pytest.mark.parametrize(
  'method, key', [('kd', '61aae71c8ad509cf'), ('crd', '2f9fce10c7a5d259')]
)
def test_student_keys_are_those_of_earlier_stores(method, key):
  config = student.get_config()
  config.distill.method = method
  assert run_store.student_key(config, 'T') == key


# A sweep's store as the code at commit d8b658b left it: seed 0 finished,
# seed 1's teacher stopped by SIGTERM mid-epoch (tests/make_store_d8b658b.py
# wrote it, and says how).
# Kept as plain files (git keeps its links, not its three empty folders,
# which the old code had made and left empty: made again below).
HERE = pathlib.Path(__file__).parent
OLD_STORE = HERE / 'fixtures' / 'store_d8b658b' / 'store'
EMPTY_FOLDERS = (
  'students/a42f6d28834b4cf9/preempted',
  'teachers/838a9a1811f80ffa/checkpoints',
  'teachers/8b111a77711b74e1/preempted',
)


@pytest.fixture(scope='module')
def old_store(tmp_path_factory):
  """(a copy of the store, today's config of its sweep, its two runs)."""
  store = tmp_path_factory.mktemp('old_store') / 'store'
  shutil.copytree(OLD_STORE, store, symlinks=True)
  for folder in EMPTY_FOLDERS:
    (store / folder).mkdir(exist_ok=True)
  config = make_store_d8b658b.config()
  return store, config, sweep_plan.plan(config, str(store))


def _resume(store: pathlib.Path) -> list[tuple[str, int]]:
  """The old store's sweep run over `store` by today's code, in a process
  of its own (tests/old_store_resume.py): its reference records were
  computed at XLA's default optimisation level, which this process's
  backend turns down (conftest.QUICK_COMPILE); what the two compile
  differs in the last bits. Returns the (workdir, step) of each resumed
  run."""
  env = dict(
    os.environ,
    XLA_FLAGS=os.environ['XLA_FLAGS'].replace(conftest.QUICK_COMPILE, ''),
    PYTHONPATH=os.pathsep.join([str(conftest.ROOT), str(HERE)]),
  )
  done = subprocess.run(
    [sys.executable, str(HERE / 'old_store_resume.py'), str(store)],
    cwd=conftest.ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=900,
  )
  assert done.returncode == 0, done.stderr[-3000:]
  return [tuple(r) for r in json.loads(done.stdout.splitlines()[-1])]


def _files(directory: str) -> dict[pathlib.Path, bytes]:
  return {
    p: p.read_bytes()
    for p in pathlib.Path(directory).rglob('*')
    if p.is_file() and p.name != layout.LOCK_FILE
  }


def test_an_old_store_resumes_its_unfinished_run_only(old_store):
  store, _, (done, stopped) = old_store
  # Today's configs name its runs as the old code did.
  assert sorted(os.listdir(store / run_store.TEACHERS)) == sorted(
    os.path.basename(r.teacher_dir) for r in (done, stopped)
  )
  assert os.listdir(store / run_store.STUDENTS) == [
    os.path.basename(done.student_dir)
  ]
  finished = {**_files(done.teacher_dir), **_files(done.student_dir)}
  resumed = _resume(store)

  # The finished runs are not trained again; the stopped teacher resumes
  # where SIGTERM stopped it, and it and its new student end as the old
  # code's uninterrupted runs did, record for record.
  assert resumed == [(stopped.teacher_dir, make_store_d8b658b.STOP_AT)]
  assert {p: p.read_bytes() for p in finished} == finished
  reference = json.loads((store / 'reference.json').read_text())
  for stage in ('teacher', 'student'):
    now = make_store_d8b658b.records(getattr(stopped, f'{stage}_dir'))
    assert now['records'] == reference[stage]['records'], stage
    for key, value in reference[stage]['summary'].items():
      if 'workdir' not in key:  # where it was written
        assert now['summary'][key] == value, (stage, key)


def test_an_old_checkpoint_evaluates_as_it_did(old_store):
  _, _, (done, _) = old_store
  config = eval_config.get_config()
  config.workdir = done.teacher_dir
  config.checkpoint = 'last'
  result = main.run(config, None)
  with open(os.path.join(done.teacher_dir, layout.SUMMARY_FILE)) as f:
    summary = json.load(f)
  assert result['epoch'] == 2 and result['count'] == 32
  assert result['top1'] == summary['final_top1']
