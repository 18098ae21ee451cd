"""The teacher: cross-entropy plus the gated intra-class loss (docs/method.md
§3), built for the loop.

`train_teacher(config, workdir)` checks everything that can reject the
config, turns it into typed parts (`spec.RunSpec`), builds the model,
optimiser and jitted step from them (`build_teacher`), and runs the loop
(`loop.fit`); the student's module mirrors it.
"""

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh
import ml_collections

from icckd_jax import models
from icckd_jax import parallel
from icckd_jax.input_pipeline.source import InputSource
from icckd_jax.objective import cache as cache_lib
from icckd_jax.objective import projection
from icckd_jax.training import hooks as hooks_lib
from icckd_jax.training import loop
from icckd_jax.training import optim
from icckd_jax.training import records
from icckd_jax.stages import preflight
from icckd_jax.runs import data_identity
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
)
from icckd_jax.runs.spec import RunSpec
from icckd_jax.runs.train_state import create_train_state


# The teacher's records: the negative cache's bytes, and each step's CE
# alone (the one loss every setting shares; the total differs by λ·L).
RECORDS = records.StageRecords(
  state_bytes=lambda state: cache_lib.nbytes(state.cache),
  epoch_metrics=records.step_series('ce'),
)


def _init_state_fn(run: RunSpec, model, head, tx, input_shape):
  """() -> the initial TrainState of the teacher `run`."""
  icc_on = run.objective.lam != 0
  cache_size, cache_store = run.cache.size, run.cache.store

  def init_state():
    params, batch_stats = teacher_step.init_params(
      model, head, jax.random.key(run.recipe.seed), input_shape
    )
    # No objective or cache.size = 0: no cache at all (Orbax cannot store
    # the zero-size arrays of an empty ring).
    cache = None
    if icc_on and cache_size > 0:
      if cache_store == 'features':
        item_shape = (
          teacher_step.embedding_dim(
            model, head, params, batch_stats, input_shape
          ),
        )
        item_dtype = jnp.float32
      else:
        item_shape, item_dtype = input_shape, jnp.uint8
      cache = cache_lib.create(
        cache_size, run.recipe.batch_size, item_shape, item_dtype
      )
    return create_train_state(params, batch_stats, tx, cache)

  return init_state


def build_teacher(
  run: RunSpec,
  dataset: InputSource,
  mesh: Mesh,
  reuse: Reuse | None = None,
) -> RunSetup:
  """Builds the model, optimiser and jitted step of the teacher `run`.

  With `reuse`, a step already built for a config that differs only in
  traced values (δ, τ, λ ≠ 0) or the seed is shared, compiled once.
  """
  recipe, objective = run.recipe, run.objective
  dtype = compute_dtype(recipe.dtype)
  parallel.check_batch_size(recipe.batch_size, mesh, 'config.batch_size')
  steps_per_epoch = check_steps_per_epoch(recipe.batch_size, dataset)
  input_shape = dataset.image_shape
  model = models.create_model(
    recipe.model, dataset.num_classes, dtype=dtype, bn_axis_name=parallel.DATA
  )
  icc_on = objective.lam != 0
  head = (
    projection.MLPHead(objective.head_dim, dtype=dtype)
    if icc_on and objective.head == 'mlp'
    else None
  )
  learning_rate_fn = optim.create_learning_rate_fn(recipe, steps_per_epoch)
  tx = optim.create_optimizer(recipe, learning_rate_fn)
  num_views = 2 if icc_on else 1
  train_step = reuse_lib.get(
    reuse,
    'teacher_step',
    run.step_key(str(num_views), mesh_key(mesh)),
    lambda: teacher_step.make_train_step(
      model,
      head,
      tx,
      mesh,
      mean=dataset.mean,
      std=dataset.std,
      dtype=dtype,
      num_views=num_views,
      margin_kind=objective.margin_kind,
      cache_store=run.cache.store,
      empty_anchors=objective.empty_anchors,
    ),
  )
  return RunSetup(
    model=model,
    tx=tx,
    learning_rate_fn=learning_rate_fn,
    steps_per_epoch=steps_per_epoch,
    num_views=num_views,
    init_state=_init_state_fn(run, model, head, tx, input_shape),
    train_step=train_step,
    step_args=teacher_step.hyperparameters(
      objective.lam, objective.tau, objective.delta
    ),
  )


def train_teacher(
  config: ml_collections.ConfigDict,
  workdir: str,
  reuse: Reuse | None = None,
  claim: workdir_lock.WorkdirLock | None = None,
  hooks: Sequence[hooks_lib.Hook] = (),
) -> dict[str, Any]:
  """Trains the teacher of `config` in `workdir`, resuming if it can;
  returns the summary.

  Every check that can reject the config (`spec.checked`, `preflight`)
  runs before the workdir is created or written. `claim`: the workdir's
  lock, when the caller took it first (`preflight.hold_workdir`); `hooks`:
  called by the loop (training/hooks.py).
  """
  run, mesh = preflight.checked_run(config, workdir)
  dataset = load_dataset(
    run.data, data_identity.resumed_inputs(run.inputs, workdir), reuse
  )
  data_identity.check(workdir, data_identity.of(run.data, dataset))
  setup = build_teacher(run, dataset, mesh, reuse)
  memory = preflight.check_step_memory(run.recipe, setup, dataset, mesh)
  workdir = preflight.prepare_workdir(workdir)
  with preflight.hold_workdir(workdir, claim):
    return loop.fit(
      run,
      workdir,
      setup,
      dataset,
      mesh,
      stage=RECORDS,
      hooks=hooks,
      reuse=reuse,
      step_memory=memory,
    )
