"""The ablation runner end to end, and the traced δ (one compiled step)."""

import csv
import json
import shutil

import pytest

from icckd_jax.data import datasets
from icckd_jax.input_pipeline import resident
from icckd_jax import parallel
from icckd_jax.experiments import comparisons
from icckd_jax.experiments.sweep import report
from icckd_jax.experiments.sweep import settings
from icckd_jax.experiments.sweep import plan as sweep_plan
from icckd_jax.stages import teacher_step
from icckd_jax.stages import teacher
from icckd_jax.errors import UserError
from icckd_jax.runs import spec
from icckd_jax.runs import layout
from launch_in_process import launch


def test_one_compiled_teacher_step_serves_two_deltas(smoke_config):
  config = smoke_config
  config.icc.delta = 0.2
  mesh = parallel.make_mesh(1)
  dataset = datasets.load(spec.data_request(config.dataset))
  setup = teacher.build_teacher(spec.from_config(config), dataset, mesh)
  source = resident.ResidentSource.of(dataset)
  batch = next(setup.batches(spec.from_config(config).recipe, source, mesh, 0))
  gate = {}
  for delta in (-1.0, 0.2, 1.0):
    state = setup.create_state(mesh)
    _, metrics = setup.train_step(
      state, batch, teacher_step.hyperparameters(0.1, 0.1, delta)
    )
    gate[delta] = float(metrics['gate_pass_rate'])
  assert setup.train_step._cache_size() == 1  # pylint: disable=protected-access
  assert gate[-1.0] == 1.0 and gate[1.0] == 0.0


