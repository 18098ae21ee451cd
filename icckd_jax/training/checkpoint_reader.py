"""Reading a workdir's checkpoints: the newest intact one, a given epoch, the
input shape; a damaged one is moved aside, never deleted.

`CheckpointReader` opens the Orbax managers of each kind of checkpoint
(runs/layout.py names their directories) and restores from them; the
writer (`checkpoint.Checkpoints`) adds saving. Each checkpoint holds three
items: `state` (the TrainState), `meta` (epoch, step, best top-1, ...) and
`config` (the run's config as JSON).
"""

import logging as std_logging
import os
from typing import Any

from absl import logging
from etils import epath
import jax
from jax.sharding import Mesh
import orbax.checkpoint as ocp

from icckd_jax import parallel
from icckd_jax.errors import UserError
from icckd_jax.runs import compat
from icckd_jax.runs import layout
from icckd_jax.runs.train_state import TrainState


class _DropReadOnlyNotes(std_logging.Filter):
  """Drops Orbax's notes that a read-only manager is read-only: six lines
  each time a reader (an evaluation, a student's teacher, a worker
  polling a peer's run) opens a workdir, saying what the reader asked for."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    message = record.getMessage()
    return not (
      'directory is read only' in message or 'read_only=True' in message
    )


def _restore_items(manager: ocp.CheckpointManager, step: int, target):
  """The three items of checkpoint `step`, the state in `target`'s tree."""
  return manager.restore(
    step,
    args=ocp.args.Composite(
      state=ocp.args.StandardRestore(target),
      meta=ocp.args.JsonRestore(),
      config=ocp.args.JsonRestore(),
    ),
  )


def _saved_before_buffers(
  manager: ocp.CheckpointManager, step: int, abstract_state
) -> bool:
  """Whether checkpoint `step` holds a TrainState of the layout without
  `distiller_buffers`, and a TrainState is asked for."""
  if not isinstance(abstract_state, TrainState):
    return False
  try:
    saved = manager.item_metadata(step).state
  except Exception:  # pylint: disable=broad-except
    return False  # Unreadable: the first failure stands.
  return compat.written_before_buffers(saved)


def _restore_one(
  manager: ocp.CheckpointManager, step: int, abstract_state, mesh
):
  """(state, meta, config) of checkpoint `step`; without `abstract_state`,
  the state as saved, replicated on `mesh`."""
  if abstract_state is None:
    saved = manager.item_metadata(step).state
    abstract_state = jax.tree.map(
      lambda m: jax.ShapeDtypeStruct(
        m.shape, m.dtype, sharding=parallel.replicated(mesh)
      ),
      saved,
    )
  try:
    restored = _restore_items(manager, step, abstract_state)
  except Exception:  # pylint: disable=broad-except
    # A state saved before TrainState.distiller_buffers (the buffers then
    # under `cache`) has another tree: restored into that layout, then
    # mapped onto this one. Any other failure is the checkpoint's.
    if not _saved_before_buffers(manager, step, abstract_state):
      raise
    restored = _restore_items(
      manager, step, compat.legacy_target(abstract_state)
    )
    state = compat.from_legacy(abstract_state, restored.state)
    return state, restored.meta, restored.config
  return restored.state, restored.meta, restored.config


def _key_name(key) -> str:
  return str(
    getattr(key, 'key', getattr(key, 'name', getattr(key, 'idx', key)))
  )


def _shapes(tree) -> dict[tuple[str, ...], tuple[int, ...]]:
  """{path of names: shape} of every array leaf of `tree`."""
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {
    tuple(_key_name(k) for k in path): tuple(leaf.shape)
    for path, leaf in leaves
    if hasattr(leaf, 'shape')
  }


def _shape_mismatch(
  manager: ocp.CheckpointManager, step: int, abstract_state
) -> str | None:
  """'name: saved S, this run T' of the first array that checkpoint `step`
  (its metadata readable) holds in another shape than `abstract_state`
  asks for, else None. Such a checkpoint is intact: the run asking is
  another (other data, another class count), not the checkpoint damaged."""
  if abstract_state is None:
    return None
  try:
    saved = _shapes(manager.item_metadata(step).state)
  except Exception:  # pylint: disable=broad-except
    return None  # Unreadable: damaged after all.
  for path, shape in _shapes(abstract_state).items():
    if path in saved and saved[path] != shape:
      return (
        f'{"/".join(path)}: saved {list(saved[path])}, this run {list(shape)}'
      )
  return None


def _set_aside(
  workdir, manager: ocp.CheckpointManager, step: int, error, read_only: bool
) -> None:
  """Moves a checkpoint that failed to restore out of `manager`'s sight,
  into WORKDIR/damaged, never deleting it; read-only users (evaluation, a
  student reading its teacher) hold no lock on the workdir and only skip
  it."""
  source = os.path.join(str(manager.directory), str(step))
  reason = (
    f'{type(error).__name__}: {str(error).splitlines()[0][:200]}'
    if str(error)
    else type(error).__name__
  )
  if read_only or jax.process_index() != 0:
    logging.warning('Checkpoint %s is damaged (%s); skipped.', source, reason)
    return
  aside = os.path.join(str(workdir), layout.DAMAGED_DIR)
  os.makedirs(aside, exist_ok=True)
  target = os.path.join(
    aside, f'{os.path.basename(str(manager.directory))}-{step}'
  )
  n = 1
  while os.path.exists(target + (f'.{n}' if n > 1 else '')):
    n += 1
  target += f'.{n}' if n > 1 else ''
  os.rename(source, target)
  manager.reload()
  logging.warning(
    'Checkpoint %s is damaged (%s); moved it to %s.', source, reason, target
  )


