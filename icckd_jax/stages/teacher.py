"""The teacher: cross-entropy plus the gated intra-class loss (docs/method.md
§3), built for the loop.

`train_teacher(config, workdir)` checks everything that can reject the
config, builds the model, optimiser and jitted step (`build_teacher`), and
runs the loop (`loop.fit`); the student's module mirrors it.
"""

from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh
import ml_collections

from icckd_jax import models
from icckd_jax import parallel
from icckd_jax.data import datasets
from icckd_jax.objective import cache as cache_lib
from icckd_jax.objective import projection
from icckd_jax.training import loop
from icckd_jax.training import optim
from icckd_jax.stages import preflight
from icckd_jax.runs import reuse as reuse_lib
from icckd_jax.runs import workdir_lock
from icckd_jax.stages import teacher_step
from icckd_jax.runs.reuse import Reuse
from icckd_jax.runs.run_setup import (
  RunSetup,
  check_steps_per_epoch,
  compute_dtype,
  load_dataset,
  mesh_key,
  step_key,
)
from icckd_jax.runs.train_state import create_train_state


def _init_state_fn(config, model, head, tx, input_shape):
  """() -> the initial TrainState of the teacher of `config`."""
  icc_on = config.icc.lam != 0

  def init_state():
    params, batch_stats = teacher_step.init_params(
      model, head, jax.random.key(config.seed), input_shape
    )
    # No objective or cache.size = 0: no cache at all (Orbax cannot store
    # the zero-size arrays of an empty ring).
    cache = None
    if icc_on and config.cache.size > 0:
      if config.cache.store == 'features':
        item_shape = (
          teacher_step.embedding_dim(
            model, head, params, batch_stats, input_shape
          ),
        )
        item_dtype = jnp.float32
      else:
        item_shape, item_dtype = input_shape, jnp.uint8
      cache = cache_lib.create(
        config.cache.size, config.batch_size, item_shape, item_dtype
      )
    return create_train_state(params, batch_stats, tx, cache)

  return init_state


def build_teacher(
  config: ml_collections.ConfigDict,
  dataset: datasets.Dataset,
  mesh: Mesh,
  reuse: Reuse | None = None,
) -> RunSetup:
  """Validates `config` and builds the model, optimiser and jitted step.

  With `reuse`, a step already built for a config that differs only in
  traced values (δ, τ, λ ≠ 0) or the seed is shared, compiled once.
  """
  dtype = compute_dtype(config)
  parallel.check_batch_size(config.batch_size, mesh, 'config.batch_size')
  steps_per_epoch = check_steps_per_epoch(config, dataset)
  input_shape = dataset.image_shape
  model = models.create_model(
    config.model, dataset.num_classes, dtype=dtype, bn_axis_name=parallel.DATA
  )
  icc_on = config.icc.lam != 0
  head = (
    projection.MLPHead(config.icc.head_dim, dtype=dtype)
    if icc_on and config.icc.head == 'mlp'
    else None
  )
  learning_rate_fn = optim.create_learning_rate_fn(config, steps_per_epoch)
  tx = optim.create_optimizer(config, learning_rate_fn)
  num_views = 2 if icc_on else 1
  train_step = reuse_lib.get(
    reuse,
    'teacher_step',
    step_key(config, str(num_views), mesh_key(mesh)),
    lambda: teacher_step.make_train_step(
      model,
      head,
      tx,
      mesh,
      mean=dataset.mean,
      std=dataset.std,
      dtype=dtype,
      num_views=num_views,
      margin_kind=config.icc.margin_kind,
      cache_store=config.cache.store,
      empty_anchors=config.icc.empty_anchors,
    ),
  )
  return RunSetup(
    model=model,
    head=head,
    tx=tx,
    learning_rate_fn=learning_rate_fn,
    steps_per_epoch=steps_per_epoch,
    num_views=num_views,
    init_state=_init_state_fn(config, model, head, tx, input_shape),
    train_step=train_step,
    step_args=teacher_step.hyperparameters(
      config.icc.lam, config.icc.tau, config.icc.delta
    ),
  )


def train_teacher(
  config: ml_collections.ConfigDict,
  workdir: str,
  reuse: Reuse | None = None,
  claim: workdir_lock.WorkdirLock | None = None,
) -> dict[str, Any]:
  """Trains the teacher of `config` in `workdir`, resuming if it can;
  returns the summary.

  Every check that can reject the config (`preflight`) runs before the
  workdir is created or written. `claim`: the workdir's lock, when the
  caller took it first (`preflight.hold_workdir`).
  """
  mesh = preflight.checked_mesh(config, workdir)
  dataset = load_dataset(config, reuse)
  setup = build_teacher(config, dataset, mesh, reuse)
  memory = preflight.check_step_memory(config, setup, dataset, mesh)
  workdir = preflight.prepare_workdir(workdir)
  with preflight.hold_workdir(workdir, claim):
    return loop.fit(
      config, workdir, setup, dataset, mesh, reuse=reuse, step_memory=memory
    )
