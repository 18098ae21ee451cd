"""Training a teacher: the loop, reading top to bottom (flax imagenet style).

`train_and_evaluate(config, workdir)` builds the mesh, data, model and state,
resumes from the latest checkpoint if there is one, then runs epochs of the
jitted step, evaluates on the whole test split after each epoch, logs, and
checkpoints. It returns the run's summary, also written to
WORKDIR/summary.json.
"""

from collections.abc import Callable
import dataclasses
import json
import os
import time
from typing import Any

from absl import logging
import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import Mesh
import ml_collections
import numpy as np
import optax

from icckd_jax.experiments import ablation_metrics
from icckd_jax.objective import cache as cache_lib
from icckd_jax.training import checkpoint
from icckd_jax.data import datasets
from icckd_jax.training import estimate
from icckd_jax.training import evaluate
from icckd_jax.data import input_pipeline
from icckd_jax.training import metric_writer
from icckd_jax import models
from icckd_jax.training import optim
from icckd_jax.training import parallel
from icckd_jax.objective import projection
from icckd_jax.training import reuse as reuse_lib
from icckd_jax.objective import teacher
from icckd_jax.errors import UserError
from icckd_jax.training.reuse import Reuse
from icckd_jax.training.train_state import TrainState, create_train_state

DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}
MARGIN_KINDS = ('prob', 'logit')
CACHE_STORES = ('features', 'images')


def compute_dtype(config: ml_collections.ConfigDict):
  if config.dtype not in DTYPES:
    raise UserError(f'config.dtype={config.dtype!r} is unknown; choose one of: '
                    + ', '.join(DTYPES))
  return DTYPES[config.dtype]


def prepare_workdir(workdir: str | None) -> str:
  """Creates the workdir and proves it writable, or a one-line UserError."""
  if not workdir:
    raise UserError('no workdir: pass --workdir=DIR (or --config.workdir=DIR)')
  probe = os.path.join(workdir, '.write_test')
  try:
    os.makedirs(workdir, exist_ok=True)
    with open(probe, 'w') as f:
      f.write('ok')
    os.remove(probe)
  except OSError as e:
    raise UserError(f'workdir {workdir} is not writable: {e.strerror}') from None
  return os.path.abspath(workdir)


def config_as_dict(config: ml_collections.ConfigDict) -> dict[str, Any]:
  return json.loads(config.to_json_best_effort())


def _check_objective(config: ml_collections.ConfigDict) -> None:
  icc, cache = config.icc, config.cache
  if icc.margin_kind not in MARGIN_KINDS:
    raise UserError(f'config.icc.margin_kind={icc.margin_kind!r} is unknown; '
                    f'choose one of: {", ".join(MARGIN_KINDS)}')
  if icc.head not in projection.HEADS:
    raise UserError(f'config.icc.head={icc.head!r} is unknown; choose one of: '
                    + ', '.join(projection.HEADS))
  if cache.store not in CACHE_STORES:
    raise UserError(f'config.cache.store={cache.store!r} is unknown; choose '
                    f'one of: {", ".join(CACHE_STORES)}')
  if cache.size < 0:
    raise UserError(f'config.cache.size={cache.size} must be >= 0')
  if icc.tau <= 0:
    raise UserError(f'config.icc.tau={icc.tau} must be > 0')


def _finite_or_stop(losses: np.ndarray, first_step: int,
                    ckpts: checkpoint.Checkpoints) -> None:
  bad = np.flatnonzero(~np.isfinite(losses))
  if bad.size:
    kept = ckpts.latest_epoch()
    kept = f'epoch {kept}' if kept is not None else 'none yet'
    raise UserError(f'training loss is {losses[bad[0]]} at step '
                    f'{first_step + bad[0]}; stopped without saving (last good '
                    f'checkpoint: {kept}). Lower config.learning_rate?')


def _mean_metrics(per_step: list[dict]) -> dict[str, float]:
  return {k: float(np.mean([m[k] for m in per_step])) for k in per_step[0]}


