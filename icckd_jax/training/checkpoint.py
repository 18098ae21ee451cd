"""Orbax checkpoints in a workdir: every N epochs, the last, the best, and
the one a preempted run saves mid-epoch.

Layout:
  WORKDIR/checkpoints/<epoch>/  the rolling checkpoints a run resumes from
  WORKDIR/best/<epoch>/         the single best one by test top-1
  WORKDIR/preempted/<step>/     saved at a step boundary on SIGTERM/SIGINT;
                                superseded (deleted) by the next epoch's
  WORKDIR/damaged/              checkpoints that failed to restore, moved
                                aside (never deleted) for a person to inspect

Each holds three items: `state` (the TrainState), `meta` (epoch, step, best
top-1, ...: nothing that grows with the run) and `config` (the run's config
as JSON).
Orbax writes into a temporary directory and renames it when complete, so a
run killed mid-save leaves the previous checkpoint as the latest: resume is
preemption-safe. Callers save only states they have checked to be finite
(`training.divergence`, in the loop), so the retention policy never removes a good
checkpoint to make room for a bad one.

Saves are asynchronous: a save that fails in Orbax's background threads (a
full disk, a path the system refuses) surfaces at the next save, at
`commit` or at `close`, as one UserError naming the checkpoint; a finished
run calls `commit` before it writes its summary.
"""

import contextlib
import logging as std_logging
import os
import shutil
import threading
import time
from typing import Any

from absl import logging
from etils import epath
import jax
from jax.sharding import Mesh
import orbax.checkpoint as ocp

from icckd_jax import parallel
from icckd_jax.errors import UserError
from icckd_jax.runs.train_state import (
  TrainState,
  from_legacy,
  legacy_target,
  written_before_buffers,
)

DAMAGED_DIR = 'damaged'
# Orbax writes a checkpoint under this suffix and renames it when complete.
PARTIAL_SUFFIX = '.orbax-checkpoint-tmp'
# Bytes below a workdir for the longest path a save writes, with room:
# 'preempted/<step>.orbax-checkpoint-tmp/state.orbax-checkpoint-tmp/
# ocdbt.process_<n>/d/<32 hex digits>' is about 120.
PATH_RESERVE = 200


class SaveFailed(UserError):
  """An asynchronous save failed; every checkpoint committed before is
  intact. `error` is what Orbax raised (a full disk is recognised from it)."""

  def __init__(self, message: str, error: BaseException):
    super().__init__(message)
    self.error = error


def _save_failed(directory, error: BaseException) -> SaveFailed:
  """The one-line error of a failed save into `directory`."""
  reason = (
    str(error).strip().splitlines()[0][:300] if str(error).strip() else ''
  )
  return SaveFailed(
    f'saving a checkpoint in {directory} failed '
    f'({type(error).__name__}: {reason}); every checkpoint committed '
    'before is intact: fix the cause and rerun the same command to resume',
    error,
  )


def join_background_writes(seconds: float = 10.0) -> bool:
  """Waits up to `seconds` for Orbax's own threads (the writes of a save
  that has failed may run on after the failure is reported); whether
  they all ended."""
  deadline = time.monotonic() + seconds
  for thread in threading.enumerate():
    if thread is threading.current_thread():
      continue
    if type(thread).__module__.startswith('orbax.'):
      thread.join(max(0.0, deadline - time.monotonic()))
      if thread.is_alive():
        return False
  return True


def remove_partial_saves(workdir: str) -> list[str]:
  """Deletes the half-written checkpoints a failed save left in WORKDIR
  (never a complete one: those carry no temporary suffix); returns them."""
  removed = []
  for kind in ('checkpoints', 'best', 'preempted'):
    directory = os.path.join(workdir, kind)
    if not os.path.isdir(directory):
      continue
    for name in os.listdir(directory):
      if PARTIAL_SUFFIX in name:
        shutil.rmtree(os.path.join(directory, name), ignore_errors=True)
        removed.append(os.path.join(directory, name))
  return removed


def abstract_like(tree, mesh: Mesh):
  """Shape/dtype/sharding of `tree`, replicated on `mesh`: a restore target.

  Restoring against the current mesh is what lets a checkpoint saved on 4
  devices be evaluated on 1.
  """
  sharding = parallel.replicated(mesh)
  return jax.tree.map(
    lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree
  )


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
  return written_before_buffers(saved)


