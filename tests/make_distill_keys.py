r"""Records what names a student of each distillation method: the fixture
tests/distill_keys.json that tests/test_distill_config.py compares with.

For every method of the registry and each of configs/student.py's and
configs/imagenet.py's student configs, with config.distill.method set to
it: the run store's key (`run_store.student_key`, teacher key 'teacher'),
the digest of the compiled step's key (`spec.RunSpec.compiled`, which
`step_key` extends with the teacher's module and the mesh) and the digest
of the config as saved with the run (`validate.config_as_dict`, keys
sorted). These must not change when the way the fields are declared does
(a run store or a compiled step would stop being found).

  python tests/make_distill_keys.py   # rewrites tests/distill_keys.json
"""

import hashlib
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE = os.path.join(ROOT, 'tests', 'distill_keys.json')
# The configs recorded: (module, argument).
CONFIGS = (
  ('student', None),
  ('student', 'smoke'),
  ('imagenet', 'r34_r18'),
  ('imagenet', 'r50_mv1_crd'),
)


def _digest(text: str) -> str:
  return hashlib.sha256(text.encode()).hexdigest()


def config(module: str, arg: str | None, method: str):
  """The student config `module`:`arg` with config.distill.method set."""
  import importlib  # pylint: disable=g-import-not-at-top

  c = importlib.import_module(f'configs.{module}').get_config(arg)
  c.distill.method = method
  return c


def keys(module: str, arg: str | None, method: str) -> dict[str, str]:
  """{student_key, compiled, saved} of one config and method."""
  # pylint: disable=g-import-not-at-top
  from icckd_jax.experiments.sweep import run_store
  from icckd_jax.runs import spec
  from icckd_jax.runs import validate

  c = config(module, arg, method)
  return {
    'student_key': run_store.student_key(c, 'teacher'),
    'compiled': _digest(spec.from_config(c).compiled),
    'saved': _digest(json.dumps(validate.config_as_dict(c), sort_keys=True)),
  }


def record() -> dict[str, dict[str, dict[str, str]]]:
  """{'module:arg': {method: keys}} of every recorded config and method."""
  from icckd_jax import distillers  # pylint: disable=g-import-not-at-top

  return {
    f'{module}:{arg or ""}': {
      method: keys(module, arg, method) for method in distillers.DISTILLERS
    }
    for module, arg in CONFIGS
  }


if __name__ == '__main__':
  sys.path.insert(0, ROOT)
  with open(FIXTURE, 'w') as f:
    json.dump(record(), f, indent=1, sort_keys=True)
    f.write('\n')
  print(f'wrote {FIXTURE}')
