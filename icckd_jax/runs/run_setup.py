"""What a run (teacher or student) is made of, built before anything runs.

`RunSetup` is the one value the loop (`loop.fit`) needs from a stage's
builder (`teacher.build_teacher`, `student.build_student`): the model, the
optimiser, the jitted step and its traced arguments, and how to make the
initial state.
"""

from collections.abc import Callable, Iterator
import dataclasses
import json
from typing import Any

import flax.linen as nn
import jax
from jax.sharding import Mesh
import optax

from icckd_jax import parallel
from icckd_jax.data import datasets
from icckd_jax.input_pipeline import inputs
from icckd_jax.input_pipeline import resident
from icckd_jax.input_pipeline.source import Batch, InputSource, TrainFeed
from icckd_jax.errors import UserError
from icckd_jax.runs import memory as memory_lib
from icckd_jax.runs import reuse as reuse_lib
from icckd_jax.runs.config_schema import DTYPES
from icckd_jax.runs.reuse import Reuse
from icckd_jax.runs.spec import Inputs, Recipe
from icckd_jax.runs.train_state import TrainState


def compute_dtype(dtype: str):
  """The compute dtype named `dtype` (config.dtype)."""
  if dtype not in DTYPES:
    raise UserError(
      f'config.dtype={dtype!r} is unknown; choose one of: ' + ', '.join(DTYPES)
    )
  return DTYPES[dtype]


def mesh_key(mesh: Mesh) -> str:
  """The devices of `mesh`, as a key for sharing compiled programs."""
  return ','.join(str(d.id) for d in mesh.devices.flat)


def load_dataset(
  data: datasets.DataRequest, feed: Inputs, reuse: Reuse | None = None
) -> InputSource:
  """The data set `data` as the run's input source, streamed or resident
  as `feed` (config.input) says (`inputs.load`), sized against this
  process's first device."""
  mode, workers, decode = feed.mode, feed.workers, feed.decode
  return reuse_lib.get(
    reuse,
    'dataset',
    f'{data_key(data)}|{mode}|{workers}|{decode}',
    lambda: inputs.load(
      data,
      mode,
      workers,
      memory_lib.available_memory(jax.local_devices()[0]),
      decode,
    ),
  )


def data_key(data: datasets.DataRequest) -> str:
  """`data` as a canonical string: a key for sharing what is built from
  the data set alone (the loaded set, evaluation programs)."""
  return json.dumps(dataclasses.asdict(data), sort_keys=True)


def check_steps_per_epoch(batch_size: int, dataset: InputSource) -> int:
  """The full batches of `batch_size` (config.batch_size) in an epoch of
  `dataset`'s train split; none is refused."""
  steps = resident.steps_per_epoch(len(dataset.train_labels), batch_size)
  if steps == 0:
    raise UserError(
      f'config.batch_size={batch_size} is larger than the '
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
  # (state, batch: Batch, step_args) -> (state, metrics)
  train_step: Callable
  # The step's last argument: the objective's traced scalars, and for a
  # student the teacher's variables (an argument, not a constant baked into
  # the compiled step).
  step_args: Any
  # A student's teacher: (model, variables), for the agreement metric.
  reference: tuple[nn.Module, Any] | None = None
  # A run whose distiller has trainable parts: its batches carry each
  # example's index in the training split (`Batch.indices`; CRD's memory
  # bank keys on it).
  with_indices: bool = False
  # Its last view is strongly augmented (`TrainFeed.strong_view`).
  strong_view: bool = False

  def create_state(self, mesh: Mesh) -> TrainState:
    """The initial state, created on the devices and replicated over `mesh`
    (never materialised on the host first)."""
    return jax.jit(self.init_state, out_shardings=parallel.replicated(mesh))()

  def batches(
    self, recipe: Recipe, source: InputSource, mesh: Mesh, start_step: int
  ) -> Iterator[Batch]:
    """The `Batch`es of this run from `start_step` on, from `source`;
    `recipe` gives the seed, batch size and augmentation."""
    feed = TrainFeed(
      seed=recipe.seed,
      batch_size=recipe.batch_size,
      num_views=self.num_views,
      crop_padding=recipe.crop_padding,
      flip=recipe.flip,
      with_indices=self.with_indices,
      strong_view=self.strong_view,
    )
    return source.train_batches(mesh, feed, start_step)
