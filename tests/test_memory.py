"""The memory figures: XLA's analysis of compiled programs with known
buffer sizes, and the device statistics on a backend that keeps them."""

import jax
import jax.numpy as jnp

from icckd_jax.runs import memory as am


class _Stub:
  """An object whose one method returns a fixed value."""

  def __init__(self, name, value):
    setattr(self, name, lambda: value)


def test_compiled_memory_of_a_matmul():
  a = jnp.ones((64, 32), jnp.float32)
  b = jnp.ones((32, 16), jnp.float32)
  mem = am.compiled_memory(jax.jit(jnp.matmul).lower(a, b).compile())
  assert mem['argument_bytes'] == a.nbytes + b.nbytes
  assert mem['output_bytes'] == 64 * 16 * 4
  assert mem['alias_bytes'] == 0
  assert mem['total_bytes'] == (
    mem['argument_bytes'] + mem['output_bytes'] + mem['temp_bytes']
  )


def test_compiled_memory_counts_a_donated_buffer_once():
  x = jnp.ones((64, 32), jnp.float32)
  plain = am.compiled_memory(jax.jit(lambda v: v * 2 + 1).lower(x).compile())
  donated = am.compiled_memory(
    jax.jit(lambda v: v * 2 + 1, donate_argnums=0).lower(x).compile()
  )
  assert plain['alias_bytes'] == 0
  assert donated['alias_bytes'] == x.nbytes
  assert donated['total_bytes'] == plain['total_bytes'] - x.nbytes


def test_compiled_memory_without_analysis_is_empty():
  assert am.compiled_memory(_Stub('memory_analysis', None)) == {}


def test_peak_device_memory():
  peak = am.peak_device_memory()
  if jax.default_backend() == 'cpu':
    assert peak is None
  else:
    assert isinstance(peak, int)
  assert am.peak_device_memory(_Stub('memory_stats', None)) is None
  no_peak = _Stub('memory_stats', {'bytes_in_use': 1})
  assert am.peak_device_memory(no_peak) is None
  gpu_like = _Stub('memory_stats', {'peak_bytes_in_use': 1234})
  assert am.peak_device_memory(gpu_like) == 1234


def test_device_figures_read_the_allocator_statistics():
  gpu_like = _Stub('memory_stats', {'bytes_in_use': 100, 'bytes_limit': 1000})
  assert am.device_bytes_in_use(gpu_like) == 100
  assert am.available_memory(gpu_like) == 900
  # CPU keeps no statistics: nothing in use is known, the host's free RAM is.
  cpu_like = _Stub('memory_stats', None)
  assert am.device_bytes_in_use(cpu_like) is None
  assert am.available_memory(cpu_like) > 0
