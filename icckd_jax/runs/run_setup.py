"""What a run (teacher or student) is made of, built before anything runs.

`RunSetup` is the one value the loop (`loop.fit`) needs from a stage's
builder (`teacher.build_teacher`, `student.build_student`): the model, the
optimiser, the jitted step and its traced arguments, and how to make the
initial state.
"""

from collections.abc import Callable
import dataclasses
from typing import Any

import flax.linen as nn
import jax
from jax.sharding import Mesh
import ml_collections
import optax

from icckd_jax import parallel
from icckd_jax.data import datasets
from icckd_jax.input_pipeline import resident
from icckd_jax.input_pipeline import inputs
from icckd_jax.input_pipeline import stream
from icckd_jax.errors import UserError
from icckd_jax.runs import config_schema
from icckd_jax.runs import memory as memory_lib
from icckd_jax.runs import reuse as reuse_lib
from icckd_jax.runs.config_schema import DTYPES
from icckd_jax.runs.reuse import Reuse
from icckd_jax.runs.train_state import TrainState


def compute_dtype(config: ml_collections.ConfigDict):
  if config.dtype not in DTYPES:
    raise UserError(
      f'config.dtype={config.dtype!r} is unknown; choose one of: '
      + ', '.join(DTYPES)
    )
  return DTYPES[config.dtype]


def step_key(config: ml_collections.ConfigDict, *extra: str) -> str:
  """The part of `config` a compiled step depends on (see config_schema),
  with `extra` (the step's other static inputs): steps of equal keys are
  shared by the runs of one process (`Reuse`)."""
  return '|'.join(
    (reuse_lib.config_key(config, config_schema.not_compiled()), *extra)
  )


def mesh_key(mesh: Mesh) -> str:
  """The devices of `mesh`, as a key for sharing compiled programs."""
  return ','.join(str(d.id) for d in mesh.devices.flat)


def load_dataset(
  config: ml_collections.ConfigDict, reuse: Reuse | None = None
) -> datasets.Dataset:
  """The data set of `config`, streamed or resident as config.input says
  (`inputs.load`), sized against this process's first device."""
  input_config = config.get('input') or {}
  mode = input_config.get('mode', 'auto')
  workers = input_config.get('workers', 0)
  return reuse_lib.get(
    reuse,
    'dataset',
    f'{reuse_lib.config_key(config.dataset)}|{mode}|{workers}',
    lambda: inputs.load(
      config.dataset,
      mode,
      workers,
      memory_lib.available_memory(jax.local_devices()[0]),
    ),
  )


def splits(dataset: datasets.Dataset, mesh: Mesh):
  """(train, test): a streamed set's `stream.StreamSplit`s, else the
  resident splits placed on every device of `mesh`."""
  if dataset.stream is not None:
    return dataset.stream
  return resident.to_device(dataset, mesh)


def check_steps_per_epoch(
  config: ml_collections.ConfigDict, dataset: datasets.Dataset
) -> int:
  steps = resident.steps_per_epoch(len(dataset.train_labels), config.batch_size)
  if steps == 0:
    raise UserError(
      f'config.batch_size={config.batch_size} is larger than the '
      f'{len(dataset.train_labels)} training examples'
    )
  return steps


@dataclasses.dataclass(frozen=True)
class RunSetup:
  """Everything static that a run (teacher or student) is made of."""

  model: nn.Module
  tx: optax.GradientTransformation
  learning_rate_fn: optax.Schedule
  steps_per_epoch: int
  num_views: int
  init_state: Callable[[], TrainState]  # placed on a mesh by `create_state`
  # (state, images, labels, step_args) -> (state, metrics)
  train_step: Callable
  # The step's last argument: the objective's traced scalars, and for a
  # student the teacher's variables (an argument, not a constant baked into
  # the compiled step).
  step_args: Any
  head: nn.Module | None = None
  # A student's teacher: (model, variables), for the agreement metric.
  reference: tuple[nn.Module, Any] | None = None
  # A TRAINABLE distiller's run: the step's labels argument is (labels [B],
  # indices [B]), each example's index in the training split (CRD's memory
  # bank keys on it).
  with_indices: bool = False

  def create_state(self, mesh: Mesh) -> TrainState:
    """The initial state, created on the devices and replicated over `mesh`
    (never materialised on the host first)."""
    return jax.jit(self.init_state, out_shardings=parallel.replicated(mesh))()

  def batches(self, config, split, mesh: Mesh, start_step: int):
    """The batch stream of this run from `start_step` on: from a resident
    `resident.Split` on the devices, or a `stream.StreamSplit`."""
    make = (
      stream.train_batches
      if isinstance(split, stream.StreamSplit)
      else resident.train_batches
    )
    batches = make(
      split,
      mesh,
      seed=config.seed,
      batch_size=config.batch_size,
      num_views=self.num_views,
      crop_padding=config.crop_padding,
      flip=config.flip,
      start_step=start_step,
      with_indices=self.with_indices,
    )
    if not self.with_indices:
      return batches
    return _with_indices(batches)


def _with_indices(batches):
  """(images, (labels, indices)): one labels argument, which the loop and
  the data-parallel scaffold pass through unchanged; closing it closes
  `batches`."""
  try:
    for images, labels, indices in batches:
      yield images, (labels, indices)
  finally:
    batches.close()
