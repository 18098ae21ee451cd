"""data/convert.py: conversions refused in one line, exit code 2, before
anything is written."""

from launch_in_process import error_line, run_launcher
from test_array_record import CONVERT, mixed_folder


def test_negative_workers_are_refused_before_writing(tmp_path):
  """workers=-1 (a float is refused by the flag's type already): one line,
  before conversion.json or the output folder exist."""
  out = tmp_path / 'out'
  code, stderr = run_launcher(
    *CONVERT,
    '--config.dataset.name=image_folder',
    f'--config.dataset.path={mixed_folder(tmp_path / "src")}',
    f'--config.output_dir={out}',
    '--config.workers=-1',
  )
  line = error_line(code, stderr)
  assert 'config.workers=' in line and 'integer >= 0' in line, line
  assert not out.exists()
