"""Checks that run before a run writes anything, and the workdir's claim.

A config, a stored run, a mesh or a step that cannot work is refused here
with one line (UserError), before the workdir is created or written.
"""

import contextlib
import os

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec
import ml_collections

from icckd_jax import parallel
from icckd_jax.input_pipeline.source import Batch, InputSource
from icckd_jax.errors import UserError
from icckd_jax.training import checkpoint
from icckd_jax.runs import memory as memory_lib
from icckd_jax.runs import spec
from icckd_jax.runs import workdir_lock
from icckd_jax.runs.run_setup import RunSetup
from icckd_jax.runs.spec import Recipe, RunSpec


def require_workdir(workdir: str | None) -> str:
  if not workdir:
    raise UserError('no workdir: pass --workdir=DIR (or --config.workdir=DIR)')
  return workdir


def _path_limits(path: str) -> tuple[int, int]:
  """(longest path, longest file name) in bytes the file system holding
  `path` (or its nearest existing parent) accepts."""
  existing = path
  while not os.path.exists(existing):
    existing = os.path.dirname(existing)
  try:
    return (
      os.pathconf(existing, 'PC_PATH_MAX'),
      os.pathconf(existing, 'PC_NAME_MAX'),
    )
  except (OSError, ValueError):  # No such limit known: POSIX's usual ones.
    return 4096, 255


def check_path_lengths(workdir: str) -> None:
  """Refuses a workdir whose checkpoints' own paths would be longer than the
  system allows: the write probe passes there, yet every save would fail in
  Orbax's background threads. `checkpoint.PATH_RESERVE` bytes are left for
  the longest path a checkpoint writes below the workdir."""
  path = os.path.abspath(workdir)
  path_max, name_max = _path_limits(path)
  for name in path.split(os.sep):
    if len(os.fsencode(name)) > name_max:
      raise UserError(
        f'workdir {workdir}: the name {name[:40]!r}... is '
        f'{len(os.fsencode(name))} bytes, over the {name_max} bytes this '
        'file system allows for one name; choose a shorter --workdir'
      )
  need = len(os.fsencode(path)) + checkpoint.PATH_RESERVE
  if need >= path_max:
    raise UserError(
      f'workdir {path[:60]}... is {len(os.fsencode(path))} bytes long; its '
      f'checkpoints need up to {checkpoint.PATH_RESERVE} bytes more, over '
      f'the {path_max} bytes this system allows for a path; choose a '
      'shorter --workdir'
    )


def prepare_workdir(workdir: str | None) -> str:
  """Creates the workdir and proves it writable (with room for its
  checkpoints' paths), or a one-line UserError; on several processes, once
  every process has passed its checks (`parallel.agree_to_write`)."""
  require_workdir(workdir)
  check_path_lengths(workdir)
  parallel.agree_to_write()
  probe = os.path.join(workdir, f'.write_test.{os.getpid()}')
  try:
    os.makedirs(workdir, exist_ok=True)
    with open(probe, 'w') as f:
      f.write('ok')
    os.remove(probe)
  except OSError as e:
    # A full disk may fail the write after the file was created.
    with contextlib.suppress(OSError):
      os.remove(probe)
    raise UserError(
      f'workdir {workdir} is not writable: {e.strerror}'
    ) from None
  return os.path.abspath(workdir)


def checked_mesh(run: RunSpec):
  """The run's mesh, on which both its batch sizes must split evenly
  (checked, with the config, by `spec.checked`, before any data loads)."""
  mesh = parallel.make_mesh(run.bookkeeping.num_devices)
  parallel.check_batch_size(run.recipe.batch_size, mesh, 'config.batch_size')
  parallel.check_batch_size(
    run.bookkeeping.eval_batch_size, mesh, 'config.eval_batch_size'
  )
  return mesh


def checked_run(
  config: ml_collections.ConfigDict, workdir: str | None
) -> tuple[RunSpec, Mesh]:
  """(the config's typed parts, the run's mesh): a stage's first checks,
  the workdir named, the config (`spec.checked`) and the mesh, before any
  data loads or anything is written."""
  require_workdir(workdir)
  run = spec.checked(config, workdir)
  return run, checked_mesh(run)


def check_step_memory(
  recipe: Recipe,
  setup: RunSetup,
  dataset: InputSource,
  mesh: Mesh,
) -> dict[str, int]:
  """Compiles the train step ahead, from abstract inputs, and refuses one
  that needs more memory than the devices have, before anything is written.

  The compilation is the one the first step reuses (same program, same
  shardings); returns its memory analysis (`memory.compiled_memory`), which
  the run then logs.
  """
  state = checkpoint.abstract_like(jax.eval_shape(setup.init_state), mesh)
  images = jax.ShapeDtypeStruct(
    (setup.num_views, recipe.batch_size, *dataset.image_shape),
    jnp.uint8,
    sharding=NamedSharding(mesh, PartitionSpec(None, parallel.DATA)),
  )
  labels = jax.ShapeDtypeStruct(
    (recipe.batch_size,), jnp.int32, sharding=parallel.batch_sharded(mesh)
  )
  # Example indices: [B] int32, sharded as the labels.
  batch = Batch(images, labels, labels if setup.with_indices else None)
  memory = memory_lib.compiled_memory(
    setup.train_step.lower(state, batch, setup.step_args).compile()
  )
  need = memory.get('total_bytes')
  # This process's devices: another process's cannot be asked for memory.
  devices = [
    d for d in mesh.devices.flat if d.process_index == jax.process_index()
  ]
  available = memory_lib.available_memory(devices[0])
  if not need or not available:
    return memory
  if devices[0].platform == 'cpu':  # Emulated devices share the host's RAM.
    need *= len(devices)
  if need > available:
    raise UserError(
      f'the train step needs {need / 2**30:.1f} GiB ({recipe.model}, batch '
      f'{recipe.batch_size} of {dataset.image_shape} '
      f'images) but {devices[0].platform} has {available / 2**30:.1f} GiB '
      'available; lower config.batch_size or the image size, or use '
      'more devices'
    )
  return memory


@contextlib.contextmanager
def hold_workdir(workdir: str, claim: workdir_lock.WorkdirLock | None = None):
  """One run per workdir: process 0 holds WORKDIR's lock (the other
  processes of a multi-host run share it) while the body runs.

  `claim`: the lock already taken by the caller (a worker claims a stage
  before building it), which keeps it and releases it; None: taken here.
  """
  if claim is not None:
    if not claim.held or os.path.abspath(claim.workdir) != workdir:
      raise ValueError(f'{claim.path} is not held for {workdir}')
    yield
    return
  if jax.process_index() != 0:
    yield
    return
  with workdir_lock.WorkdirLock(workdir):
    yield
