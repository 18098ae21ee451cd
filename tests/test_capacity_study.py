"""configs/study.py's capacity study: its design in the configs (the pilot,
and the amendment's two stages), stage 1's rule and how stage 2 reads it,
the scratch arm's loss, and the report's regime, transfer and equivalence
readings."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import study
from launch_in_process import error_line, run_launcher
from icckd_jax import models
from icckd_jax.distillers import kd
from icckd_jax.distillers.outputs import Batch, Outputs, Trainable
from icckd_jax.errors import UserError
from icckd_jax.experiments import checks
from icckd_jax.experiments import comparisons
from icckd_jax.experiments import transfer_rule
from icckd_jax.experiments.sweep import plan as sweep_plan
from icckd_jax.experiments.sweep import report
from icckd_jax.experiments.sweep import results
from icckd_jax.experiments.sweep import runner
from icckd_jax.training import metric_writer


def _parameters(name: str) -> int:
  model = models.create_model(name, 10)
  variables = jax.eval_shape(
    lambda: model.init(
      jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False
    )
  )
  return sum(x.size for x in jax.tree.leaves(variables['params']))


def test_the_pilot_config_holds_its_design(tmp_path):
  config = study.get_config('capacity_pilot')
  t, s = config.base.teacher, config.base.student
  assert _parameters(t.model) >= 3 * _parameters(s.model)
  runs = sweep_plan.plan(config, str(tmp_path))
  seeds = {}
  for run in runs:
    seeds.setdefault(run.setting, []).append(run.seed)
  for name in ('delta=0.4', 'two_view_null', 'scratch', 'ce_teacher'):
    assert len(seeds[name]) == 3, name
  # scratch: ce_teacher's teacher (the same run) and no distillation term.
  by = {(r.setting, r.seed): r for r in runs}
  for seed in seeds['scratch']:
    scratch, ce = by['scratch', seed], by['ce_teacher', seed]
    assert scratch.teacher_dir == ce.teacher_dir
    assert scratch.student_dir != ce.student_dir
    assert (scratch.student.distill.gamma, scratch.student.distill.alpha) == (
      1.0,
      0.0,
    )
  for text in config.regime_checks:
    checks.parse_regime_check(text)
  assert checks.parse_transfer_check(config.transfer_check) == (
    'ce_teacher',
    'scratch',
    0.01,
  )


def _window_after_last_drop(student) -> bool:
  """Regime check (c)'s window, |acc(E) − acc(E − ⌈E/5⌉)|, starts after
  the last learning-rate drop (the drop at epoch d takes effect from
  1-indexed epoch d + 1)."""
  epochs = student.num_epochs
  return max(student.lr_decay_epochs) < epochs - -(-epochs // 5)


@pytest.mark.parametrize(
  'arg, epochs',
  [('capacity_transfer', (20, 40)), ('capacity_transfer_smoke', (2, 4))],
)
def test_stage_one_shares_one_teacher_per_seed(arg, epochs, tmp_path):
  config = study.get_config(arg)
  runs = sweep_plan.plan(config, str(tmp_path))
  assert sorted({r.seed for r in runs}) == [12, 13]
  for seed in (12, 13):
    mine = [r for r in runs if r.seed == seed]
    assert len(mine) == 6
    assert len({r.teacher_dir for r in mine}) == 1  # one CE teacher
    assert len({r.student_dir for r in mine}) == 6
    assert all(r.teacher.icc.lam == 0.0 for r in mine)
  recipes = {
    (r.student.distill.gamma, r.student.distill.alpha, r.student.num_epochs)
    for r in runs
  }
  assert recipes == {
    (g, a, e) for g, a in ((0.1, 0.9), (1.0, 1.0), (1.0, 0.0)) for e in epochs
  }
  for run in runs:
    assert run.student.distill.temperature == 4.0
    assert run.student.eval_every_epochs == run.student.num_epochs
    if arg == 'capacity_transfer':
      e = run.student.num_epochs
      assert tuple(run.student.lr_decay_epochs) == (0.6 * e, 0.75 * e)
      assert _window_after_last_drop(run.student)
  if arg == 'capacity_transfer':
    t = config.base.teacher
    assert (t.num_epochs, tuple(t.lr_decay_epochs)) == (15, (10, 13))
    assert t.dataset.name == 'image_folder' and t.dataset.train_subset == 5000
  assert comparisons.parse_comparisons(config.transfer_candidates) == [
    (f'{name}@{e}', f'scratch@{e}')
    for e in epochs
    for name in ('kd_g0.1_a0.9', 'kd_g1_a1')
  ]


def _stage_one(directory, top1: dict[str, dict[int, float]], arg=None):
  """A stage 1 workdir built by hand: its sweep.json and one result.json
  per (setting, seed) of `top1` ({setting: {seed: student top-1}})."""
  config = study.get_config(arg or 'capacity_transfer_smoke')
  runner.write_sweep_file(config, str(directory))
  for setting, by_seed in top1.items():
    for seed, value in by_seed.items():
      run_dir = results.run_dir(str(directory), setting, seed)
      os.makedirs(run_dir)
      row = {'setting': setting, 'seed': seed, 'student_top1_last': value}
      metric_writer.write_json(
        os.path.join(run_dir, results.RESULT_FILE), {'row': row, 'epochs': []}
      )
  return str(directory)


def _stage_one_top1(gains: dict[str, tuple[float, float]], epochs=(2, 4)):
  """Student top-1 of every stage 1 setting on seeds 12 and 13: scratch at
  0.5, each candidate's the given gains over it (0 where not given)."""
  top1 = {}
  for e in epochs:
    for name in ('kd_g0.1_a0.9', 'kd_g1_a1', 'scratch'):
      gain = gains.get(f'{name}@{e}', (0.0, 0.0))
      top1[f'{name}@{e}'] = {12: 0.5 + gain[0], 13: 0.5 + gain[1]}
  return top1


