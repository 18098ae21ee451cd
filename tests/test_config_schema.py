"""The config schema: one declaration per field, and what is derived from it
(range checks, the resume check, the run store's key, the compile key)."""

import dataclasses
import json
import os
import pathlib
import re

import pytest

from configs import student as student_config
from configs import teacher as teacher_config
from icckd_jax import distillers
from icckd_jax.errors import UserError
from icckd_jax.experiments.sweep import run_store
from icckd_jax.runs import compat
from icckd_jax.runs import config_schema
from icckd_jax.runs import reuse
from icckd_jax.runs import spec
from icckd_jax.runs import validate
import make_distill_keys


def test_every_field_of_the_stage_configs_is_declared_or_identity():
  """A typo in a declaration would silently make a field identity: each
  declared path must exist in a stage config."""
  paths = set()
  for config in (teacher_config.get_config(), student_config.get_config()):
    paths |= {
      p for p, _ in validate._leaves(json.loads(config.to_json_best_effort()))
    }
  # Read with a default where a config lacks it (the synthetic set's).
  optional = {'dataset.channels'}
  missing = set(config_schema.fields()) - paths - optional
  assert not missing, missing


def test_roles_give_the_derived_lists():
  assert set(config_schema.bookkeeping()) == {
    'mode',
    'workdir',
    'log_every_steps',
    'checkpoint_every_epochs',
    'keep_checkpoints',
    'compilation_cache',
    'preemption_check_every_steps',
    'teacher.allow_unfinished',
    'input.workers',
  }
  resumable = set(config_schema.resumable())
  assert {'num_epochs', 'eval_batch_size', 'num_devices'} <= resumable
  assert not {'seed', 'batch_size', 'icc.delta', 'model'} & resumable
  not_compiled = set(config_schema.not_compiled())
  assert {'seed', 'icc.delta', 'distill.temperature', 'num_epochs'} <= (
    not_compiled
  )
  assert not {'batch_size', 'model', 'icc.margin_kind'} & not_compiled


@pytest.mark.parametrize(
  'field,value,message',
  [
    (
      'icc.margin_kind',
      'rank',
      "config.icc.margin_kind='rank' is unknown; choose one of: prob, logit",
    ),
    ('cache.store', 'disk', "config.cache.store='disk' is unknown"),
    ('dtype', 'float16', "config.dtype='float16' is unknown"),
    (
      'icc.tau',
      0.0,
      'config.icc.tau=0.0 is out of range; it must be a finite number > 0',
    ),
    ('cache.size', -1, 'config.cache.size=-1 is out of range'),
  ],
)
def test_check_config_uses_the_declared_range_or_choices(field, value, message):
  config = teacher_config.get_config()
  group, _, name = field.rpartition('.')
  (config[group] if group else config)[name] = value
  with pytest.raises(UserError, match=message.replace('(', r'\(')):
    validate.check_config(config)


def test_a_ce_teachers_key_ignores_the_fields_it_does_not_use():
  ce = teacher_config.get_config()
  ce.icc.lam = 0.0
  other = teacher_config.get_config()
  other.icc.lam = 0.0
  other.icc.delta, other.cache.size, other.icc.head = 0.9, 0, 'mlp'
  assert run_store.teacher_key(ce) == run_store.teacher_key(other)
  # With the objective on, the same changes make other teachers.
  on, changed = teacher_config.get_config(), teacher_config.get_config()
  changed.icc.delta = 0.9
  assert run_store.teacher_key(on) != run_store.teacher_key(changed)
  ce_on = teacher_config.get_config()
  assert run_store.teacher_key(ce) != run_store.teacher_key(ce_on)


def test_resume_check_ignores_unused_and_resumable_fields_only():
  stored = json.loads(teacher_config.get_config().to_json_best_effort())
  stored['icc']['lam'] = 0.0
  new = json.loads(json.dumps(stored))
  new['icc']['delta'], new['num_epochs'] = 0.9, 300
  assert validate.config_differences(stored, new) == []
  new['learning_rate'] = 0.1
  assert validate.config_differences(stored, new) == [
    'learning_rate=0.05 (now 0.1)'
  ]


def test_a_field_added_later_resumes_only_with_its_old_behaviour():
  new = json.loads(teacher_config.get_config().to_json_best_effort())
  stored = json.loads(json.dumps(new))
  del stored['icc']['empty_anchors']  # saved before the field existed
  assert validate.config_differences(stored, new) == [
    "icc.empty_anchors='count' (now 'exclude')"
  ]


def test_the_compile_key_ignores_traced_values_only():
  a, b = teacher_config.get_config(), teacher_config.get_config()
  b.seed, b.icc.delta, b.num_epochs = 3, 0.8, 10
  key = spec.from_config(a).step_key('x')
  assert spec.from_config(b).step_key('x') == key
  b.batch_size = 32
  assert spec.from_config(b).step_key('x') != key


def test_a_students_key_ignores_the_weights_of_other_methods():
  kd, other = student_config.get_config(), student_config.get_config()
  other.distill.dkd_beta, other.distill.at_weight = 1.0, 1.0
  assert run_store.student_key(kd, 't') == run_store.student_key(other, 't')
  other.distill.alpha = 0.5  # KD's own weight: another student
  assert run_store.student_key(kd, 't') != run_store.student_key(other, 't')
  dkd, dkd_other = student_config.get_config(), student_config.get_config()
  dkd.distill.method = dkd_other.distill.method = 'dkd'
  dkd_other.distill.dkd_beta = 1.0
  assert run_store.student_key(dkd, 't') != run_store.student_key(
    dkd_other, 't'
  )


