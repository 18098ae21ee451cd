"""training/compilation_cache.py: an entry JAX cannot read (cut short as
the disk filled) is removed at the next start, with one warning line, and
written again by the next compilation, instead of JAX's warning at every
start; whole entries and entries still being written are left alone, and
read once."""

import os
import subprocess
import sys
import time
import zlib

import jax
import pytest

from conftest import ROOT
from icckd_jax.training import compilation_cache


def _entry(cache, name, payload: bytes, age_s: float = 120):
  """A JAX cache entry (4 bytes of compile time, then the executable,
  zlib-compressed), last written `age_s` ago."""
  path = cache / f'jit_{name}-{name * 8}-cache'
  path.write_bytes(zlib.compress((7).to_bytes(4, 'big') + payload))
  when = time.time() - age_s
  os.utime(path, (when, when))
  return path


def _cut(path, size: int, age_s: float = 120):
  data = path.read_bytes()
  path.write_bytes(data[:size])
  when = time.time() - age_s
  os.utime(path, (when, when))


def test_entries_that_cannot_be_read_are_removed_once(tmp_path, caplog):
  whole = _entry(tmp_path, 'whole', os.urandom(5000))
  cut = _entry(tmp_path, 'cut', os.urandom(5000))
  _cut(cut, 2000)
  empty = _entry(tmp_path, 'empty', b'x' * 100)
  _cut(empty, 0)
  # Being written by another process right now: not judged yet.
  fresh = _entry(tmp_path, 'fresh', os.urandom(5000), age_s=0)
  _cut(fresh, 2000, age_s=0)
  other = tmp_path / 'not-an-entry'
  other.write_bytes(b'\0')

  removed = compilation_cache.repair(str(tmp_path))

  assert sorted(removed) == sorted([cut.name, empty.name])
  assert not cut.exists() and not empty.exists()
  assert whole.exists() and fresh.exists() and other.exists()
  warnings = [r for r in caplog.records if r.levelname == 'WARNING']
  assert len(warnings) == 1 and 'removed 2 entries' in warnings[0].message

  # The next start reads only what changed: the whole entry is known by its
  # size and time (so even rewritten alike it is not read again); the fresh
  # one, once settled, is judged and removed.
  stat = whole.stat()
  whole.write_bytes(b'\0' * stat.st_size)
  os.utime(whole, ns=(stat.st_atime_ns, stat.st_mtime_ns))
  old = time.time() - 120
  os.utime(fresh, (old, old))
  assert compilation_cache.repair(str(tmp_path)) == [fresh.name]
  assert whole.exists()


def test_a_cache_that_cannot_be_listed_is_left_alone(tmp_path):
  assert compilation_cache.repair(str(tmp_path / 'absent')) == []


def _run_in_fresh_home(tmp_path, name: str) -> str:
  """A one-epoch smoke teacher without $JAX_COMPILATION_CACHE_DIR (the
  tests' own cache) and with HOME in `tmp_path`: its cache is
  ~/.cache/icckd_jax/xla there. Returns its stderr."""
  env = {
    k: v for k, v in os.environ.items() if k != 'JAX_COMPILATION_CACHE_DIR'
  }
  env['HOME'] = str(tmp_path / 'home')
  result = subprocess.run(
    [
      sys.executable,
      str(ROOT / 'launch.py'),
      '--config=configs/teacher.py:smoke',
      '--config.num_epochs=1',
      '--config.dataset.num_train=64',
      '--config.icc.lam=0',
      '--config.num_devices=1',
      f'--workdir={tmp_path / name}',
    ],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    check=False,
  )
  assert result.returncode == 0, result.stderr[-2000:]
  return result.stderr


def _home_cache(tmp_path):
  return tmp_path / 'home' / '.cache' / 'icckd_jax' / 'xla'


def test_a_fresh_home_gets_a_compilation_cache_from_the_first_run(tmp_path):
  """A run fills ~/.cache/icckd_jax/xla: the train and eval steps are
  kept."""
  _run_in_fresh_home(tmp_path, 'run')
  # The train step, the eval step and the small programs around them.
  assert len(list(_home_cache(tmp_path).glob('*-cache'))) >= 2


def test_an_empty_compilation_cache_leaves_it_off(monkeypatch):
  monkeypatch.delenv('JAX_COMPILATION_CACHE_DIR', raising=False)
  before = jax.config.jax_compilation_cache_dir
  assert compilation_cache.enable('') is None
  assert jax.config.jax_compilation_cache_dir == before


@pytest.mark.slow
def test_a_run_rewrites_an_entry_cut_short_as_the_disk_filled(tmp_path):
  """Whole runs: a cache entry cut short is removed at the next start with
  one line, JAX does not warn, the entry is written whole again, and the
  start after that says nothing."""
  _run_in_fresh_home(tmp_path, 'first')
  largest = max(
    _home_cache(tmp_path).glob('*-cache'), key=lambda p: p.stat().st_size
  )
  _cut(largest, largest.stat().st_size // 2)
  stderr = _run_in_fresh_home(tmp_path, 'second')
  assert 'Error reading persistent compilation cache' not in stderr
  assert stderr.count('could not be read') == 1, stderr[-2000:]
  assert compilation_cache.readable(largest.read_bytes())
  stderr = _run_in_fresh_home(tmp_path, 'third')
  assert 'could not be read' not in stderr
  assert 'persistent compilation cache' not in stderr
