"""Evaluation on a whole split: every example counted exactly once (docs/method.md §5, §7.5)."""

import json
import os
from typing import Any

from absl import logging
import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec as P
import ml_collections
import numpy as np

from icckd_jax.input_pipeline import augment
from icckd_jax.training import checkpoint
from icckd_jax.runs import run_setup
from icckd_jax.runs import spec
from icckd_jax.input_pipeline import inputs
from icckd_jax.objective import losses
from icckd_jax import models
from icckd_jax import parallel
from icckd_jax.errors import UserError
from icckd_jax.interop import params_file
from icckd_jax.interop import torch_import
from icckd_jax.input_pipeline import stream
from icckd_jax.input_pipeline.resident import Split, eval_indices

DATA = parallel.DATA


def _sums_fn(model, mean, std, dtype, reference):
  """fn(variables, images [b, H, W, C] uint8, labels [b], mask [b],
  reference_variables) -> the masked sums of one batch, over every device."""

  def sums_of(variables, images, labels, mask, reference_variables):
    images = augment.normalize(images, mean, std, dtype)
    logits, _ = model.apply(variables, images, train=False)
    top5 = lax.top_k(logits, min(5, logits.shape[-1]))[1]
    w = mask.astype(jnp.float32)
    sums = {
      'top1': jnp.sum(w * (jnp.argmax(logits, -1) == labels)),
      'top5': jnp.sum(w * jnp.any(top5 == labels[:, None], -1)),
      'loss': jnp.sum(w * losses.cross_entropy(logits, labels)),
      'count': jnp.sum(w),
    }
    if reference is not None:
      reference_logits, _ = reference.apply(
        reference_variables, images, train=False
      )
      sums['agreement'] = jnp.sum(
        w * (jnp.argmax(logits, -1) == jnp.argmax(reference_logits, -1))
      )
    return lax.psum(sums, DATA)

  return sums_of


def make_eval_fn(
  model: nn.Module,
  mesh: Mesh,
  *,
  mean,
  std,
  dtype,
  batch_size: int,
  reference: nn.Module | None = None,
):
  """Builds evaluate(variables, split[, reference_variables]) -> metrics.

  Metrics: 'top1', 'top5', 'loss', 'count', and with a `reference` model (a
  student's teacher) 'agreement', the fraction of examples on which both
  predict the same class. `variables` are the model's {'params',
  'batch_stats'}, replicated. The split (a resident `Split` or a
  `stream.StreamSplit`) is covered in batches of `batch_size` (a multiple
  of the device count); the last batch is padded and its padding masked out
  of every sum.
  """
  parallel.check_batch_size(batch_size, mesh, 'config.eval_batch_size')
  sums_of = _sums_fn(model, mean, std, dtype, reference)

  def per_device(variables, split: Split, indices, mask, reference_variables):
    return sums_of(
      variables,
      split.images[indices],
      split.labels[indices],
      mask,
      reference_variables,
    )

  step = jax.jit(
    parallel.shard_map(
      per_device,
      mesh,
      in_specs=(P(), P(), P(DATA), P(DATA), P()),
      out_specs=P(),
    )
  )
  streamed_step = jax.jit(
    parallel.shard_map(
      sums_of,
      mesh,
      in_specs=(P(), P(DATA), P(DATA), P(DATA), P()),
      out_specs=P(),
    )
  )

  def batch_sums(variables, split, reference_variables):
    if isinstance(split, stream.StreamSplit):
      for images, labels, m in stream.eval_batches(split, mesh, batch_size):
        yield streamed_step(variables, images, labels, m, reference_variables)
      return
    indices, mask = eval_indices(split.size, batch_size)
    for idx, m in zip(indices, mask):
      idx, m = parallel.put_global_batch((idx, m), mesh)
      yield step(variables, split, idx, m, reference_variables)

  def evaluate(variables, split, reference_variables=None) -> dict[str, float]:
    totals = None
    for sums in batch_sums(variables, split, reference_variables):
      totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
    totals = jax.tree.map(lambda x: float(np.asarray(x)), totals)
    count = totals.pop('count')
    return {**{k: v / count for k, v in totals.items()}, 'count': int(count)}

  return evaluate


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


def evaluate_checkpoint(
  workdir: str,
  which: str = 'best',
  num_devices: int | None = None,
  batch_size: int = 500,
  export: str | None = None,
) -> dict[str, Any]:
  """Restores WORKDIR's `which` checkpoint on the current mesh, evaluates it on
  the whole test split, and writes WORKDIR/eval_<which>.json.

  The model and data set come from the config saved with the checkpoint, so
  nothing but the workdir is needed; the device count may differ from the
  one the checkpoint was saved with. With `export`, its variables are also
  written to that plain parameters file (`interop/params_file.py`).
  """
  if export:
    params_file.check_writable(export, 'config.export')
  mesh = parallel.make_mesh(num_devices)
  state, meta, saved = _restore_checkpoint(workdir, which, mesh)
  dataset = run_setup.load_dataset(
    spec.data_spec(saved.dataset),
    spec.part(spec.Inputs, saved.get('input') or {}),
  )
  dtype = run_setup.compute_dtype(saved.dtype)
  model = models.create_model(
    saved.model, dataset.num_classes, dtype=dtype, bn_axis_name=parallel.DATA
  )
  _, test = run_setup.splits(dataset, mesh)
  evaluate = make_eval_fn(
    model,
    mesh,
    mean=dataset.mean,
    std=dataset.std,
    dtype=dtype,
    batch_size=batch_size,
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
  result = evaluate(variables, test)
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


def evaluate_pytorch(
  pth: str,
  model_name: str,
  data: spec.DataSpec,
  num_devices: int | None = None,
  batch_size: int = 500,
  export: str | None = None,
) -> dict[str, Any]:
  """Imports a PyTorch checkpoint (the CIFAR-100 KD benchmark's, or
  torchvision's for an `imagenet_*` model) and evaluates it on the whole
  test split of `data`, exactly as a student evaluates such a
  teacher (inputs normalised with the statistics of the model's family,
  `torch_import.normalization`; float32). Prints the result as JSON; writes nothing else,
  except the plain parameters file `export` when given.
  """
  if export:
    params_file.check_writable(export, 'config.export')
  torch_import.check_source(pth, model_name, 'config.pth', 'config.model')
  mesh = parallel.make_mesh(num_devices)
  dataset = inputs.load(data)
  variables = torch_import.load_checkpoint(pth, model_name, dataset.num_classes)
  mean, std = torch_import.normalization(model_name)
  if export and jax.process_index() == 0:
    params_file.save(
      export,
      variables,
      model=model_name,
      num_classes=dataset.num_classes,
      mean=mean,
      std=std,
    )
  model = models.create_model(model_name, dataset.num_classes)
  _, test = run_setup.splits(dataset, mesh)
  evaluate = make_eval_fn(
    model, mesh, mean=mean, std=std, dtype=jnp.float32, batch_size=batch_size
  )
  result = evaluate(parallel.put_replicated(variables, mesh), test)
  result.update(pth=pth, model=model_name, devices=int(mesh.devices.size))
  logging.info(
    '%s (%s): top-1 %.4f, top-5 %.4f on %d test examples',
    pth,
    model_name,
    result['top1'],
    result['top5'],
    result['count'],
  )
  return result
