"""Run stores written before the house's second storey keep their names.

A sweep finds a finished run by its key (experiments/sweep/run_store.py): a
key that changed would retrain every stored run under a new name. The keys
below were computed by the code at commit 89d87a0, the last before the
package's rooms were redrawn, from the shipped configs."""

import pytest

from configs import student
from configs import teacher
from icckd_jax.experiments.sweep import run_store


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
