"""benchmarks/on_gpu.sh and on_gpu.py: a study carried to another machine as
records finishes there without rerunning what finished, and the command's
refusals are one line with exit code 2.

The whole rehearsal (a Python 3.12 venv, both parts without a network) is
`bash benchmarks/on_gpu.sh rehearse --cifar10=PATH`, too slow for the suite.
"""

import json
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT
from launch_in_process import launch

sys.path.insert(0, str(ROOT / 'benchmarks'))
import on_gpu  # pylint: disable=g-import-not-at-top,wrong-import-position

# The study's smoke sweep, cut to the capacity study's two arms that share
# one teacher run (scratch is trained beside ce_teacher's KD student) and
# one seed of one epoch each.
SWEEP = (
  '--config=configs/study.py:smoke',
  '--config.settings=("ce_teacher: teacher.icc.lam=0.0", "scratch: '
  'teacher.icc.lam=0.0, student.distill.gamma=1.0, '
  'student.distill.alpha=0.0")',
  '--config.primary_settings=("ce_teacher",)',
  '--config.controls=("ce_teacher",)',
  '--config.comparisons=scratch:ce_teacher',
  '--config.seeds=(0,)',
  '--config.primary_seeds=(0,)',
  '--config.workers=1',
  '--config.base.teacher.num_epochs=1',
  '--config.base.teacher.lr_decay_epochs=()',
  '--config.base.student.num_epochs=1',
  '--config.base.student.lr_decay_epochs=()',
  '--config.base.teacher.num_devices=1',
  '--config.base.student.num_devices=1',
  '--config.base.teacher.dataset.num_train=64',
  '--config.base.teacher.dataset.num_test=32',
)


def _stage_dirs(workdir: pathlib.Path) -> list[str]:
  """The store's trained stages: teachers/<key> and students/<key>."""
  return sorted(
    f'{kind}/{p.name}'
    for kind in ('teachers', 'students')
    for p in (workdir / kind).glob('*')
  )


@pytest.fixture(scope='module')
def finished_sweep(tmp_path_factory):
  """A finished sweep and its records archive, as part 1 or 2 leaves it."""
  workdir = tmp_path_factory.mktemp('machine1') / 'stage2'
  launch(*SWEEP, f'--workdir={workdir}')
  archive = workdir.parent / 'records.tar.gz'
  runs = on_gpu.pack_records({'stage2': workdir}, archive)
  return workdir, archive, runs


def test_records_hold_results_and_metrics_but_no_checkpoints(finished_sweep):
  workdir, archive, runs = finished_sweep
  assert runs == 2
  import tarfile  # pylint: disable=g-import-not-at-top

  with tarfile.open(archive) as tar:
    names = set(tar.getnames())
  for setting in ('ce_teacher', 'scratch'):
    for file in (
      'result.json',
      'teacher/metrics.jsonl',
      'student/summary.json',
    ):
      assert f'stage2/{setting}/seed_0/{file}' in names, sorted(names)
  assert 'stage2/sweep.json' in names and 'stage2/summary.md' in names
  assert not [n for n in names if 'checkpoints' in n or '/best/' in n]
  assert _stage_dirs(workdir)  # the store stays on the machine


