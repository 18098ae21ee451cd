"""JAX's persistent compilation cache, on by default for every run.

Each start of a run, a resume, a worker's or a pipeline's stage would
otherwise compile its train and eval steps from scratch (10-40 s each on a
GPU). The cache keeps the compiled executables on disk, keyed by the program,
its shapes and the JAX, XLA and device versions, so a cached executable is
the same program and results stay bit for bit.

`$JAX_COMPILATION_CACHE_DIR`, JAX's own setting, wins where it is set (the
tests' private cache is set that way).
"""

import os

from absl import logging
import jax

DEFAULT_DIR = '~/.cache/icckd_jax/xla'
# JAX keeps only executables that took at least 1 s to compile by default;
# the CPU's small eval steps take less, and every step is worth keeping.
MIN_COMPILE_SECONDS = 0.0


def enable(directory: str | None) -> str | None:
  """Turns the persistent cache on in `directory` ('~' expanded); '' or
  None leaves it off. Returns the directory in use, or None."""
  from_environment = os.environ.get('JAX_COMPILATION_CACHE_DIR')
  if from_environment:
    return from_environment
  if not directory:
    return None
  path = os.path.abspath(os.path.expanduser(directory))
  jax.config.update('jax_compilation_cache_dir', path)
  jax.config.update(
    'jax_persistent_cache_min_compile_time_secs', MIN_COMPILE_SECONDS
  )
  logging.info('Compilation cache: %s', path)
  return path
