"""configs/eval.py on a PyTorch checkpoint (`config.pth`): imported,
evaluated on the whole test split and optionally exported; nothing else
is written."""

from typing import Any

from absl import logging
import jax
import jax.numpy as jnp

from icckd_jax import models
from icckd_jax import parallel
from icckd_jax.errors import UserError
from icckd_jax.input_pipeline import inputs
from icckd_jax.interop import params_file
from icckd_jax.interop import torch_import
from icckd_jax.runs import spec
from icckd_jax.training import evaluate


def check_image_size(data: spec.DataRequest, shape) -> None:
  """Refuses config.dataset.image_size when the images evaluated (`shape`,
  [H, W, C]) have another size: the set's own size would be used and the
  figure reported as if at the size asked for."""
  if tuple(shape[:2]) != (data.image_size, data.image_size):
    raise UserError(
      f'config.dataset.image_size={data.image_size} but '
      f'dataset.name={data.name!r} gives {shape[0]}x{shape[1]} images, the '
      'size it would be evaluated at; set dataset.image_size to it, or '
      'evaluate on a set of the size asked for'
    )


def evaluate_pytorch(
  pth: str,
  model_name: str,
  data: spec.DataRequest,
  num_devices: int | None = None,
  batch_size: int = 500,
  export: str | None = None,
) -> dict[str, Any]:
  """Imports a PyTorch checkpoint (the CIFAR-100 KD benchmark's, or
  torchvision's for an `imagenet_*` model) and evaluates it on the whole
  test split of `data`, as a student evaluates such a teacher (inputs
  normalised with the statistics of the model's family,
  `torch_import.normalization`; float32), a streamed ImageNet decoded
  'torchvision': torchvision's transform, which the published top-1 was
  measured with. Returns the result; writes
  nothing, except the plain parameters file `export` when given.
  """
  if export:
    params_file.check_writable(export, 'config.export')
  torch_import.check_source(pth, model_name, 'config.pth', 'config.model')
  mesh = parallel.make_mesh(num_devices)
  dataset = inputs.load(data, decode='torchvision')
  check_image_size(data, dataset.image_shape)
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
  evaluate_fn = evaluate.make_eval_fn(
    model, mesh, mean=mean, std=std, dtype=jnp.float32
  )
  result = evaluate_fn(
    parallel.put_replicated(variables, mesh),
    dataset.eval_batches(mesh, batch_size),
  )
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