def test_a_rerun_given_records_skips_the_finished_runs(
  finished_sweep, tmp_path
):
  """On a fresh machine state: every finished run is skipped, though none
  of its checkpoints came along (nothing is trained, measured or
  projected); a run whose result is not among the records is trained, its
  teacher retrained since its checkpoint is absent, and the finished run
  that shared that teacher is not rerun: its result stays as it was."""
  workdir, archive, _ = finished_sweep
  state = tmp_path / 'machine2'
  assert on_gpu.unpack_records(archive, state) == 2
  fresh = state / 'stage2'
  before = (fresh / 'ce_teacher' / 'seed_0' / 'result.json').read_bytes()
  assert before == (workdir / 'ce_teacher/seed_0/result.json').read_bytes()

  again = launch(*SWEEP, f'--workdir={fresh}', '--config.estimate=True')
  assert again.stderr.count('finished earlier, skipped.') == 2, again.stderr
  assert 'Measured' not in again.stderr and 'Compiling' not in again.stderr
  assert _stage_dirs(fresh) == []
  assert on_gpu.whole_seeds(fresh) == ([0], [0])

  shutil.rmtree(fresh / 'scratch' / 'seed_0')
  assert on_gpu.whole_seeds(fresh) == ([], [0])
  third = launch(*SWEEP, f'--workdir={fresh}')
  assert third.stderr.count('finished earlier, skipped.') == 1, third.stderr
  # scratch's teacher (the one ce_teacher shared) and its own student.
  assert [d.split('/')[0] for d in _stage_dirs(fresh)] == [
    'students',
    'teachers',
  ]
  assert (fresh / 'ce_teacher/seed_0/result.json').read_bytes() == before
  scratch = json.loads((fresh / 'scratch/seed_0/result.json').read_text())
  assert scratch['row']['setting'] == 'scratch'
  assert on_gpu.whole_seeds(fresh) == ([0], [0])


def test_unpacking_keeps_a_run_finished_here(finished_sweep, tmp_path):
  _, archive, _ = finished_sweep
  state = tmp_path / 'machine'
  mine = state / 'stage2' / 'scratch' / 'seed_0' / 'result.json'
  mine.parent.mkdir(parents=True)
  mine.write_text('{"mine": true}')
  assert on_gpu.unpack_records(archive, state) == 1
  assert mine.read_text() == '{"mine": true}'


def _on_gpu(out, *args):
  return subprocess.run(
    ['bash', str(ROOT / 'benchmarks' / 'on_gpu.sh'), 'run', *args],
    cwd=ROOT,
    env=dict(os.environ, OUT=str(out), PYTHON=sys.executable),
    capture_output=True,
    text=True,
    timeout=60,
    check=False,
  )


def _refused(result) -> str:
  assert result.returncode == 2, (result.stdout, result.stderr)
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('error: '), result.stderr
  return lines[0]


@pytest.mark.parametrize('budget', ['nan', 'inf', '-inf', '0', '-3', 'ten'])
def test_a_budget_not_positive_and_finite_is_refused(budget, tmp_path):
  line = _refused(_on_gpu(tmp_path, '--part=1', f'--budget_s={budget}'))
  assert '--budget_s' in line and 'positive finite' in line
  assert not list(tmp_path.iterdir())


def test_an_earlier_report_in_out_is_never_overwritten(tmp_path):
  report = tmp_path / 'part2' / 'report.md'
  report.parent.mkdir()
  report.write_text('earlier')
  line = _refused(_on_gpu(tmp_path, '--part=2', '--smoke'))
  assert 'report.md exists' in line
  assert report.read_text() == 'earlier'
  assert sorted(p.name for p in tmp_path.rglob('*')) == ['part2', 'report.md']


def test_the_out_contract_counts_files_sizes_and_depth(tmp_path):
  for i in range(9):
    (tmp_path / f'f{i}').write_text('x')
  deep = tmp_path / 'a' / 'b' / 'c' / 'deep.txt'
  deep.parent.mkdir(parents=True)
  deep.write_text('x')
  problems = on_gpu.check_out(tmp_path, [1])
  assert any('10 files' in p for p in problems), problems
  assert any('a/b/c/deep.txt' in p for p in problems), problems
  assert 'part1/report.md is missing' in problems
  shutil.rmtree(tmp_path / 'a')
  for i in range(9):
    (tmp_path / f'f{i}').unlink()
  (tmp_path / 'part1').mkdir()
  (tmp_path / 'part1' / 'report.md').write_text('r')
  (tmp_path / 'part1' / 'records.tar.gz').write_bytes(b'r')
  assert on_gpu.check_out(tmp_path, [1]) == []