def _rule(gains: dict[str, tuple[float, float]]) -> transfer_rule.Decision:
  config = study.get_config('capacity_transfer_smoke')
  rows = [
    {'setting': name, 'seed': seed, 'student_top1_last': value}
    for name, by_seed in _stage_one_top1(gains).items()
    for seed, value in by_seed.items()
  ]
  return transfer_rule.decide(
    comparisons.parse_comparisons(config.transfer_candidates),
    config.transfer_minimum,
    rows,
    tuple(config.seeds),
  )


def test_the_rule_takes_the_first_candidate_that_transfers_on_both_seeds():
  # Two qualify: the declared order decides, not the larger gain.
  decision = _rule({'kd_g1_a1@2': (0.02, 0.016), 'kd_g0.1_a0.9@4': (0.1, 0.1)})
  assert (decision.chosen, decision.failed) == ('kd_g1_a1@2', False)
  assert [c.meets for c in decision.candidates] == [False, True, True, False]
  assert decision.candidates[1].gains == pytest.approx({12: 0.02, 13: 0.016})
  # Both seeds must pass: a large gain on one seed and 1.4 points on the
  # other is not transfer, whatever the mean.
  decision = _rule(
    {'kd_g0.1_a0.9@2': (0.2, 0.014), 'kd_g1_a1@4': (0.015, 0.02)}
  )
  assert (decision.chosen, decision.failed) == ('kd_g1_a1@4', False)


def test_the_rule_falls_back_to_the_largest_mean_gain_and_says_so():
  decision = _rule(
    {
      'kd_g0.1_a0.9@2': (-0.03, -0.01),
      'kd_g1_a1@2': (0.03, -0.005),
      'kd_g1_a1@4': (0.012, 0.014),  # mean 1.3 > 1.25
    }
  )
  assert decision.failed and decision.chosen == 'kd_g1_a1@4'
  text = '\n'.join(transfer_rule.lines(decision))
  assert f'none met the rule: {transfer_rule.FAILED}' in text
  assert '| kd_g1_a1@2 | scratch@2 | +3.00 | -0.50 | +1.25 | no |' in text


