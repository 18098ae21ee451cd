"""Memory figures of a run: XLA's analysis of a compiled step, and what a
device holds (docs/method.md §6, "memory").

The device figures come from the allocator's statistics (GPU, TPU); CPU keeps
none, so they are None there and only the compiled figures exist.
"""

import os

import jax


def compiled_memory(compiled: jax.stages.Compiled) -> dict[str, int]:
  """XLA's memory analysis of a compiled program, in bytes.

  `compiled` is a `jax.stages.Compiled`, e.g. `jax.jit(f).lower(*args)
  .compile()`. The figures are those of one device (for a sharded program,
  the bytes of one shard):

    argument_bytes: input buffers.
    output_bytes: output buffers.
    temp_bytes: temporaries XLA allocates while running.
    alias_bytes: outputs that reuse an input's buffer (donated arguments);
      they are counted in both arguments and outputs.
    generated_code_bytes: the compiled code itself (0 on CPU).
    total_bytes: argument + output + temp - alias, the memory the program
      needs at once at most, each aliased buffer counted once.
    peak_bytes: XLA's own peak from buffer liveness (<= total_bytes, as
      temporaries and outputs need not all be live together), when reported.

  Args:
    compiled: a compiled JAX program.

  Returns:
    The figures above; an empty dict where the backend reports no analysis.
  """
  stats = compiled.memory_analysis()
  if stats is None:
    return {}
  out = {
    'argument_bytes': int(stats.argument_size_in_bytes),
    'output_bytes': int(stats.output_size_in_bytes),
    'temp_bytes': int(stats.temp_size_in_bytes),
    'alias_bytes': int(stats.alias_size_in_bytes),
    'generated_code_bytes': int(stats.generated_code_size_in_bytes),
  }
  out['total_bytes'] = (
    out['argument_bytes']
    + out['output_bytes']
    + out['temp_bytes']
    - out['alias_bytes']
  )
  # Not every jaxlib exposes the liveness peak; omit it rather than guess.
  peak = getattr(stats, 'peak_memory_in_bytes', None)
  if peak is not None:
    out['peak_bytes'] = int(peak)
  return out


def _device_stat(device: jax.Device | None, key: str) -> int | None:
  """`device.memory_stats()[key]` (the first local device by default), or
  None where the backend keeps no such statistic."""
  stats = (device or jax.local_devices()[0]).memory_stats()
  if not stats or key not in stats:
    return None
  return int(stats[key])


def peak_device_memory(device: jax.Device | None = None) -> int | None:
  """Peak bytes in use on `device` since the process started, or None (CPU).

  A running maximum over the whole process: in a process of many runs it
  includes every run that process trained before, so runs report `device_bytes_in_use`
  sampled instead; benchmarks, one variant per process, use this.
  """
  return _device_stat(device, 'peak_bytes_in_use')


def device_bytes_in_use(device: jax.Device | None = None) -> int | None:
  """Bytes in use on `device` now, or None (CPU). A run's device memory is
  the maximum of this over the points it samples (every logged window)."""
  return _device_stat(device, 'bytes_in_use')


def available_memory(device: jax.Device | None = None) -> int | None:
  """Bytes a new program can still use on `device`: the allocator's limit
  less what it holds (GPU, TPU), or the host's available memory (CPU).
  None where neither is known."""
  limit = _device_stat(device, 'bytes_limit')
  if limit is not None:
    return limit - (_device_stat(device, 'bytes_in_use') or 0)
  try:
    return os.sysconf('SC_AVPHYS_PAGES') * os.sysconf('SC_PAGE_SIZE')
  except (ValueError, OSError, AttributeError):
    return None