@pytest.fixture(scope='module')
def smoke_sweep(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('sweep') / 'margin'
  result = launch(
    '--config=configs/ablation_margin.py:smoke', f'--workdir={workdir}'
  )
  return workdir, result


def test_sweep_writes_the_runs_numbers(smoke_sweep):
  workdir, result = smoke_sweep
  assert "compiled steps: {'dataset': 1, 'teacher_step': 1" in result.stderr
  with open(workdir / report.RESULTS_CSV) as f:
    rows = list(csv.DictReader(f))
  assert [(r['setting'], r['seed']) for r in rows] == [
    ('delta=0.2', '0'),
    ('delta=0.6', '0'),
  ]
  summary_md = (workdir / report.SUMMARY_MD).read_text()
  for row in rows:
    run = workdir / row['setting'] / 'seed_0'
    teacher_summary = json.loads((run / 'teacher' / 'summary.json').read_text())
    student_summary = json.loads((run / 'student' / 'summary.json').read_text())
    assert float(row['teacher_top1_last']) == teacher_summary['final_top1']
    assert float(row['student_top1_last']) == student_summary['final_top1']
    assert (
      float(row['teacher_top1_best_evaluated']) == teacher_summary['best_top1']
    )
    saved = json.loads((run / 'teacher' / 'config.json').read_text())
    assert saved['icc']['delta'] == float(row['setting'].split('=')[1])
    line = next(
      l
      for l in summary_md.splitlines()
      if l.startswith(f'| {row["setting"]} |')
    )
    assert f'{100 * teacher_summary["final_top1"]:.2f} (1 seed)' in line
  with open(workdir / report.EPOCHS_CSV) as f:
    epochs = list(csv.DictReader(f))
  teacher_epochs = [
    e for e in epochs if e['stage'] == 'teacher' and e['setting'] == 'delta=0.2'
  ]
  records = [
    json.loads(l)
    for l in (
      workdir / 'delta=0.2' / 'seed_0' / 'teacher' / 'metrics.jsonl'
    ).open()
    if json.loads(l)['kind'] == 'epoch'
  ]
  assert [float(e['gate_pass_rate']) for e in teacher_epochs] == [
    r['gate_pass_rate'] for r in records
  ]
  assert [float(e['effective_weight']) for e in teacher_epochs] == [
    r['effective_weight'] for r in records
  ]
  for plot in ('accuracy.png', 'curves.png'):
    assert (workdir / plot).read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'


def test_restarting_a_finished_sweep_runs_nothing(smoke_sweep):
  workdir, _ = smoke_sweep
  metrics = sorted(workdir.rglob('metrics.jsonl'))
  before = {p: p.read_bytes() for p in metrics}
  result = launch(
    '--config=configs/ablation_margin.py:smoke', f'--workdir={workdir}'
  )
  assert result.stderr.count('finished earlier, skipped') == 2
  assert 'compiled steps: {}' in result.stderr
  assert {p: p.read_bytes() for p in metrics} == before


def test_report_regenerates_from_finished_runs(smoke_sweep):
  workdir, _ = smoke_sweep
  (workdir / report.SUMMARY_MD).unlink()
  launch('--config=configs/report.py', f'--config.workdir={workdir}')
  assert '| delta=0.6 | 1 |' in (workdir / report.SUMMARY_MD).read_text()


def test_settings_parse_and_bad_fields_fail_early():
  setting = settings.parse_setting(
    'a: teacher.icc.delta=0.2, teacher.cache.store="images"'
  )
  assert setting == settings.Setting(
    'a', {'teacher.icc.delta': 0.2, 'teacher.cache.store': 'images'}
  )
  from configs import pipeline  # pylint: disable=g-import-not-at-top

  base = pipeline.get_config('smoke')
  config = settings.apply_overrides(base, setting.overrides)
  assert config.teacher.icc.delta == 0.2 and base.teacher.icc.delta == 0.4
  with pytest.raises(UserError, match='teacher.icc.gamma'):
    settings.apply_overrides(base, {'teacher.icc.gamma': 1.0})
  with pytest.raises(UserError, match='field=value'):
    settings.parse_setting('b: teacher.icc.delta')


def test_study_plan_runs_primary_seeds_and_whole_seeds_first(tmp_path):
  """configs/study.py: 10 seeds for the primary settings, 5 for the rest,
  ordered seed by seed; its extra pairs parse."""
  from configs import study  # pylint: disable=g-import-not-at-top

  config = study.get_config('cpu')
  runs = sweep_plan.plan(config, str(tmp_path))
  by_setting = {}
  for run in runs:
    by_setting.setdefault(run.setting, []).append(run.seed)
  for name, seeds in by_setting.items():
    assert seeds == list(range(10 if name in study.PRIMARY else 5)), name
  assert len(runs) == 3 * 10 + 7 * 5
  assert [r.seed for r in runs] == sorted(r.seed for r in runs)
  assert comparisons.parse_comparisons(config.comparisons) == [
    ('no_cache', 'delta=0.4'),
    ('image_cache', 'delta=0.4'),
  ]
  with pytest.raises(UserError, match='not arm:control'):
    comparisons.parse_comparisons('no_cache')


def test_damaged_results_are_left_out_named_and_rewritten(
  smoke_sweep, tmp_path
):
  """A truncated result.json and one holding a malformed value, of runs
  whose stages' records are out of reach (unlinked): the report
  names and counts what it left out and never writes the bad value into
  results.csv; the same sweep command rewrites both and carries on."""
  source, _ = smoke_sweep
  workdir = tmp_path / 'margin'
  shutil.copytree(source, workdir, symlinks=True)
  for setting in ('delta=0.2', 'delta=0.6'):
    for stage in ('teacher', 'student'):
      # Without its stages' records the report reads result.json alone.
      (workdir / setting / 'seed_0' / stage).unlink()
  truncated = workdir / 'delta=0.2' / 'seed_0' / layout.RESULT_FILE
  truncated.write_text(truncated.read_text()[:40])
  malformed = workdir / 'delta=0.6' / 'seed_0' / layout.RESULT_FILE
  result = json.loads(malformed.read_text())
  result['row']['teacher_top1_last'] = 'NaN?'
  malformed.write_text(json.dumps(result))

  with pytest.raises(UserError, match=r'2 result file\(s\) unreadable'):
    report.write_report(str(workdir))
  result['row']['teacher_top1_last'] = 0.5
  malformed.write_text(json.dumps(result))
  report.write_report(str(workdir))
  with open(workdir / report.RESULTS_CSV) as f:
    rows = list(csv.DictReader(f))
  assert [r['setting'] for r in rows] == ['delta=0.6']
  summary_md = (workdir / report.SUMMARY_MD).read_text()
  assert 'Left out: 1 run(s)' in summary_md and str(truncated) in summary_md

  result['row']['student_top1_last'] = [1, 2]
  malformed.write_text(json.dumps(result))
  launch('--config=configs/ablation_margin.py:smoke', f'--workdir={workdir}')
  with open(workdir / report.RESULTS_CSV) as f:
    rows = list(csv.DictReader(f))
  assert [r['setting'] for r in rows] == ['delta=0.2', 'delta=0.6']
  assert all(float(r['student_top1_last']) >= 0 for r in rows)
  assert 'Left out' not in (workdir / report.SUMMARY_MD).read_text()


def test_report_recomputes_rows_from_the_runs_records(smoke_sweep):
  """A result.json written by older code lacks newer columns: the report
  recomputes each finished run from its stages' records."""
  workdir, _ = smoke_sweep
  path = workdir / 'delta=0.2' / 'seed_0' / layout.RESULT_FILE
  result = json.loads(path.read_text())
  del result['row']['teacher_model'], result['row']['student_top1_last']
  path.write_text(json.dumps(result))
  report.write_report(str(workdir))
  with open(workdir / report.RESULTS_CSV) as f:
    rows = {r['setting']: r for r in csv.DictReader(f)}
  student = json.loads(
    (workdir / 'delta=0.2' / 'seed_0' / 'student' / 'summary.json').read_text()
  )
  assert rows['delta=0.2']['teacher_model'] == 'resnet8'
  assert float(rows['delta=0.2']['student_top1_last']) == student['final_top1']
