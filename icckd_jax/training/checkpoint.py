"""Orbax checkpoints in a workdir: every N epochs, the last, the best, and
the one a preempted run saves mid-epoch.

Layout (runs/layout.py names the directories):
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

`Checkpoints` saves; what restores (`checkpoint_reader.CheckpointReader`)
it inherits. Saves are asynchronous: a save that fails in Orbax's
background threads (a full disk, a path the system refuses) surfaces at
the next save, at `commit` or at `close`, as one UserError naming the
checkpoint; a finished run calls `commit` before it writes its summary.
"""

import contextlib
import errno
import os
import shutil
import threading
import time

import jax
from jax.sharding import Mesh
import orbax.checkpoint as ocp

from icckd_jax import parallel
from icckd_jax.errors import UserError
from icckd_jax.runs import layout
from icckd_jax.training.checkpoint_reader import CheckpointReader

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


def disk_full(error: BaseException | None) -> bool:
  """Whether `error`, or an error it was raised from or during, is a full
  disk (Orbax and TensorStore wrap the OSError in their own types)."""
  seen = set()  # Orbax's chains of causes can loop.
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, SaveFailed):
      error = error.error
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
      return True
    if 'No space left on device' in str(error):
      return True
    error = error.__cause__ or error.__context__
  return False


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
  for kind in layout.CHECKPOINT_DIRS.values():
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


class Checkpoints(CheckpointReader):
  """The checkpoint managers of one workdir, reading and saving; a context
  manager that waits for pending saves and closes them on exit."""

  def __enter__(self) -> 'Checkpoints':
    return self

  def __exit__(self, exc_type, exc, tb) -> None:
    # With an error already on its way out, a failed pending save is a
    # consequence, not news: close quietly.
    self.close(quiet=exc_type is not None)

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
