"""Orbax checkpoints in a workdir: every N epochs, the last, and the best.

Layout:
  WORKDIR/checkpoints/<epoch>/  the rolling checkpoints a run resumes from
  WORKDIR/best/<epoch>/         the single best one by test top-1

Each holds three items: `state` (the TrainState), `meta` (epoch, best top-1,
...) and `config` (the run's config as JSON). Orbax writes into a temporary
directory and renames it when complete, so a run killed mid-save leaves the
previous checkpoint as the latest: resume is preemption-safe.
"""

from typing import Any

from etils import epath
import jax
from jax.sharding import Mesh
import orbax.checkpoint as ocp

from icckd_jax.training import parallel
from icckd_jax.errors import UserError


def abstract_like(tree, mesh: Mesh):
  """Shape/dtype/sharding of `tree`, replicated on `mesh`: a restore target.

  Restoring against the current mesh is what lets a checkpoint saved on 4
  devices be evaluated on 1.
  """
  sharding = parallel.replicated(mesh)
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


class Checkpoints:
  """The rolling and best checkpoint managers of one workdir."""

  def __init__(self, workdir: str, keep: int = 2, read_only: bool = False):
    self.workdir = epath.Path(workdir)
    def manager(name, max_to_keep):
      # Naming the handlers lets a reader ask for one item (the config) or
      # for the state's metadata without knowing the state's structure.
      return ocp.CheckpointManager(
          self.workdir / name,
          options=ocp.CheckpointManagerOptions(
              max_to_keep=None if read_only else max_to_keep,
              create=not read_only,
              read_only=read_only),
          item_handlers={'state': ocp.StandardCheckpointHandler(),
                         'meta': ocp.JsonCheckpointHandler(),
                         'config': ocp.JsonCheckpointHandler()})
    self._last = manager('checkpoints', keep)
    self._best = manager('best', 1)

  def _manager(self, which: str) -> ocp.CheckpointManager:
    if which not in ('last', 'best'):
      raise UserError(f"checkpoint={which!r} is unknown; choose 'last' or 'best'")
    return self._last if which == 'last' else self._best

  def latest_epoch(self, which: str = 'last') -> int | None:
    return self._manager(which).latest_step()

  def save(self, epoch: int, state, meta: dict, config: dict, *,
           last: bool, best: bool) -> None:
    """Saves into the rolling and/or the best manager.

    An epoch a manager already holds is skipped: after a resume, the epochs
    between the restored checkpoint and the kill are recomputed bit for bit,
    so the copy on disk is already the right one.
    """
    args = ocp.args.Composite(state=ocp.args.StandardSave(state),
                              meta=ocp.args.JsonSave(meta),
                              config=ocp.args.JsonSave(config))
    for wanted, manager in ((last, self._last), (best, self._best)):
      if wanted and epoch not in manager.all_steps():
        manager.save(epoch, args=args)

  def restore(self, abstract_state=None, which: str = 'last',
              epoch: int | None = None,
              mesh: Mesh | None = None) -> tuple[Any, dict]:
    """(state, meta) of `epoch` (default: the latest) of `which`.

    With `abstract_state` (a tree of jax.ShapeDtypeStruct with shardings) the
    state comes back in that structure. Without it, pass `mesh`: the state
    comes back as nested dicts, shaped as saved, replicated on `mesh`, which
    is all a reader such as evaluation needs.
    """
    manager = self._manager(which)
    epoch = manager.latest_step() if epoch is None else epoch
    if epoch is None:
      raise UserError(f'no {which} checkpoint in {manager.directory}; train '
                      'first with configs/teacher.py and the same workdir')
    if abstract_state is None:
      saved = manager.item_metadata(epoch).state
      abstract_state = jax.tree.map(
          lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype,
                                         sharding=parallel.replicated(mesh)),
          saved)
    restored = manager.restore(epoch, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state),
        meta=ocp.args.JsonRestore()))
    return restored.state, restored.meta

  def restore_config(self, which: str = 'last') -> dict:
    manager = self._manager(which)
    epoch = manager.latest_step()
    if epoch is None:
      raise UserError(f'no {which} checkpoint in {manager.directory}')
    return manager.restore(epoch, args=ocp.args.Composite(
        config=ocp.args.JsonRestore())).config

  def close(self) -> None:
    self._last.wait_until_finished()
    self._best.wait_until_finished()
    self._last.close()
    self._best.close()
