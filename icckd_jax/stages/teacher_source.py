"""Where a student's teacher comes from: a run of this project or a
PyTorch checkpoint (the CIFAR-100 KD benchmark's, torchvision's ImageNet
weights), only ever read.

A project run (`TeacherSource.workdir`) brings its architecture and data set
in the config saved with its checkpoint; a `.pth` file (`config.teacher.pth`
with `config.teacher.model`) brings its family's input statistics
(`torch_import.normalization`: ImageNet's for `imagenet_*`, else the
CIFAR-100 benchmark's), which the teacher's input is normalised with instead
of the data set's.
"""

from collections.abc import Mapping
import dataclasses
import hashlib
import os
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import Mesh
import ml_collections
import numpy as np
import flax.linen as nn

from icckd_jax import parallel
from icckd_jax.data import datasets
from icckd_jax.errors import UserError
from icckd_jax.input_pipeline.source import InputSource
from icckd_jax.interop import torch_import
from icckd_jax.runs import compat
from icckd_jax.training import checkpoint
from icckd_jax.runs.spec import TeacherSource


@dataclasses.dataclass(frozen=True)
class Renormalized:
  """A model applied to inputs normalised with other statistics than its own.

  `apply(variables, x)` maps x = (raw - mean) / std, as the student sees it,
  to (raw - model_mean) / model_std, all [C] in [0, 255] units, and applies
  the model; this is how the trainer's agreement metric, which hands every
  model the student's input, feeds a PyTorch teacher.
  """

  model: nn.Module
  mean: tuple[float, ...]
  std: tuple[float, ...]
  model_mean: tuple[float, ...]
  model_std: tuple[float, ...]

  def apply(self, variables, x: jax.Array, **kwargs):
    raw = x.astype(jnp.float32) * jnp.asarray(self.std) + jnp.asarray(self.mean)
    x_model = (raw - jnp.asarray(self.model_mean)) / jnp.asarray(self.model_std)
    return self.model.apply(variables, x_model.astype(x.dtype), **kwargs)


def teacher_normalization(
  teacher_config: ml_collections.ConfigDict, dataset: InputSource
):
  """(mean, std) [C] in [0, 255] units that the teacher's input is normalised
  with: a PyTorch teacher's training statistics, else the data set's."""
  if teacher_config.get('input_mean') is not None:
    return (
      np.asarray(teacher_config.input_mean, np.float32),
      np.asarray(teacher_config.input_std, np.float32),
    )
  return dataset.mean, dataset.std


def _load_pytorch_teacher(source: TeacherSource, mesh: Mesh):
  """(teacher config, variables) of the `.pth` file config.teacher.pth."""
  path, model = source.pth, source.model
  if source.workdir:
    raise UserError(
      f'config.teacher.pth={path!r} and config.teacher.workdir='
      f'{source.workdir!r} are both set; the teacher is '
      'one or the other'
    )
  torch_import.check_source(
    path, model, 'config.teacher.pth', 'config.teacher.model'
  )
  variables = torch_import.load_checkpoint(path, model)
  mean, std = torch_import.normalization(model)
  saved = ml_collections.ConfigDict(
    {
      'model': model,
      'pth': path,
      'input_mean': mean.tolist(),
      'input_std': std.tolist(),
    }
  )
  return saved, parallel.put_replicated(variables, mesh)


def fingerprint(variables, epoch: int | None, step: int | None) -> dict:
  """What identifies a teacher: the epoch and step of its checkpoint (None
  for a .pth file) and a SHA-256 of its variables' names, shapes, dtypes and
  bytes. A student records it when it starts and resumes only from the
  same teacher."""
  digest = hashlib.sha256()
  for path, leaf in jax.tree_util.tree_leaves_with_path(variables):
    # Replicated: one local copy holds the whole array on every host.
    value = np.asarray(
      leaf.addressable_data(0) if hasattr(leaf, 'addressable_data') else leaf
    )
    digest.update(
      f'{jax.tree_util.keystr(path)}|{value.shape}|{value.dtype}|'.encode()
    )
    digest.update(np.ascontiguousarray(value).tobytes())
  return {'epoch': epoch, 'step': step, 'digest': digest.hexdigest()[:16]}


