"""A run's config checked before anything is written (runs/validate.py)."""

from launch_in_process import refusal
from helpers import SMOKE


def test_a_path_for_the_synthetic_set_is_refused(tmp_path):
  """Case 12."""
  line = refusal(tmp_path / 'new', *SMOKE, f'--config.dataset.path={tmp_path}')
  assert "'synthetic' data set is generated" in line