@dataclasses.dataclass(frozen=True)
class RunSetup:
  """Everything static that a run (teacher or student) is made of."""
  model: nn.Module
  tx: optax.GradientTransformation
  learning_rate_fn: optax.Schedule
  steps_per_epoch: int
  num_views: int
  init_state: Callable[[], TrainState]  # jit it with out_shardings to place it
  # (state, images, labels, step_args) -> (state, metrics)
  train_step: Callable
  # The step's last argument: the objective's traced scalars, and for a
  # student the teacher's variables (an argument, not a constant baked into
  # the compiled step).
  step_args: Any
  head: nn.Module | None = None
  # A student's teacher: (model, variables), for the agreement metric.
  reference: tuple[nn.Module, Any] | None = None

  def batches(self, config, split: input_pipeline.Split, mesh: Mesh,
              start_step: int):
    """The on-device batch stream of this run from `start_step` on."""
    return input_pipeline.train_batches(
        split, mesh, seed=config.seed, batch_size=config.batch_size,
        num_views=self.num_views, crop_padding=config.crop_padding,
        flip=config.flip, start_step=start_step)


def check_steps_per_epoch(config: ml_collections.ConfigDict,
                          dataset: datasets.Dataset) -> int:
  steps = input_pipeline.steps_per_epoch(len(dataset.train_labels), config.batch_size)
  if steps == 0:
    raise UserError(f'config.batch_size={config.batch_size} is larger than the '
                    f'{len(dataset.train_labels)} training examples')
  return steps


# Fields that never change what is compiled: traced values, bookkeeping.
RUN_ONLY_FIELDS = ('seed', 'workdir', 'log_every_steps', 'num_epochs',
                   'checkpoint_every_epochs', 'keep_checkpoints', 'mode')


def mesh_key(mesh: Mesh) -> str:
  return ','.join(str(d.id) for d in mesh.devices.flat)


def load_dataset(config: ml_collections.ConfigDict,
                 reuse: Reuse | None = None) -> datasets.Dataset:
  return reuse_lib.get(reuse, 'dataset', reuse_lib.config_key(config.dataset),
                       lambda: datasets.load(config.dataset))


def build_teacher(config: ml_collections.ConfigDict, dataset: datasets.Dataset,
                  mesh: Mesh, reuse: Reuse | None = None) -> RunSetup:
  """Validates `config` and builds the model, optimiser and jitted step.

  With `reuse`, a step already built for a config that differs only in
  traced values (δ, τ, λ ≠ 0) or the seed is shared, compiled once.
  """
  _check_objective(config)
  dtype = compute_dtype(config)
  parallel.check_batch_size(config.batch_size, mesh, 'config.batch_size')
  steps_per_epoch = check_steps_per_epoch(config, dataset)
  input_shape = dataset.train_images.shape[1:]
  model = models.create_model(config.model, dataset.num_classes, dtype=dtype,
                              bn_axis_name=parallel.DATA)
  icc_on = config.icc.lam != 0
  head = (projection.MLPHead(config.icc.head_dim, dtype=dtype)
          if icc_on and config.icc.head == 'mlp' else None)
  learning_rate_fn = optim.create_learning_rate_fn(config, steps_per_epoch)
  tx = optim.create_optimizer(config, learning_rate_fn)

  def init_state():
    params, batch_stats = teacher.init_params(
        model, head, jax.random.key(config.seed), input_shape)
    # No objective or cache.size = 0: no cache at all (Orbax cannot store
    # the zero-size arrays of an empty ring).
    cache = None
    if icc_on and config.cache.size > 0:
      if config.cache.store == 'features':
        item_shape = (teacher.embedding_dim(model, head, params, batch_stats,
                                            input_shape),)
        item_dtype = jnp.float32
      else:
        item_shape, item_dtype = input_shape, jnp.uint8
      cache = cache_lib.create(config.cache.size, config.batch_size,
                               item_shape, item_dtype)
    return create_train_state(params, batch_stats, tx, cache)

  num_views = 2 if icc_on else 1
  step_key = reuse_lib.config_key(
      config, RUN_ONLY_FIELDS + ('icc.lam', 'icc.tau', 'icc.delta'))
  train_step = reuse_lib.get(
      reuse, 'teacher_step', f'{step_key}|{num_views}|{mesh_key(mesh)}',
      lambda: teacher.make_train_step(
          model, head, tx, mesh, mean=dataset.mean, std=dataset.std,
          dtype=dtype, num_views=num_views,
          margin_kind=config.icc.margin_kind, cache_store=config.cache.store))
  return RunSetup(
      model=model, head=head, tx=tx, learning_rate_fn=learning_rate_fn,
      steps_per_epoch=steps_per_epoch, num_views=num_views,
      init_state=init_state, train_step=train_step,
      step_args=teacher.hyperparameters(config.icc.lam, config.icc.tau,
                                        config.icc.delta))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       reuse: Reuse | None = None) -> dict[str, Any]:
  """Trains the teacher of `config` in `workdir`, resuming if it can."""
  workdir = prepare_workdir(workdir)
  mesh = parallel.make_mesh(config.get('num_devices') or None)
  parallel.check_batch_size(config.batch_size, mesh, 'config.batch_size')
  dataset = load_dataset(config, reuse)
  return fit(config, workdir, build_teacher(config, dataset, mesh, reuse),
             dataset, mesh, reuse=reuse)


