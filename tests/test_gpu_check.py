"""benchmarks/gpu_check.py --smoke: every part on CPU at tiny sizes."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT


@pytest.mark.slow
def test_gpu_check_smoke_writes_every_part(tmp_path):
  """Exit 0, and the report holds the device, the versions, a figure for
  every step of part a, the pipeline against the step (c), and the study's
  part (d) run until its budget and stopped cleanly; PyTorch, absent here,
  is said to be."""
  out = tmp_path / 'check'
  env = dict(os.environ, XLA_FLAGS='')  # One CPU device, as a user has.
  result = subprocess.run(
    [
      sys.executable,
      str(ROOT / 'benchmarks' / 'gpu_check.py'),
      '--smoke',
      f'--out={out}',
    ],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
    check=False,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads((out / 'gpu_check.json').read_text())
  assert report['platform'] == 'cpu' and report['jax'] and report['jaxlib']
  rows = report['parts']['a']['rows']
  assert len(rows) == 7
  for row in rows:
    assert row['status'] == 'done', row
    assert row['images_per_second'] > 0 and row['compiled_mib'] > 0, row
  if importlib.util.find_spec('torch') is None:
    assert report['parts']['a']['torch'] == 'not importable'
    assert 'PyTorch not importable' in (out / 'gpu_check.md').read_text()
    for row in rows:
      assert row['torch_compile']['status'].startswith('not run'), row
  else:
    assert all(row['jax_over_torch'] > 0 for row in rows)
    for row in rows:  # measured, or why not (no compiler toolchain here)
      compiled = row['torch_compile']
      assert row.get('jax_over_torch_compile', 0) > 0 or compiled[
        'status'
      ].startswith('not run: '), row
  pipeline = report['parts']['c']
  assert pipeline['pipeline']['images_per_second'] > 0
  assert pipeline['bound_by'] in ('input pipeline', 'train step')
  study = report['parts']['d']
  assert study['config'] == 'configs/study.py:smoke'
  assert study['status'] in ('done', 'stopped by the budget')
  for run in study['finished_runs']:
    assert 0 <= run['teacher_top1_last'] <= 1, run
    assert 0 <= run['student_top1_last'] <= 1, run
  markdown = (out / 'gpu_check.md').read_text()
  assert report['device'] in markdown and 'jaxlib' in markdown
  assert sum(row['step'] in markdown for row in rows) == 7


def _gpu_check(*args):
  return subprocess.run(
    [sys.executable, str(ROOT / 'benchmarks' / 'gpu_check.py'), *args],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=120,
    check=False,
  )


def _refused(result) -> str:
  """The one line of a refusal, asserting exit code 2."""
  assert result.returncode == 2, (result.stdout, result.stderr[-3000:])
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('error: '), result.stderr
  return lines[0]


def test_a_spent_budget_skips_every_part_cleanly(tmp_path):
  """A budget spent before the first part: nothing is measured, every part
  says it was skipped, and the report is still written."""
  out = tmp_path / 'check'
  result = _gpu_check('--smoke', '--budget_s=1e-9', f'--out={out}')
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads((out / 'gpu_check.json').read_text())
  assert [r['status'] for r in report['parts']['a']['rows']] == [
    'skipped: budget spent'
  ] * 7
  assert report['parts']['c']['status'] == 'skipped: budget spent'
  assert report['parts']['d']['status'] == 'skipped: budget spent'
  assert 'skipped: budget spent' in (out / 'gpu_check.md').read_text()


@pytest.mark.parametrize('budget', ['nan', '0'])
def test_a_budget_not_positive_and_finite_is_refused(budget, tmp_path):
  out = tmp_path / 'check'
  line = _refused(_gpu_check('--smoke', f'--budget_s={budget}', f'--out={out}'))
  assert '--budget_s' in line and 'positive finite' in line
  assert not out.exists()


def test_an_earlier_report_is_never_overwritten(tmp_path):
  (tmp_path / 'gpu_check.md').write_text('earlier')
  line = _refused(_gpu_check('--smoke', '--parts=a', f'--out={tmp_path}'))
  assert 'gpu_check.md exists' in line
  assert (tmp_path / 'gpu_check.md').read_text() == 'earlier'
  assert not (tmp_path / 'gpu_check.json').exists()


def test_an_out_that_is_a_file_is_refused(tmp_path):
  """--out naming an existing file: one line, exit 2, the file untouched."""
  (tmp_path / 'notes').write_text('mine')
  line = _refused(
    _gpu_check('--smoke', '--parts=a', f'--out={tmp_path / "notes"}')
  )
  assert '--out=' in line and 'is a file' in line
  assert (tmp_path / 'notes').read_text() == 'mine'
