"""The device mesh and the data-parallel helpers (docs/method.md §9).

One 1-D mesh axis, `data`, spans every device of every process. A train step
is a per-device program written with `jax.shard_map` under `jax.jit`: pmap's
model (per-device batch shard, `pmean`-ed gradients, BatchNorm statistics
synchronised over the axis) without pmap. The same code serves one GPU, many
GPUs and many hosts.
"""

from collections.abc import Sequence

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import numpy as np

from icckd_jax.errors import UserError

DATA = 'data'


def make_mesh(num_devices: int | None = None) -> Mesh:
  """A 1-D mesh named `data` over the first `num_devices` devices (all if 0
  or None, as `config.num_devices` says).

  Restricting the count is for tests and benchmarks that compare device
  counts in one process; on several hosts only the full count is valid.
  """
  devices = jax.devices()
  if num_devices:
    if num_devices > len(devices):
      raise UserError(
        f'config.num_devices={num_devices} but only '
        f'{len(devices)} devices are visible'
      )
    if jax.process_count() > 1 and num_devices != len(devices):
      raise UserError('config.num_devices must be unset on several hosts')
    devices = devices[:num_devices]
  return Mesh(np.asarray(devices), (DATA,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  """Leading axis split over `data`: the global batch layout."""
  return NamedSharding(mesh, P(DATA))


def check_batch_size(batch_size: int, mesh: Mesh, field: str) -> int:
  """Returns the per-device batch; a user error unless it divides evenly."""
  n = mesh.devices.size
  if batch_size <= 0 or batch_size % n:
    raise UserError(
      f'{field}={batch_size} is not divisible by the {n} devices of the mesh'
    )
  return batch_size // n


def _put(tree, sharding: NamedSharding):
  """Places host arrays, identical on every process, with `sharding`.

  Each process contributes only the slices its own devices hold, which is
  how several hosts build one global array.
  """
  return jax.tree.map(
    lambda x: jax.make_array_from_callback(
      np.shape(x), sharding, lambda idx: np.asarray(x)[idx]
    ),
    tree,
  )


def put_replicated(tree, mesh: Mesh):
  """Places host arrays on every device of the mesh (works on several hosts)."""
  return _put(tree, replicated(mesh))


def put_global_batch(tree, mesh: Mesh):
  """Places a host batch sharded over `data` on its leading axis."""
  return _put(tree, batch_sharded(mesh))


def shard_map(fn, mesh: Mesh, in_specs: Sequence, out_specs):
  """`jax.shard_map` with pmap's semantics: nothing is summed implicitly.

  check_vma=False keeps collectives explicit (the step `pmean`s its own
  gradients) as pmap did.
  """
  return jax.shard_map(
    fn, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False
  )