def test_capacity_takes_its_student_recipe_from_stage_one(tmp_path):
  stage_one = _stage_one(
    tmp_path / 'stage1', _stage_one_top1({'kd_g1_a1@4': (0.02, 0.03)})
  )
  config = study.get_config('capacity_smoke')
  config.transfer_from = stage_one
  chosen = runner.with_transfer_recipe(config)
  runs = sweep_plan.plan(chosen, str(tmp_path / 'stage2'))
  assert {r.setting for r in runs} == {'delta=0.4', 'two_view_null', 'scratch'}
  assert sorted({r.seed for r in runs}) == [0, 1]
  by = {(r.setting, r.seed): r for r in runs}
  for seed in (0, 1):
    null, scratch = by['two_view_null', seed], by['scratch', seed]
    assert scratch.teacher_dir == null.teacher_dir  # the same teacher run
    for arm in ('delta=0.4', 'two_view_null'):
      s = by[arm, seed].student
      assert (s.distill.gamma, s.distill.alpha) == (1.0, 1.0)
    assert (scratch.student.distill.gamma, scratch.student.distill.alpha) == (
      1.0,
      0.0,
    )
    for run in (null, scratch, by['delta=0.4', seed]):
      assert run.student.num_epochs == 4
      assert tuple(run.student.lr_decay_epochs) == (2, 3)
  # The decision, recorded for stage 2's report.
  rule = '\n'.join(chosen.transfer_rule)
  assert 'Chosen: **kd_g1_a1@4** (the first that met the rule)' in rule
  assert 'student.num_epochs=4' in rule and transfer_rule.FAILED not in rule
  # The GPU study's own arms, seeds and checks.
  gpu = study.get_config('capacity')
  assert len(gpu.seeds) == 12 and tuple(gpu.primary_seeds) == tuple(gpu.seeds)
  assert checks.parse_transfer_check(gpu.transfer_check) == (
    'two_view_null',
    'scratch',
    0.01,
  )
  t = gpu.base.teacher
  assert _parameters(t.model) >= 6 * _parameters(gpu.base.student.model)
  assert t.dtype == gpu.base.student.dtype == 'bfloat16'


def test_capacity_refuses_a_missing_or_unfinished_stage_one(tmp_path):
  top1 = _stage_one_top1({})
  del top1['scratch@4'][13]  # one run has not finished
  unfinished = _stage_one(tmp_path / 'stage1', top1)
  stage_two = tmp_path / 'stage2'
  for extra, expected in (
    ((), 'config.transfer_from is not set'),
    ((f'--config.transfer_from={tmp_path / "none"}',), 'holds no sweep'),
    ((f'--config.transfer_from={unfinished}',), '11 of its 12 runs'),
  ):
    line = error_line(
      *run_launcher(
        '--config=configs/study.py:capacity_smoke',
        f'--workdir={stage_two}',
        *extra,
      )
    )
    assert 'config.transfer_from' in line and expected in line, line
    assert not stage_two.exists()


def test_stage_two_report_says_first_that_check_b_failed(tmp_path):
  stage_one = _stage_one(
    tmp_path / 'stage1', _stage_one_top1({'kd_g1_a1@2': (0.01, 0.005)})
  )
  config = study.get_config('capacity_smoke')
  config.transfer_from = stage_one
  stage_two = tmp_path / 'stage2'
  runner.write_sweep_file(runner.with_transfer_recipe(config), str(stage_two))
  for row in _rows({'delta=0.4': 0.0, 'two_view_null': 0.0, 'scratch': -0.02}):
    run_dir = results.run_dir(str(stage_two), row['setting'], row['seed'])
    os.makedirs(run_dir, exist_ok=True)
    metric_writer.write_json(
      os.path.join(run_dir, results.RESULT_FILE), {'row': row, 'epochs': []}
    )
  report.write_report(str(stage_two), str(tmp_path / 'out'))
  text = (tmp_path / 'out' / report.SUMMARY_FILE).read_text()
  assert text.splitlines()[0] == f'# stage2: {transfer_rule.FAILED}'
  assert 'Chosen: **kd_g1_a1@2**' in text
  assert 'student.distill.gamma=1.0' in text


