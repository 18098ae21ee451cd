"""A plain parameters file: a model's variables and what is needed to run it.

One msgpack map (`flax.serialization`), readable without this project's
checkpoint code or Orbax:

  {'model': str, 'num_classes': int,
   'mean': [C] float32, 'std': [C] float32,   # input normalisation, [0, 255]
   'variables': {'params': ..., 'batch_stats': ...}}   # float32 arrays

No optimiser state, no cache, no step: only what inference needs. In a
notebook (images: float [B, H, W, C] in [0, 255]):

  from flax import serialization; from icckd_jax import models
  f = serialization.msgpack_restore(open('teacher.msgpack', 'rb').read())
  logits, features = models.create_model(f['model'], f['num_classes']).apply(f['variables'], (images - f['mean']) / f['std'])
"""

import os
from typing import Any

from flax import serialization
import jax
import numpy as np

from icckd_jax.errors import UserError


def check_writable(path: str, field: str) -> None:
  """Raises a one-line UserError unless `path` can be created: its folder
  exists and `path` is not a folder."""
  folder = os.path.dirname(os.path.abspath(path))
  if (
    os.path.isdir(path)
    or not os.path.isdir(folder)
    or not os.access(folder, os.W_OK)
  ):
    raise UserError(
      f'{field}={path!r} cannot be written: give a file path '
      'in an existing, writable folder'
    )


def _local_copy(x):
  """A replicated array's value from this process's own devices."""
  return x.addressable_data(0) if isinstance(x, jax.Array) else x


def save(
  path: str, variables: Any, *, model: str, num_classes: int, mean, std
) -> None:
  """Writes the parameters file atomically (a partial file never replaces a
  good one).

  Args:
    path: the file to write.
    variables: {'params', 'batch_stats'} of the model, host arrays or
      replicated device arrays (on several hosts too: each holds a copy).
    model: its name in `icckd_jax.models`.
    num_classes: its number of classes.
    mean, std: [C] the input normalisation the model expects, [0, 255] units.
  """
  contents = {
    'model': model,
    'num_classes': int(num_classes),
    'mean': np.asarray(mean, np.float32),
    'std': np.asarray(std, np.float32),
    'variables': jax.tree.map(
      lambda x: np.asarray(_local_copy(x), np.float32),
      {'params': variables['params'], 'batch_stats': variables['batch_stats']},
    ),
  }
  tmp = f'{path}.tmp-{os.getpid()}'
  with open(tmp, 'wb') as f:
    f.write(serialization.msgpack_serialize(contents))
  os.replace(tmp, path)


def load(path: str) -> dict[str, Any]:
  """The contents `save` wrote, arrays as numpy."""
  with open(path, 'rb') as f:
    return serialization.msgpack_restore(f.read())
