"""configs/eval.py on a training run: its checkpoint evaluated on the whole
test split, written to WORKDIR/eval_<which>.json, and optionally exported.

The model and data set come from the config saved with the checkpoint, so
nothing but the workdir is needed; the device count may differ from the
one the checkpoint was saved with. Nothing in the workdir is changed but
that file: the checkpoints are read without the workdir's lock, as a run
may be training in it.
"""

import json
import os
from typing import Any

from absl import logging
import jax
import ml_collections

from icckd_jax import models
from icckd_jax import parallel
from icckd_jax.errors import UserError
from icckd_jax.interop import params_file
from icckd_jax.runs import run_setup
from icckd_jax.runs import spec
from icckd_jax.training import checkpoint
from icckd_jax.training import evaluate


def evaluate_checkpoint(
  workdir: str,
  which: str = 'best',
  num_devices: int | None = None,
  batch_size: int = 500,
  export: str | None = None,
) -> dict[str, Any]:
  """Restores WORKDIR's `which` checkpoint on a mesh of `num_devices`,
  evaluates it on the whole test split in batches of `batch_size`, and
  writes WORKDIR/eval_<which>.json. With `export`, its variables are also
  written to that plain parameters file (`interop/params_file.py`).
  """
  if export:
    params_file.check_writable(export, 'config.export')
  mesh = parallel.make_mesh(num_devices)
  state, meta, saved = _restore_checkpoint(workdir, which, mesh)
  dataset = run_setup.load_dataset(
    spec.data_request(saved.dataset),
    spec.part(spec.Inputs, saved.get('input') or {}),
  )
  dtype = run_setup.compute_dtype(saved.dtype)
  model = models.create_model(
    saved.model, dataset.num_classes, dtype=dtype, bn_axis_name=parallel.DATA
  )
  variables = {
    'params': state['params']['model'],
    'batch_stats': state['batch_stats'],
  }
  if export and jax.process_index() == 0:
    params_file.save(
      export,
      variables,
      model=saved.model,
      num_classes=dataset.num_classes,
      mean=dataset.mean,
      std=dataset.std,
    )
  evaluate_fn = evaluate.make_eval_fn(
    model, mesh, mean=dataset.mean, std=dataset.std, dtype=dtype
  )
  result = evaluate_fn(variables, dataset.eval_batches(mesh, batch_size))
  result.update(
    checkpoint=which, epoch=meta['epoch'], devices=int(mesh.devices.size)
  )
  logging.info(
    '%s checkpoint of %s (epoch %d): top-1 %.4f, top-5 %.4f on %d '
    'test examples',
    which,
    workdir,
    meta['epoch'],
    result['top1'],
    result['top5'],
    result['count'],
  )
  _write_result(workdir, which, result)
  return result


def _restore_checkpoint(workdir: str, which: str, mesh):
  """(state, meta, saved config) of WORKDIR's newest intact `which`
  checkpoint, restored onto `mesh`; only reads."""
  if not workdir or not os.path.isdir(workdir):
    raise UserError(
      f'config.workdir={workdir!r} is not a directory holding a training run'
    )
  if which not in ('best', 'last'):
    raise UserError(
      f"config.checkpoint={which!r} is unknown; choose 'best' or 'last'"
    )
  # Read-only and without the workdir's lock: a run may be training in it.
  # A damaged newest checkpoint is skipped for the newest intact one.
  with checkpoint.Checkpoints(workdir, read_only=True) as ckpts:
    restored = ckpts.restore_newest_intact(None, which=which, mesh=mesh)
  if restored is None:
    raise UserError(
      f'no {which} checkpoint in {workdir}; train first with '
      'configs/teacher.py and the same workdir'
    )
  state, meta, saved = restored
  return state, meta, ml_collections.ConfigDict(saved)


def _write_result(workdir: str, which: str, result: dict[str, Any]) -> None:
  """WORKDIR/eval_<which>.json, or a warning where the workdir is read-only
  (the command prints the result either way)."""
  if jax.process_index() == 0:
    path = os.path.join(workdir, f'eval_{which}.json')
    try:
      with open(path, 'w') as f:
        json.dump(result, f, indent=2)
    except OSError as e:  # A read-only workdir: the command prints it.
      logging.warning(
        'Could not write %s (%s); the result is printed below.',
        path,
        e.strerror or e,
      )