def test_the_scratch_arm_learns_from_the_labels_alone():
  """γ = 1, α = 0: the loss and its gradient are those of CE, whatever the
  teacher says."""
  rng = np.random.default_rng(0)
  logits = jnp.asarray(rng.normal(size=(8, 10)), jnp.float32)
  labels = jnp.asarray(rng.integers(0, 10, size=8))
  hp = {'temperature': 4.0, 'gamma': 1.0, 'alpha': 0.0}

  def loss(student_logits, teacher_logits):
    batch = Batch(
      Outputs(logits=student_logits, features=None),
      Outputs(logits=teacher_logits, features=None),
      labels,
      None,
      Trainable(None, None, None, None),  # kd has no trainable parts
    )
    return kd.loss(batch, hp)[0]

  teachers = [
    jnp.asarray(rng.normal(size=(8, 10)) * k, jnp.float32) for k in (1, 9)
  ]
  grads = [jax.grad(loss)(logits, t) for t in teachers]
  ce = -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(8), labels])
  assert float(loss(logits, teachers[0])) == pytest.approx(float(ce), rel=1e-6)
  np.testing.assert_array_equal(grads[0], grads[1])


def _rows(arm_offsets: dict[str, float], seeds=range(6), spread=0.002):
  rng = np.random.default_rng(1)
  rows = []
  for seed in seeds:
    base = 0.80 + rng.normal(scale=0.01)
    for name, offset in arm_offsets.items():
      rows.append(
        {
          'setting': name,
          'seed': seed,
          'student_top1_last': base + offset + rng.normal(scale=spread),
          'teacher_top1_last': 0.9,
          'student_train_accuracy_change_last_fifth': 0.004,
        }
      )
  return rows


def test_regime_lines_check_transfer_and_every_setting():
  sweep = {
    'regime_checks': ['*: student_train_accuracy_change_last_fifth < 0.01'],
    'transfer_check': 'kd:scratch >= 0.01',
  }
  transfers = _rows({'kd': 0.02, 'scratch': 0.0})
  text = '\n'.join(checks.regime_lines(sweep, ['kd', 'scratch'], transfers))
  assert text.count('student_train_accuracy_change_last_fifth | < 0.01') == 2
  assert 'KD transfers' in text and text.rstrip().endswith('| yes |')
  # Half a point better than scratch is not transfer at a 1-point bar.
  small = _rows({'kd': 0.005, 'scratch': 0.0})
  text = '\n'.join(checks.regime_lines(sweep, ['kd', 'scratch'], small))
  assert text.rstrip().endswith('| **no** |')
  with pytest.raises(UserError, match='SETTING: COLUMN OP NUMBER'):
    checks.parse_regime_check('delta=0.4: pass_rate about 0.5')
  with pytest.raises(UserError, match='ARM:CONTROL'):
    checks.parse_transfer_check('kd-scratch >= 0.01')


def test_primary_reading_claims_equivalence_only_by_tost():
  names, controls = ['a', 'null'], ['null']
  sweep = {'primary_settings': ['a', 'null'], 'equivalence_margin': 0.01}
  # Tight and centred on 0: the TOST at ±1 point rejects both sides.
  tight = comparisons.primary_lines(
    sweep, names, controls, _rows({'a': 0.0, 'null': 0.0})
  )
  reading = next(l for l in tight if l.startswith('- a − null'))
  assert 'no difference detected' in reading and ', equivalent.' in reading
  # Wide spread: nothing detected, and not shown equivalent either.
  wide = comparisons.primary_lines(
    sweep, names, controls, _rows({'a': 0.0, 'null': 0.0}, spread=0.02)
  )
  reading = next(l for l in wide if l.startswith('- a − null'))
  assert 'no difference detected' in reading
  assert 'not shown equivalent' in reading and 'could detect about' in reading
  # Without a declared margin there is no equivalence verdict at all.
  del sweep['equivalence_margin']
  bare = comparisons.primary_lines(
    sweep, names, controls, _rows({'a': 0.0, 'null': 0.0})
  )
  assert not any('equivalent' in l for l in bare)
  # A real difference is read as one.
  shifted = comparisons.primary_lines(
    sweep, names, controls, _rows({'a': 0.03, 'null': 0.0})
  )
  assert any(l.startswith('- a − null: a difference of +3.') for l in shifted)