class Checkpoints:
  """The rolling and best checkpoint managers of one workdir; a context
  manager that waits for pending saves and closes them on exit."""

  def __init__(self, workdir: str, keep: int = 2, read_only: bool = False):
    # Orbax needs absolute paths; a relative --config.teacher.workdir is fine.
    self.workdir = epath.Path(os.path.abspath(workdir))

    def manager(name, max_to_keep):
      # Naming the handlers lets a reader ask for one item (the config) or
      # for the state's metadata without knowing the state's structure.
      return ocp.CheckpointManager(
        self.workdir / name,
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
      self._last = manager('checkpoints', keep)
      self._best = manager('best', 1)
      self._preempted = manager('preempted', 1)
    finally:
      orbax_logger.removeFilter(quiet)

  def __enter__(self) -> 'Checkpoints':
    return self

  def __exit__(self, exc_type, exc, tb) -> None:
    # With an error already on its way out, a failed pending save is a
    # consequence, not news: close quietly.
    self.close(quiet=exc_type is not None)

  def _manager(self, which: str) -> ocp.CheckpointManager:
    if which not in ('last', 'best', 'preempted'):
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

  def save(
    self, epoch: int, state, meta: dict, config: dict, *, last: bool, best: bool
  ) -> None:
    """Saves into the rolling and/or the best manager.

    An epoch a manager already holds is skipped: after a resume, the epochs
    between the restored checkpoint and the kill are recomputed bit for bit,
    so the copy on disk is already the right one.
    """
    args = ocp.args.Composite(
      state=ocp.args.StandardSave(state),
      meta=ocp.args.JsonSave(meta),
      config=ocp.args.JsonSave(config),
    )
    for wanted, manager in ((last, self._last), (best, self._best)):
      if wanted and epoch not in manager.all_steps():
        if jax.process_count() > 1:
          # Orbax's cross-process commit barrier is named by the step alone:
          # two managers committing the same step at once would collide.
          self._wait(self._last)
        # Orbax first waits for this manager's previous save, and raises
        # what failed in it.
        with self._surfacing(manager):
          manager.save(epoch, args=args)
    if last and self._preempted.all_steps():
      # The new epoch checkpoint is at or past the preempted step, which
      # can never be the newest again; it goes once the new one is on disk.
      self.commit(epoch)
      for step in self._preempted.all_steps():
        self._preempted.delete(step)

  def save_preempted(self, step: int, state, meta: dict, config: dict) -> None:
    """Saves the state of a run stopped at global `step` mid-epoch, and
    waits until it is on disk (the process is about to exit)."""
    with self._surfacing(self._preempted):
      self._preempted.save(
        step,
        args=ocp.args.Composite(
          state=ocp.args.StandardSave(state),
          meta=ocp.args.JsonSave(meta),
          config=ocp.args.JsonSave(config),
        ),
        force=True,
      )
    self._wait(self._preempted)
    if step not in self._preempted.all_steps():
      raise _save_failed(
        self._preempted.directory, RuntimeError(f'step {step} is not on disk')
      )

  @contextlib.contextmanager
  def _surfacing(self, manager: ocp.CheckpointManager):
    """Turns what a save into `manager` raises (its own failure or that of
    the previous, asynchronous one) into one SaveFailed."""
    try:
      yield
    except SaveFailed:
      raise
    except Exception as e:  # pylint: disable=broad-except
      # Orbax and TensorStore raise many types for one failed write.
      raise _save_failed(manager.directory, e) from None

  def _wait(self, manager: ocp.CheckpointManager) -> None:
    """Waits for `manager`'s pending save; its failure as a SaveFailed."""
    with self._surfacing(manager):
      manager.wait_until_finished()

  def commit(self, epoch: int | None = None) -> None:
    """Waits until every pending save is on disk; raises SaveFailed when one
    failed or when `epoch` is not among the committed rolling checkpoints
    (a finished run calls this before writing its summary)."""
    for manager in (self._last, self._best, self._preempted):
      self._wait(manager)
    if epoch is not None and epoch not in self._last.all_steps():
      raise _save_failed(
        self._last.directory,
        RuntimeError(f'epoch {epoch} was not committed'),
      )

  def _restore_one(self, manager, step, abstract_state, mesh):
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
      restored = _restore_items(manager, step, legacy_target(abstract_state))
      state = from_legacy(abstract_state, restored.state)
      return state, restored.meta, restored.config
    return restored.state, restored.meta, restored.config

  def _set_aside(self, which: str, step: int, error: Exception) -> None:
    """Moves a checkpoint that failed to restore out of its manager's sight,
    never deleting it; read-only users (evaluation, a student reading its
    teacher) hold no lock on the workdir and only skip it."""
    manager = self._manager(which)
    source = os.path.join(str(manager.directory), str(step))
    reason = (
      f'{type(error).__name__}: {str(error).splitlines()[0][:200]}'
      if str(error)
      else type(error).__name__
    )
    if self.read_only or jax.process_index() != 0:
      logging.warning('Checkpoint %s is damaged (%s); skipped.', source, reason)
      return
    aside = os.path.join(str(self.workdir), DAMAGED_DIR)
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
        return self._restore_one(manager, step, abstract_state, mesh)
      except Exception as e:  # pylint: disable=broad-except
        # Orbax and TensorStore raise many types for a damaged file; any of
        # them means this checkpoint cannot be used, not that the run fails.
        self._set_aside(which, step, e)
    where = (
      'skipped, see the warnings above'
      if self.read_only
      else f'moved to {os.path.join(str(self.workdir), DAMAGED_DIR)}; '
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

  def latest_steps(self, which: str) -> list[int]:
    return sorted(self._manager(which).all_steps())

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
    state, meta, _ = self._restore_one(manager, epoch, abstract_state, mesh)
    return state, meta

  def close(self, quiet: bool = False) -> None:
    """Waits for the pending saves and closes every manager, also after one
    failed (an unclosed manager keeps its threads, and the process, alive);
    then raises the first failure as a SaveFailed unless `quiet`."""
    failure = None
    for manager in (self._last, self._best, self._preempted):
      for finish in (manager.wait_until_finished, manager.close):
        try:
          finish()
        except Exception as e:  # pylint: disable=broad-except
          failure = failure or _save_failed(manager.directory, e)
    if failure is not None or quiet:
      # The other writes of a failed save may still be running.
      join_background_writes()
    if failure is not None and not quiet:
      raise failure
