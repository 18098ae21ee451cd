"""configs/study.py's capacity study: its design in the config, the scratch
arm's loss, and the report's regime, transfer and equivalence readings."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from icckd_jax import models
from icckd_jax.distillers import kd
from icckd_jax.distillers.outputs import Batch, Outputs, Trainable
from icckd_jax.errors import UserError
from icckd_jax.experiments import checks
from icckd_jax.experiments import comparisons
from icckd_jax.experiments.sweep import plan as sweep_plan


def _parameters(name: str) -> int:
  model = models.create_model(name, 10)
  variables = jax.eval_shape(
    lambda: model.init(
      jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False
    )
  )
  return sum(x.size for x in jax.tree.leaves(variables['params']))


@pytest.mark.parametrize('arg', ['capacity', 'capacity_pilot'])
def test_capacity_configs_hold_the_design(arg, tmp_path):
  from configs import study  # pylint: disable=g-import-not-at-top

  config = study.get_config(arg)
  t, s = config.base.teacher, config.base.student
  assert _parameters(t.model) >= 3 * _parameters(s.model)
  runs = sweep_plan.plan(config, str(tmp_path))
  seeds = {}
  for run in runs:
    seeds.setdefault(run.setting, []).append(run.seed)
  primary = ('delta=0.4', 'two_view_null', 'scratch')
  need = (12, 6) if arg == 'capacity' else (3, 3)
  for name in primary:
    assert len(seeds[name]) >= need[0], name
  assert len(seeds['ce_teacher']) >= need[1]
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
  if arg == 'capacity':
    assert t.dataset.name == 'image_folder' and t.dtype == s.dtype == 'bfloat16'
  for text in config.regime_checks:
    checks.parse_regime_check(text)
  assert checks.parse_transfer_check(config.transfer_check) == (
    'ce_teacher',
    'scratch',
    0.01,
  )


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
