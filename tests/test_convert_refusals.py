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


def test_a_zero_byte_info_json_is_converted_again(tmp_path):
  """A 0-byte info.json (a crash or a full disk while it was written) is not
  a finished conversion: the rerun writes it again, no traceback, and the
  set then loads."""
  source, out = mixed_folder(tmp_path / 'src'), tmp_path / 'out'
  args = (
    *CONVERT,
    '--config.dataset.name=image_folder',
    f'--config.dataset.path={source}',
    f'--config.output_dir={out}',
    '--config.workers=1',
  )
  code, stderr = run_launcher(*args)
  assert code == 0, stderr[-2000:]
  written = (out / 'info.json').read_text()
  (out / 'info.json').write_text('')
  code, stderr = run_launcher(*args)
  assert code == 0 and 'Traceback' not in stderr, stderr[-2000:]
  assert 'cannot be read' in stderr
  assert (out / 'info.json').read_text() == written