class Teacher(NamedTuple):
  """A student's teacher, loaded.

  config: the config saved with an Orbax teacher run, or for a PyTorch
    teacher {'model', 'pth', 'input_mean', 'input_std'};
  variables: its {'params', 'batch_stats'}, replicated on the mesh;
  fingerprint: {'epoch', 'step', 'digest'} (`fingerprint`);
  is_run: whether it is a run of this project (whose data set the student's
    must match), not a .pth file.
  """

  config: ml_collections.ConfigDict
  variables: Any
  fingerprint: dict[str, Any]
  is_run: bool


def load_teacher_checked(source: TeacherSource, mesh: Mesh) -> Teacher:
  """The teacher `source` names, with its fingerprint.

  Of an Orbax
  run, the newest intact checkpoint is used; a damaged one is skipped (the
  teacher's workdir is only read). A run that has not reached its last
  epoch is refused unless config.teacher.allow_unfinished.
  """
  if source.pth:
    saved, variables = _load_pytorch_teacher(source, mesh)
    return Teacher(saved, variables, fingerprint(variables, None, None), False)
  workdir = source.workdir
  if not workdir or not os.path.isdir(workdir):
    raise UserError(
      f'config.teacher.workdir={workdir!r} is not a directory '
      'holding a trained teacher (or set config.teacher.pth to '
      'a PyTorch checkpoint)'
    )
  with checkpoint.Checkpoints(workdir, read_only=True) as ckpts:
    restored = ckpts.restore_newest_intact(
      None, which=source.checkpoint, mesh=mesh
    )
    last_epoch = ckpts.latest_epoch('last')
  if restored is None:
    raise UserError(
      f'no {source.checkpoint} checkpoint in '
      f'config.teacher.workdir={workdir!r}; train the teacher '
      'first'
    )
  state, meta, saved = restored
  planned = saved.get('num_epochs')
  if (
    planned is not None
    and (last_epoch or 0) < planned
    and not source.allow_unfinished
  ):
    raise UserError(
      f'config.teacher.workdir={workdir!r} holds an unfinished teacher '
      f'(epoch {last_epoch or 0} of {planned}); let it finish, or set '
      '--config.teacher.allow_unfinished=True to distil from it as it is'
    )
  variables = {
    'params': state['params']['model'],
    'batch_stats': state['batch_stats'],
  }
  return Teacher(
    ml_collections.ConfigDict(saved),
    variables,
    fingerprint(variables, meta.get('epoch'), meta.get('step')),
    True,
  )


# The dataset fields that decide which images and labels the teacher saw;
# the synthetic set is drawn from its seed, sizes and class count. The
# subsets (train_subset, test_subset) may differ: the same images, fewer.
_DATA_FIELDS = ('name', 'path', 'image_size', 'channels', 'label_kind')
_SYNTHETIC_FIELDS = ('seed', 'num_train', 'num_test', 'num_classes')


def check_same_data(
  student: datasets.DataRequest,
  teacher: ml_collections.ConfigDict | Mapping,
  input_shape=None,
  teacher_shape=None,
) -> None:
  """The student's data must be the teacher's: same set, same image size,
  channels and normalisation (a teacher fed other images scores near
  chance). `teacher` is the `dataset` section saved with the teacher; a
  field it lacks counts as its `DataRequest` default, as the student's does."""
  theirs_request = datasets.DataRequest.from_fields(teacher)
  fields = _DATA_FIELDS + (
    _SYNTHETIC_FIELDS if student.name == 'synthetic' else ()
  )
  for field in fields + compat.ADDED_DATA_FIELDS:
    mine, theirs = getattr(student, field), getattr(theirs_request, field)
    if field == 'path' and mine and theirs:
      # One folder however named (trailing slash, relative, a link).
      same = os.path.realpath(mine) == os.path.realpath(theirs)
    else:
      same = mine == theirs
    if not same:
      raise UserError(
        f'config.dataset.{field}={mine!r} but the teacher was '
        f'trained on dataset.{field}={theirs!r}'
      )
  if teacher_shape and list(input_shape) != list(teacher_shape):
    raise UserError(
      f'the student data set has images of shape '
      f'{tuple(input_shape)} (height, width, channels) but the '
      f'teacher was trained on {tuple(teacher_shape)}'
    )