def fit(config: ml_collections.ConfigDict, workdir: str, setup: RunSetup,
        dataset: datasets.Dataset, mesh: Mesh,
        summary_extra: dict[str, Any] | None = None,
        reuse: Reuse | None = None) -> dict[str, Any]:
  """The train loop shared by teachers and students: resume, train, evaluate
  after each epoch, log, checkpoint; returns the summary (also written to
  WORKDIR/summary.json, with `summary_extra` added)."""
  steps_per_epoch = setup.steps_per_epoch
  total_steps = config.num_epochs * steps_per_epoch
  learning_rate_fn = setup.learning_rate_fn

  ckpts = checkpoint.Checkpoints(workdir, keep=config.keep_checkpoints)
  start_epoch, best = 0, {'top1': -1.0, 'epoch': 0}
  if ckpts.latest_epoch() is not None:
    state, meta = ckpts.restore(
        checkpoint.abstract_like(jax.eval_shape(setup.init_state), mesh))
    start_epoch, best = meta['epoch'], meta['best']
    logging.info('Resumed from %s at epoch %d.', workdir, start_epoch)
  else:
    state = jax.jit(setup.init_state,
                    out_shardings=parallel.replicated(mesh))()
  with open(os.path.join(workdir, 'config.json'), 'w') as f:
    json.dump(config_as_dict(config), f, indent=2)

  train_split, test_split = input_pipeline.to_device(dataset, mesh)
  train_step, step_args = setup.train_step, setup.step_args
  reference = setup.reference[0] if setup.reference else None
  evaluate_fn = reuse_lib.get(
      reuse, 'eval',
      f'{setup.model}|{config.eval_batch_size}|'
      f'{reuse_lib.config_key(config.dataset)}|{mesh_key(mesh)}|{reference}',
      lambda: evaluate.make_eval_fn(
          setup.model, mesh, mean=dataset.mean, std=dataset.std,
          dtype=compute_dtype(config), batch_size=config.eval_batch_size,
          reference=reference))
  reference_variables = setup.reference[1] if setup.reference else None
  batches = setup.batches(config, train_split, mesh,
                          start_epoch * steps_per_epoch)

  writer = metric_writer.MetricWriter(workdir, start_epoch * steps_per_epoch)
  progress = metric_writer.Progress(total_steps, start_epoch * steps_per_epoch,
                                    config.batch_size)
  cache_bytes = cache_lib.nbytes(state.cache) if state.cache is not None else 0
  clock = estimate.RunClock(config.batch_size, steps_per_epoch, total_steps,
                            start_epoch * steps_per_epoch,
                            reuse.sweep_clock if reuse else None)
  record, memory = {}, {}
  for epoch in range(start_epoch, config.num_epochs):
    epoch_start = time.perf_counter()
    per_step, logged = [], 0
    window_start = time.perf_counter()
    for i in range(steps_per_epoch):
      images, labels = next(batches)
      if not memory:
        # Compiling ahead shares XLA's cache with the call that follows, so
        # the memory analysis costs a trace, not a second compilation.
        memory = ablation_metrics.compiled_memory(
            train_step.lower(state, images, labels, step_args).compile())
        memory['cache_bytes'] = cache_bytes
        if epoch == 0:  # Once per run, also when it resumes later.
          writer.write('memory', 0, memory)
      state, metrics = train_step(state, images, labels, step_args)
      clock.after_step((epoch - start_epoch) * steps_per_epoch + i, metrics)
      per_step.append(metrics)
      step = epoch * steps_per_epoch + i + 1
      if step % config.log_every_steps == 0 or i == steps_per_epoch - 1:
        window = jax.device_get(per_step[logged:])
        _finite_or_stop(np.array([m['loss'] for m in window]),
                        step - len(window) + 1, ckpts)
        step_time = (time.perf_counter() - window_start) / len(window)
        values = _mean_metrics(window)
        values.update(learning_rate=float(learning_rate_fn(step - 1)),
                      step_time=step_time,
                      images_per_second=config.batch_size / step_time)
        writer.write('train', step, values)
        progress.report(step, epoch, config.num_epochs,
                        {'loss': values['loss'], 'acc': values['accuracy']},
                        clock.note())
        logged, window_start = len(per_step), time.perf_counter()

    per_step = jax.device_get(per_step)
    losses = np.array([m['loss'] for m in per_step])
    test = evaluate_fn({'params': state.params['model'],
                        'batch_stats': state.batch_stats}, test_split,
                       reference_variables)
    epoch_time = time.perf_counter() - epoch_start
    record = {'epoch': epoch + 1, **_mean_metrics(per_step),
              'loss_var': float(np.var(losses)),
              'step_losses': losses.tolist(),
              **{f'test_{k}': v for k, v in test.items()},
              'epoch_time': epoch_time,
              'images_per_second': steps_per_epoch * config.batch_size / epoch_time,
              'cache_bytes': cache_bytes}
    writer.write('epoch', step, record)
    clock.after_epoch()
    logging.info('epoch %d/%d: test top-1 %.4f top-5 %.4f, train loss %.4f%s',
                 epoch + 1, config.num_epochs, test['top1'], test['top5'],
                 record['loss'],
                 f", agreement with teacher {test['agreement']:.4f}"
                 if 'agreement' in test else '')

    improved = test['top1'] > best['top1']
    if improved:
      best = {'top1': test['top1'], 'epoch': epoch + 1}
    is_last = epoch + 1 == config.num_epochs
    regular = (epoch + 1) % config.checkpoint_every_epochs == 0 or is_last
    if regular or improved:
      ckpts.save(epoch + 1, state, {'epoch': epoch + 1, 'best': best},
                 config_as_dict(config), last=regular, best=improved)

  ckpts.close()
  writer.close()
  if not record:  # Restarted after the last epoch: nothing left to train.
    record = metric_writer.read_records(workdir, 'epoch')[-1]
  summary = {'final_top1': record.get('test_top1'),
             'best_top1': best['top1'], 'best_epoch': best['epoch'],
             'epochs': config.num_epochs, 'steps': total_steps,
             'workdir': workdir,
             'compiled_memory': memory,
             'peak_device_bytes': ablation_metrics.peak_device_memory(),
             **(summary_extra or {})}
  if jax.process_index() == 0:
    with open(os.path.join(workdir, 'summary.json'), 'w') as f:
      json.dump(summary, f, indent=2)
  logging.info('Done: last top-1 %s, best top-1 %.4f at epoch %d.',
               summary['final_top1'], best['top1'], best['epoch'])
  return summary
