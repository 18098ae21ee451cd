"""A sweep's definition checked before anything is written
(experiments/sweep/plan.py): a setting named to leave the sweep's workdir,
repeated seeds.
"""

import pytest

from icckd_jax.errors import UserError
from icckd_jax.experiments.sweep import plan as sweep_plan


@pytest.mark.parametrize('name', ['..', '.', 'a\\b'])
def test_a_setting_named_to_leave_the_sweep_is_refused(tmp_path, name):
  """A setting's name is a directory under the sweep's workdir: '..' (or
  '.', or a backslash) would put runs outside it, or over each other."""
  from configs import study  # pylint: disable=g-import-not-at-top

  config = study.get_config('cpu')
  config.settings = (f'{name}: teacher.icc.delta=0.2',)
  with pytest.raises(UserError, match='directory name of its own'):
    sweep_plan.plan(config, str(tmp_path / 'sweep'))
  assert not list(tmp_path.iterdir())


@pytest.mark.parametrize('field', ['seeds', 'primary_seeds'])
def test_repeated_seeds_are_refused(tmp_path, field):
  from configs import study  # pylint: disable=g-import-not-at-top

  config = study.get_config('cpu')
  config[field] = (0, 0)
  with pytest.raises(UserError, match=f'config.{field}=.0, 0. repeats'):
    sweep_plan.plan(config, str(tmp_path))