def _parts_of(path: str) -> list[str]:
  """The parts of runs/spec.py that hold the dotted `path`."""
  section, _, name = path.rpartition('.')
  return [
    cls.__name__
    for cls, read_from in spec.PARTS.items()
    if read_from == section
    and name in {f.name for f in dataclasses.fields(cls)}
  ]


def test_every_schema_field_lands_in_exactly_one_part():
  """The parts are the schema's sections: each declared field is read from
  one part; config.distill's are Distillation's (its method, shared and own
  settings)."""
  paths = [p for p in config_schema.fields() if not p.startswith('distill.')]
  places = {path: _parts_of(path) for path in paths}
  assert {p: f for p, f in places.items() if len(f) != 1} == {}
  assert [f.name for f in dataclasses.fields(spec.Distillation)] == [
    'method',
    'shared',
    'own',
  ]
  config = student_config.get_config()
  for method in distillers.DISTILLERS:
    config.distill.method = method
    part = spec.from_config(config).distillation
    assert set(part.shared) == set(distillers.settings.SHARED)
    assert set(part.own) == set(distillers.DISTILLERS[method].own)
    assert set(distillers.fields(method)) <= set(part.to_dict()), method
    assert {f'distill.{f}' for f in part.to_dict()} <= set(
      config_schema.fields()
    )


def test_the_parts_hold_the_configs_values():
  for config in (teacher_config.get_config(), student_config.get_config()):
    run = spec.from_config(config)
    tree = validate.config_as_dict(config)
    assert run.saved == tree
    for name in ('model', 'batch_size', 'learning_rate', 'seed', 'dtype'):
      assert getattr(run.recipe, name) == tree[name]
    assert run.recipe.lr_decay_epochs == tuple(tree['lr_decay_epochs'])
    assert run.bookkeeping.keep_checkpoints == tree['keep_checkpoints']
    assert dataclasses.asdict(run.data) == {
      **dataclasses.asdict(spec.DataRequest()),
      **tree['dataset'],
    }
    assert run.inputs == spec.Inputs(**tree['input'])
    # Fields added since steps were keyed count at their added defaults.
    assert run.compiled == reuse.config_key(
      config,
      config_schema.not_compiled() + compat.top_level_at_added_default(config),
    )
  teacher = spec.from_config(teacher_config.get_config())
  assert teacher.distillation is None and teacher.teacher is None
  assert teacher.objective.lam == teacher_config.get_config().icc.lam
  assert teacher.cache.size == teacher_config.get_config().cache.size
  student = spec.from_config(student_config.get_config())
  assert student.objective is None and student.cache is None
  assert (
    student.distillation.method == student_config.get_config().distill.method
  )
  # kd's traced settings: T, γ, α (not its standardize_logits switch).
  assert student.distillation.weights == {
    'temperature': 4.0,
    'gamma': 0.1,
    'alpha': 0.9,
  }


def _recorded():
  with open(os.path.join(os.path.dirname(__file__), 'distill_keys.json')) as f:
    return json.load(f)


RECORDED = _recorded()


@pytest.mark.parametrize('source', sorted(RECORDED))
def test_every_methods_keys_are_those_recorded_before_the_settings_moved(
  source,
):
  """The run store's key, the compiled step's key and the saved config of
  every method, as tests/make_distill_keys.py recorded them when each field
  was spelled out in configs/student.py, runs/config_schema.py and
  runs/spec.py: stored runs and shared steps are still found."""
  module, _, arg = source.partition(':')
  assert set(RECORDED[source]) == set(distillers.DISTILLERS)
  for method, recorded in RECORDED[source].items():
    assert make_distill_keys.keys(module, arg or None, method) == recorded, (
      method
    )


def test_no_method_specific_field_is_named_outside_its_method():
  """runs/ and configs/student.py derive config.distill from the registry:
  none names a method's own setting."""
  root = pathlib.Path(__file__).parent.parent
  sources = [*(root / 'icckd_jax' / 'runs').glob('*.py')]
  sources.append(root / 'configs' / 'student.py')
  own = {n for m in distillers.DISTILLERS.values() for n in m.own}
  assert len(own) > 20  # every method's, not an empty scan
  for path in sources:
    words = set(re.findall(r'\w+', path.read_text()))
    assert not own & words, (path.name, sorted(own & words))


def test_a_field_added_to_a_method_resumes_only_with_its_old_behaviour():
  """A student saved before reviewkd_max_mid existed resumes with 512 (its
  added default) and reads it as such; standardize_logits likewise."""
  config = student_config.get_config()
  config.distill.method = 'reviewkd'
  new = validate.config_as_dict(config)
  stored = json.loads(json.dumps(new))
  del stored['distill']['reviewkd_max_mid']
  del stored['distill']['standardize_logits']
  assert validate.config_differences(stored, new) == []
  new['distill']['reviewkd_max_mid'] = 256
  assert validate.config_differences(stored, new) == [
    'distill.reviewkd_max_mid=512 (now 256)'
  ]
  part = spec.Distillation.from_section(stored['distill'])
  assert part.own['reviewkd_max_mid'] == 512
  assert part.shared['standardize_logits'] is False
  del stored['distill']['reviewkd_weight']  # never had an added default
  with pytest.raises(KeyError, match='reviewkd_weight'):
    spec.Distillation.from_section(stored['distill'])