class CheckpointReader:
  """The checkpoint managers of one workdir, one per kind ('last', 'best',
  'preempted'), and what restores from them."""

  def __init__(self, workdir: str, keep: int = 2, read_only: bool = False):
    # Orbax needs absolute paths; a relative --config.teacher.workdir is fine.
    self.workdir = epath.Path(os.path.abspath(workdir))

    def manager(which, max_to_keep):
      # Naming the handlers lets a reader ask for one item (the config) or
      # for the state's metadata without knowing the state's structure.
      return ocp.CheckpointManager(
        self.workdir / layout.CHECKPOINT_DIRS[which],
        options=ocp.CheckpointManagerOptions(
          max_to_keep=None if read_only else max_to_keep,
          create=not read_only,
          read_only=read_only,
        ),
        item_handlers={
          'state': ocp.StandardCheckpointHandler(),
          'meta': ocp.JsonCheckpointHandler(),
          'config': ocp.JsonCheckpointHandler(),
        },
      )

    self.read_only = read_only
    quiet = _DropReadOnlyNotes()
    orbax_logger = std_logging.getLogger('absl')  # Orbax logs through absl.
    orbax_logger.addFilter(quiet)
    try:
      self._last = manager('last', keep)
      self._best = manager('best', 1)
      self._preempted = manager('preempted', 1)
    finally:
      orbax_logger.removeFilter(quiet)

  def _manager(self, which: str) -> ocp.CheckpointManager:
    if which not in layout.CHECKPOINT_DIRS:
      raise UserError(
        f"checkpoint={which!r} is unknown; choose 'last' or 'best'"
      )
    return {
      'last': self._last,
      'best': self._best,
      'preempted': self._preempted,
    }[which]

  def latest_epoch(self, which: str = 'last') -> int | None:
    return self._manager(which).latest_step()

  def latest_steps(self, which: str) -> list[int]:
    return sorted(self._manager(which).all_steps())

  def restore_newest_intact(
    self,
    abstract_state=None,
    which: str = 'last',
    mesh: Mesh | None = None,
  ) -> tuple[Any, dict, dict] | None:
    """(state, meta, config) of the newest checkpoint of `which` that
    restores, or None when `which` has no checkpoint at all.

    A checkpoint that fails to restore (a truncated or missing file) is
    moved to WORKDIR/damaged/ (skipped when read-only) with a one-line
    warning, and the next older one is tried; when none restores, a
    UserError. `abstract_state` and `mesh` as in `restore`.
    """
    manager = self._manager(which)
    steps = sorted(manager.all_steps(), reverse=True)
    if not steps:
      return None
    for step in steps:
      try:
        return _restore_one(manager, step, abstract_state, mesh)
      except Exception as e:  # pylint: disable=broad-except
        # Orbax and TensorStore raise many types for a damaged file; any of
        # them means this checkpoint cannot be used, not that the run fails
        # -- unless it holds arrays of other shapes: then the run is another.
        mismatch = _shape_mismatch(manager, step, abstract_state)
        if mismatch is not None:
          raise UserError(
            f'checkpoint {manager.directory}/{step} is intact but holds '
            f'another run ({mismatch}); resume it with the data set and '
            'model it was trained with, or choose another --workdir'
          ) from None
        _set_aside(self.workdir, manager, step, e, self.read_only)
    where = (
      'skipped, see the warnings above'
      if self.read_only
      else f'moved to {os.path.join(str(self.workdir), layout.DAMAGED_DIR)}; '
      'rerunning starts from scratch'
    )
    raise UserError(
      f'no intact {which} checkpoint in {manager.directory}: '
      f'all {len(steps)} failed to restore ({where})'
    )

  def input_shape(self, which: str = 'last') -> list[int] | None:
    """[H, W, C] of the images the newest `which` checkpoint was trained on,
    where its meta records it (checkpoints from before it did: None)."""
    manager = self._manager(which)
    for step in sorted(manager.all_steps(), reverse=True):
      try:
        return manager.restore(
          step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())
        ).meta.get('input_shape')
      except Exception:  # pylint: disable=broad-except
        continue  # Damaged: restore_newest_intact has said so.
    return None

  def restore(
    self,
    abstract_state=None,
    which: str = 'last',
    epoch: int | None = None,
    mesh: Mesh | None = None,
  ) -> tuple[Any, dict]:
    """(state, meta) of `epoch` (default: the latest) of `which`.

    With `abstract_state` (a tree of jax.ShapeDtypeStruct with shardings) the
    state comes back in that structure. Without it, pass `mesh`: the state
    comes back as nested dicts, shaped as saved, replicated on `mesh`, which
    is all a reader such as evaluation needs.
    """
    manager = self._manager(which)
    epoch = manager.latest_step() if epoch is None else epoch
    if epoch is None:
      raise UserError(
        f'no {which} checkpoint in {manager.directory}; train '
        'first with configs/teacher.py and the same workdir'
      )
    state, meta, _ = _restore_one(manager, epoch, abstract_state, mesh)
    return state, meta
