"""A run's config checked before anything is written (runs/validate.py)."""

from launch_in_process import error_line, run_launcher
from test_robust_runs import SMOKE


def test_a_path_for_the_synthetic_set_is_refused(tmp_path):
  """Case 12."""
  new = tmp_path / 'new'
  code, stderr = run_launcher(
    *SMOKE, f'--config.dataset.path={tmp_path}', f'--workdir={new}'
  )
  line = error_line(code, stderr)
  assert "'synthetic' data set is generated" in line
  assert not new.exists()
