"""The device mesh and the data-parallel helpers (docs/method.md §9).

One 1-D mesh axis, `data`, spans every device of every process. A train step
is a per-device program written with `jax.shard_map` under `jax.jit`: pmap's
model (per-device batch shard, `pmean`-ed gradients, BatchNorm statistics
synchronised over the axis) without pmap. The same code serves one GPU, many
GPUs and many hosts.
"""

from collections.abc import Mapping, Sequence
import itertools
import threading
import time

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


# What `srun` sets in each process of a job step, and from which
# jax.distributed.initialize() without arguments builds the cluster
# (jax._src.clusters.slurm_cluster): the first node of the step hosts the
# coordinator, on a port derived from the job id.
SLURM_STEP_VARIABLES = (
  'SLURM_JOB_ID',
  'SLURM_STEP_NODELIST',
  'SLURM_NTASKS',
  'SLURM_PROCID',
  'SLURM_LOCALID',
)


def slurm_process(environ: Mapping[str, str]) -> tuple[int, int] | None:
  """(processes, this process's index) of the SLURM job step `environ`
  describes (a process `srun` started), or None where it describes none:
  what jax.distributed.initialize() will read, for the log and errors.

  Raises UserError where the variables are there but not numbers (a step
  environment edited by hand)."""
  if not all(name in environ for name in SLURM_STEP_VARIABLES):
    return None
  try:
    processes = int(environ['SLURM_NTASKS'])
    index = int(environ['SLURM_PROCID'])
  except ValueError:
    raise UserError(
      f'--multihost under SLURM: SLURM_NTASKS={environ["SLURM_NTASKS"]!r} '
      f'and SLURM_PROCID={environ["SLURM_PROCID"]!r} must be integers; run '
      'the processes with srun'
    ) from None
  return processes, index


# Several processes tell each other why they stop through the coordination
# service's key-value store (jax.distributed's), which outlives a collective
# that a dead peer broke; these are its keys.
_FAILED = 'icckd_jax/failed/'
_READY = 'icckd_jax/ready/'
_LOST = 'icckd_jax/lost/'
_ALIVE = 'icckd_jax/alive/'
_DONE = 'done'
_POLL_SECONDS = 0.05
# The agreements so far: each one's keys apart (a pipeline agrees before
# each stage); every process counts the same since every process agrees
# as often.
_ROUNDS = itertools.count()


class PeerFailed(UserError):
  """Another process refused the run; this one stops with its reason."""


def _client():
  """jax.distributed's client (None in one process): the store is not
  public API, so it is reached in this one place."""
  from jax._src import distributed  # pylint: disable=import-outside-toplevel

  return distributed.global_state.client


def _entries(client, prefix: str) -> dict[int, str]:
  """{process index: value} of the keys under `prefix`."""
  return {
    int(k.rsplit('/', 1)[1]): v for k, v in client.key_value_dir_get(prefix)
  }


def agree_to_write() -> None:
  """Waits until every process has passed the checks before a run writes,
  or raises PeerFailed with the reason of a process that refused the run
  (`announce_failure`): without it, the others would create the workdir
  and then wait in the first collective for a process that has left.
  """
  client = _client()
  if jax.process_count() == 1 or client is None:
    return
  me = jax.process_index()
  ready = f'{_READY}{next(_ROUNDS)}/'
  client.key_value_set(f'{ready}{me}', '')
  while True:
    failed = _entries(client, _FAILED)
    if failed:
      peer, reason = min(failed.items())
      raise PeerFailed(f'process {peer} refused the run: {reason}')
    if len(_entries(client, ready)) == jax.process_count():
      return
    time.sleep(_POLL_SECONDS)


def _bounded(fn, seconds: float, default):
  """fn(), or `default` if it raises or takes longer than `seconds` (the
  store's calls wait for a coordinator that may be gone)."""
  result = [default]

  def call():
    try:
      result[0] = fn()
    except Exception:  # pylint: disable=broad-except
      pass

  thread = threading.Thread(target=call, daemon=True)
  thread.start()
  thread.join(seconds)
  return result[0]


def announce_failure(message: str, wait_seconds: float) -> None:
  """Tells the other processes why this one stops (they read it in
  `agree_to_write`), and waits up to `wait_seconds` until each has said so
  and is done (`mark_done`) or failed too: process 0 holds the store, and
  its exit aborts the others natively before they could say it."""
  client = _client()
  if jax.process_count() == 1 or client is None:
    return
  me = jax.process_index()
  if not _bounded(
    lambda: client.key_value_set(f'{_FAILED}{me}', message) or True, 5, False
  ):
    return
  deadline = time.monotonic() + wait_seconds
  while time.monotonic() < deadline:
    done = _bounded(
      lambda: {
        **{p: v for p, v in _entries(client, _ALIVE).items() if v == _DONE},
        **_entries(client, _FAILED),
      },
      5,
      None,
    )
    if done is None or len(done) == jax.process_count():
      return
    time.sleep(_POLL_SECONDS)


def lost_peers(wait_seconds: float = 5.0) -> list[int]:
  """After a collective failed: the processes that did not answer within
  `wait_seconds` (each survivor answers in the store), [] if all did; [0]
  if the store, which process 0 holds, cannot be reached."""
  client = _client()
  if jax.process_count() == 1 or client is None:
    return []
  me = jax.process_index()
  if not _bounded(
    lambda: client.key_value_set(f'{_LOST}{me}', '') or True,
    wait_seconds,
    False,
  ):
    return [0]
  deadline = time.monotonic() + wait_seconds
  while True:
    answered = _bounded(lambda: _entries(client, _LOST), wait_seconds, None)
    if answered is None:
      return [0]
    lost = sorted(set(range(jax.process_count())) - set(answered))
    if not lost or time.monotonic() > deadline:
      return lost
    time.sleep(_POLL_SECONDS)


def mark_done() -> None:
  """Says this process is done (call it at exit): a process that refused a
  run waits for it in `announce_failure`."""
  client = _client()
  if jax.process_count() > 1 and client is not None:
    me = jax.process_index()
    _bounded(
      lambda: client.key_value_set(f'{_ALIVE}{me}', _DONE, True), 5, None
    )
