"""Training a teacher: the loop, reading top to bottom (flax imagenet style).

`train_and_evaluate(config, workdir)` builds the mesh, data, model and state,
resumes from the latest checkpoint if there is one, then runs epochs of the
jitted step, evaluates on the whole test split after each epoch, logs, and
checkpoints. It returns the run's summary, also written to
WORKDIR/summary.json.
"""

from collections.abc import Callable
import contextlib
import dataclasses
import errno
import json
import os
import signal
import threading
import time
from typing import Any

from absl import logging
import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec
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
from icckd_jax.objective.losses import EMPTY_ANCHORS
from icckd_jax.training import reuse as reuse_lib
from icckd_jax.training import validate
from icckd_jax.training import workdir_lock
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


def require_workdir(workdir: str | None) -> str:
  if not workdir:
    raise UserError('no workdir: pass --workdir=DIR (or --config.workdir=DIR)')
  return workdir


def prepare_workdir(workdir: str | None) -> str:
  """Creates the workdir and proves it writable, or a one-line UserError."""
  require_workdir(workdir)
  probe = os.path.join(workdir, f'.write_test.{os.getpid()}')
  try:
    os.makedirs(workdir, exist_ok=True)
    with open(probe, 'w') as f:
      f.write('ok')
    os.remove(probe)
  except OSError as e:
    # A full disk may fail the write after the file was created.
    with contextlib.suppress(OSError):
      os.remove(probe)
    raise UserError(f'workdir {workdir} is not writable: {e.strerror}') from None
  return os.path.abspath(workdir)


def config_as_dict(config: ml_collections.ConfigDict) -> dict[str, Any]:
  return json.loads(config.to_json_best_effort())


def check_objective(config: ml_collections.ConfigDict) -> None:
  """The intra-class objective's choices and ranges (a teacher config)."""
  icc, cache = config.icc, config.cache
  if icc.margin_kind not in MARGIN_KINDS:
    raise UserError(f'config.icc.margin_kind={icc.margin_kind!r} is unknown; '
                    f'choose one of: {", ".join(MARGIN_KINDS)}')
  if icc.head not in projection.HEADS:
    raise UserError(f'config.icc.head={icc.head!r} is unknown; choose one of: '
                    + ', '.join(projection.HEADS))
  if icc.empty_anchors not in EMPTY_ANCHORS:
    raise UserError(f'config.icc.empty_anchors={icc.empty_anchors!r} is '
                    f'unknown; choose one of: {", ".join(EMPTY_ANCHORS)}')
  if cache.store not in CACHE_STORES:
    raise UserError(f'config.cache.store={cache.store!r} is unknown; choose '
                    f'one of: {", ".join(CACHE_STORES)}')
  if cache.size < 0:
    raise UserError(f'config.cache.size={cache.size} must be >= 0')
  if icc.tau <= 0:
    raise UserError(f'config.icc.tau={icc.tau} must be > 0')


# A run has diverged when a step's loss exceeds this many times the loss of
# its first step (computed before any update, so never itself diverged),
# even while it is finite: a healthy run's loss falls below its start, and
# a diverging one passes 100x within a few steps on its way to 1e30, inf or
# NaN, often with NaN already in its BatchNorm statistics.
LOSS_EXPLOSION_FACTOR = 100.0


class Diverged(UserError):
  """The loss or the state is not finite, or the loss has exploded."""


class Preempted(Exception):
  """SIGTERM or SIGINT arrived; the run saved its state and stopped."""

  def __init__(self, signum: int, message: str):
    super().__init__(message)
    self.signum = signum


def _kept(ckpts: checkpoint.Checkpoints) -> str:
  epoch = ckpts.latest_epoch()
  return f'epoch {epoch}' if epoch is not None else 'none yet'


def check_losses(losses: np.ndarray, first_step: int,
                 reference_loss: float, ckpts: checkpoint.Checkpoints) -> None:
  """Raises Diverged when a step loss of `losses` ([n], the steps from
  `first_step` on) is not finite or above LOSS_EXPLOSION_FACTOR times
  `reference_loss`, the run's first step loss."""
  limit = LOSS_EXPLOSION_FACTOR * abs(reference_loss)
  bad = np.flatnonzero(~np.isfinite(losses) | (losses > limit))
  if bad.size:
    loss = losses[bad[0]]
    why = ('' if not np.isfinite(loss) else
           f' (over {LOSS_EXPLOSION_FACTOR:g}x the first step\'s '
           f'{reference_loss:.4g})')
    raise Diverged(f'training diverged: loss {loss:.4g} at step '
                   f'{first_step + bad[0]}{why}; stopped without saving, every '
                   f'checkpoint kept (last good: {_kept(ckpts)}). Lower '
                   'config.learning_rate?')


@jax.jit
def _all_finite(tree) -> jax.Array:
  """[] bool: every floating-point element of `tree` is finite."""
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
            if jnp.issubdtype(x.dtype, jnp.inexact)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.bool_(True)


def check_state(state: TrainState, step: int,
                ckpts: checkpoint.Checkpoints) -> None:
  """Raises Diverged unless the parameters, BatchNorm statistics, optimiser
  state and cache of `state` are all finite: the losses can stay finite
  while BatchNorm statistics are already NaN."""
  if not bool(_all_finite(state)):
    bad = [jax.tree_util.keystr(path) for path, x in
           jax.tree_util.tree_leaves_with_path(state)
           if jnp.issubdtype(x.dtype, jnp.inexact)
           and not bool(jnp.all(jnp.isfinite(x)))]
    raise Diverged(f'training diverged: non-finite values in {len(bad)} state '
                   f'arrays at step {step} (first: {bad[0]}); stopped without '
                   f'saving, every checkpoint kept (last good: {_kept(ckpts)}).'
                   ' Lower config.learning_rate?')


class StopRequest:
  """Turns SIGTERM (what SLURM and cloud preemption send) and SIGINT into a
  request to stop at the next step boundary; a context manager.

  A second signal interrupts at once (KeyboardInterrupt), for a user who
  will not wait for the step. Off the main thread (where Python delivers
  signals) it does nothing.
  """

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.signum = 0
    self._previous = {}

  def _handle(self, signum, frame):
    del frame
    if self.signum:
      raise KeyboardInterrupt
    self.signum = signum
    logging.warning('%s received: saving at the next step boundary.',
                    signal.Signals(signum).name)

  def __enter__(self) -> 'StopRequest':
    if threading.current_thread() is threading.main_thread():
      for sig in self.SIGNALS:
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def __exit__(self, *exc) -> None:
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    self._previous.clear()

  def requested(self) -> int:
    """The signal to stop for, or 0; on several processes, any process's
    signal stops all of them at the same step."""
    if jax.process_count() == 1:
      return self.signum
    return int(np.max(multihost_utils.process_allgather(
        np.int32(self.signum))))


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
  check_objective(config)
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
          margin_kind=config.icc.margin_kind, cache_store=config.cache.store,
          empty_anchors=config.icc.empty_anchors))
  return RunSetup(
      model=model, head=head, tx=tx, learning_rate_fn=learning_rate_fn,
      steps_per_epoch=steps_per_epoch, num_views=num_views,
      init_state=init_state, train_step=train_step,
      step_args=teacher.hyperparameters(config.icc.lam, config.icc.tau,
                                        config.icc.delta))


def check_step_memory(config: ml_collections.ConfigDict, setup: RunSetup,
                      dataset: datasets.Dataset, mesh: Mesh) -> dict[str, int]:
  """Compiles the train step ahead, from abstract inputs, and refuses one
  that needs more memory than the devices have, before anything is written.

  The compilation is the one the first step reuses (same program, same
  shardings); returns its memory analysis (`compiled_memory`), which the
  run then logs.
  """
  state = checkpoint.abstract_like(jax.eval_shape(setup.init_state), mesh)
  images = jax.ShapeDtypeStruct(
      (setup.num_views, config.batch_size, *dataset.train_images.shape[1:]),
      jnp.uint8, sharding=NamedSharding(mesh, PartitionSpec(None,
                                                             parallel.DATA)))
  labels = jax.ShapeDtypeStruct((config.batch_size,), jnp.int32,
                                sharding=parallel.batch_sharded(mesh))
  memory = ablation_metrics.compiled_memory(setup.train_step.lower(
      state, images, labels, setup.step_args).compile())
  need = memory.get('total_bytes')
  devices = list(mesh.devices.flat)
  available = ablation_metrics.available_memory(devices[0])
  if not need or not available:
    return memory
  if devices[0].platform == 'cpu':  # Emulated devices share the host's RAM.
    need *= sum(d.process_index == jax.process_index() for d in devices)
  if need > available:
    raise UserError(
        f'the train step needs {need / 2**30:.1f} GiB ({config.model}, batch '
        f'{config.batch_size} of {tuple(dataset.train_images.shape[1:])} '
        f'images) but {devices[0].platform} has {available / 2**30:.1f} GiB '
        'available; lower config.batch_size or the image size, or use '
        'more devices')
  return memory


@contextlib.contextmanager
def hold_workdir(workdir: str):
  """One run per workdir: process 0 holds WORKDIR's lock (the other
  processes of a multi-host run share it) while the body runs."""
  if jax.process_index() != 0:
    yield
    return
  with workdir_lock.WorkdirLock(workdir):
    yield


def checked_mesh(config: ml_collections.ConfigDict, workdir: str | None):
  """The run's mesh, after every check of `config` (and of the run already in
  `workdir`) that needs no data: a rejected run writes nothing."""
  require_workdir(workdir)
  validate.check_config(config)
  validate.check_resumable(config, workdir)
  mesh = parallel.make_mesh(config.get('num_devices') or None)
  parallel.check_batch_size(config.batch_size, mesh, 'config.batch_size')
  parallel.check_batch_size(config.eval_batch_size, mesh,
                            'config.eval_batch_size')
  return mesh


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       reuse: Reuse | None = None) -> dict[str, Any]:
  """Trains the teacher of `config` in `workdir`, resuming if it can.

  Every check that can reject the config runs before the workdir is
  created or written.
  """
  mesh = checked_mesh(config, workdir)
  dataset = load_dataset(config, reuse)
  setup = build_teacher(config, dataset, mesh, reuse)
  memory = check_step_memory(config, setup, dataset, mesh)
  workdir = prepare_workdir(workdir)
  with hold_workdir(workdir):
    return fit(config, workdir, setup, dataset, mesh, reuse=reuse,
               step_memory=memory)


def _write_config(workdir: str, config: ml_collections.ConfigDict) -> None:
  """WORKDIR/config.json, replaced atomically, beside a checkpoint that has
  just been saved: a rejected or diverged run never rewrites it."""
  if jax.process_index() != 0:
    return
  path = os.path.join(workdir, validate.CONFIG_FILE)
  with open(path + '.tmp', 'w') as f:
    json.dump(config_as_dict(config), f, indent=2)
  os.replace(path + '.tmp', path)


def _restore(ckpts: checkpoint.Checkpoints, abstract_state,
             steps_per_epoch: int):
  """(state, meta) of the newest intact checkpoint, a preempted run's if it
  is newer than the last epoch's; None for a new run."""
  epochs = ckpts.latest_steps('last')
  preempted = ckpts.latest_steps('preempted')
  if preempted and (not epochs or
                    preempted[-1] > epochs[-1] * steps_per_epoch):
    restored = ckpts.restore_newest_intact(abstract_state, 'preempted')
    if restored is not None:
      return restored[:2]
  restored = ckpts.restore_newest_intact(abstract_state, 'last')
  return None if restored is None else restored[:2]


def _partial_epoch(per_step: list[dict], logged: int) -> dict[str, Any]:
  """The metrics of an epoch's steps so far, exactly (float32 values are
  exact as JSON floats), so that a resumed epoch's record is identical."""
  per_step = jax.device_get(per_step)
  keys = list(per_step[0]) if per_step else []
  return {'logged': logged,
          'metrics': {k: [float(m[k]) for m in per_step] for k in keys},
          'dtypes': {k: str(np.asarray(per_step[0][k]).dtype) for k in keys}}


def _unpack_partial(partial: dict[str, Any]) -> tuple[list[dict], int]:
  metrics, dtypes = partial['metrics'], partial['dtypes']
  n = len(next(iter(metrics.values()))) if metrics else 0
  per_step = [{k: np.asarray(metrics[k][i], dtypes[k]) for k in metrics}
              for i in range(n)]
  return per_step, partial['logged']


def _header(config, setup: RunSetup, dataset: datasets.Dataset, mesh: Mesh,
            abstract_state, start_step: int) -> None:
  """What the first silent seconds are for, and what the run is."""
  params = sum(int(np.prod(x.shape)) for x in
               jax.tree.leaves(abstract_state.params))
  devices = mesh.devices.flat[0]
  logging.info(
      'Run: %s %s on %d train / %d test images %s, %d classes; %d steps per '
      'epoch x %d epochs, batch %d; %s parameters; %d %s device(s) in %d '
      'process(es), compute dtype %s; %s.', config.get('mode', 'teacher'),
      config.model, len(dataset.train_labels), len(dataset.test_labels),
      'x'.join(map(str, dataset.train_images.shape[1:])), dataset.num_classes,
      setup.steps_per_epoch, config.num_epochs, config.batch_size,
      f'{params:,}', mesh.devices.size, devices.platform, jax.process_count(),
      config.dtype,
      f'resuming at step {start_step}' if start_step else 'a new run')


def fit(config: ml_collections.ConfigDict, workdir: str, setup: RunSetup,
        dataset: datasets.Dataset, mesh: Mesh,
        summary_extra: dict[str, Any] | None = None,
        reuse: Reuse | None = None,
        step_memory: dict[str, int] | None = None) -> dict[str, Any]:
  """The train loop shared by teachers and students: resume, train, evaluate
  after each epoch, log, checkpoint; returns the summary (also written to
  WORKDIR/summary.json, with `summary_extra` added).

  Nothing is saved before the whole new state and the step losses are
  checked (`check_state`, `check_losses`): a diverged run raises Diverged
  and leaves every checkpoint and config.json as they were. SIGTERM or
  SIGINT save the state at the next step boundary into WORKDIR/preempted
  and raise Preempted; the rerun resumes there, bit for bit.
  """
  ckpts = checkpoint.Checkpoints(workdir, keep=config.keep_checkpoints)
  try:
    try:
      return _fit(config, workdir, setup, dataset, mesh, ckpts,
                  summary_extra, reuse, step_memory)
    finally:
      ckpts.close()
  except Exception as e:  # pylint: disable=broad-except
    if not _disk_full(e):
      raise
    checkpoint.remove_partial_saves(workdir)
    raise UserError(f'the disk holding {workdir} is full (no space left while '
                    'writing); every checkpoint saved before is intact: free '
                    'space and rerun the same command to resume') from None


def _disk_full(error: BaseException | None) -> bool:
  """Whether `error`, or an error it was raised from or during, is a full
  disk (Orbax and TensorStore wrap the OSError in their own types)."""
  while error is not None:
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
      return True
    if 'No space left on device' in str(error):
      return True
    error = error.__cause__ or error.__context__
  return False


def _fit(config, workdir, setup, dataset, mesh, ckpts, summary_extra, reuse,
         step_memory=None):
  steps_per_epoch = setup.steps_per_epoch
  total_steps = config.num_epochs * steps_per_epoch
  learning_rate_fn = setup.learning_rate_fn

  abstract_state = checkpoint.abstract_like(jax.eval_shape(setup.init_state),
                                            mesh)
  restored = _restore(ckpts, abstract_state, steps_per_epoch)
  per_step, logged = [], 0
  if restored is not None:
    state, meta = restored
    start_step = meta.get('step', meta['epoch'] * steps_per_epoch)
    best, history = meta['best'], meta.get('history')
    reference_loss = meta.get('reference_loss')
    if meta.get('partial'):
      per_step, logged = _unpack_partial(meta['partial'])
    logging.info('Resumed from %s at step %d (epoch %d).', workdir,
                 start_step, meta['epoch'])
  else:
    state = jax.jit(setup.init_state,
                    out_shardings=parallel.replicated(mesh))()
    start_step, best, history, reference_loss = 0, {'top1': -1.0,
                                                    'epoch': 0}, [], None
  _header(config, setup, dataset, mesh, abstract_state, start_step)
  start_epoch, first_step_in_epoch = divmod(start_step, steps_per_epoch)

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
  batches = setup.batches(config, train_split, mesh, start_step)

  writer = metric_writer.MetricWriter(
      workdir, start_step if restored is not None else None,
      epoch_records=history)
  history = list(history or [])
  progress = metric_writer.Progress(total_steps, start_step, config.batch_size)
  cache_bytes = cache_lib.nbytes(state.cache) if state.cache is not None else 0
  input_shape = list(dataset.train_images.shape[1:])

  def meta(epoch: int, step: int, **extra) -> dict[str, Any]:
    return {'epoch': epoch, 'step': step, 'best': best,
            'reference_loss': reference_loss, 'input_shape': input_shape,
            'history': history, **extra}

  clock = estimate.RunClock(config.batch_size, steps_per_epoch, total_steps,
                            start_step, reuse.sweep_clock if reuse else None)
  record, memory, compiled = {}, dict(step_memory or {}), False
  device_bytes = []  # sampled bytes in use: this run's, not the process's
  with StopRequest() as stop:
    for epoch in range(start_epoch, config.num_epochs):
      epoch_start = time.perf_counter()
      if epoch != start_epoch:
        per_step, logged = [], 0
      window_start = time.perf_counter()
      first = first_step_in_epoch if epoch == start_epoch else 0
      for i in range(first, steps_per_epoch):
        step = epoch * steps_per_epoch + i  # steps taken so far
        signum = stop.requested()
        if signum:
          window = jax.device_get(per_step[logged:])
          if window:
            check_losses(np.array([m['loss'] for m in window]),
                         step - len(window) + 1, reference_loss, ckpts)
          check_state(state, step, ckpts)
          ckpts.save_preempted(step, state, meta(
              epoch, step, partial=_partial_epoch(per_step, logged)),
                               config_as_dict(config))
          _write_config(workdir, config)
          writer.close()
          raise Preempted(signum, f'stopped by {signal.Signals(signum).name} '
                          f'at step {step}; saved it in {workdir}/preempted. '
                          'Rerun the same command to resume.')
        images, labels = next(batches)
        if not compiled:
          logging.info('Compiling the train step...')
          # Compiling ahead shares XLA's cache with the call that follows, so
          # the memory analysis costs a trace, not a second compilation.
          if not memory:
            memory = ablation_metrics.compiled_memory(
                train_step.lower(state, images, labels, step_args).compile())
          memory['cache_bytes'] = cache_bytes
          compiled = True
          if start_step == 0:  # Once per run, also when it resumes later.
            writer.write('memory', 0, memory)
        state, metrics = train_step(state, images, labels, step_args)
        clock.after_step(step - start_step, metrics)
        per_step.append(metrics)
        step += 1
        if reference_loss is None:
          reference_loss = float(metrics['loss'])
        if step % config.log_every_steps == 0 or i == steps_per_epoch - 1:
          window = jax.device_get(per_step[logged:])
          check_losses(np.array([m['loss'] for m in window]),
                       step - len(window) + 1, reference_loss, ckpts)
          step_time = (time.perf_counter() - window_start) / len(window)
          values = _mean_metrics(window)
          values.update(learning_rate=float(learning_rate_fn(step - 1)),
                        step_time=step_time,
                        images_per_second=config.batch_size / step_time)
          writer.write('train', step, values)
          device_bytes.append(ablation_metrics.device_bytes_in_use())
          progress.report(step, epoch, config.num_epochs,
                          {'loss': values['loss'], 'acc': values['accuracy']},
                          clock.note())
          logged, window_start = len(per_step), time.perf_counter()

      check_state(state, step, ckpts)
      per_step = jax.device_get(per_step)
      losses = np.array([m['loss'] for m in per_step])
      is_last = epoch + 1 == config.num_epochs
      # Evaluation every `eval_every_epochs` and always at the last epoch,
      # whose figures are the run's headline.
      evaluated = is_last or (epoch + 1) % config.eval_every_epochs == 0
      test = evaluate_fn({'params': state.params['model'],
                          'batch_stats': state.batch_stats}, test_split,
                         reference_variables) if evaluated else {}
      epoch_time = time.perf_counter() - epoch_start
      record = {'epoch': epoch + 1, **_mean_metrics(per_step),
                'loss_var': float(np.var(losses)),
                'step_losses': losses.tolist(),
                # CE alone: the one loss every setting shares (the total
                # differs by λ·L between settings).
                'step_ce': [float(m['ce']) for m in per_step if 'ce' in m],
                **{f'test_{k}': v for k, v in test.items()},
                'epoch_time': epoch_time,
                'images_per_second': steps_per_epoch * config.batch_size / epoch_time,
                'cache_bytes': cache_bytes}
      history.append(writer.write('epoch', step, record))
      clock.after_epoch()
      if evaluated:
        logging.info('epoch %d/%d: test top-1 %.4f top-5 %.4f, train loss '
                     '%.4f%s', epoch + 1, config.num_epochs, test['top1'],
                     test['top5'], record['loss'],
                     f", agreement with teacher {test['agreement']:.4f}"
                     if 'agreement' in test else '')
      else:
        logging.info('epoch %d/%d: train loss %.4f, accuracy %.4f',
                     epoch + 1, config.num_epochs, record['loss'],
                     record['accuracy'])

      improved = evaluated and test['top1'] > best['top1']
      if improved:
        best = {'top1': test['top1'], 'epoch': epoch + 1}
      regular = (epoch + 1) % config.checkpoint_every_epochs == 0 or is_last
      if regular or improved:
        ckpts.save(epoch + 1, state, meta(epoch + 1, step),
                   config_as_dict(config), last=regular, best=improved)
        _write_config(workdir, config)

  writer.close()
  if not record:  # Restarted after the last epoch: nothing left to train.
    record = history[-1] if history else {}
  summary = {'final_top1': record.get('test_top1'),
             'best_top1': best['top1'], 'best_epoch': best['epoch'],
             'epochs': config.num_epochs, 'steps': total_steps,
             'workdir': workdir,
             'compiled_memory': memory,
             # Max of the samples taken during this run (None on CPU).
             'peak_device_bytes': max((b for b in device_bytes
                                       if b is not None), default=None),
             **(summary_extra or {})}
  if jax.process_index() == 0:
    # Whole or not at all: a finished run is recognised by this file.
    path = os.path.join(workdir, 'summary.json')
    with open(f'{path}.tmp', 'w') as f:
      json.dump(summary, f, indent=2)
    os.replace(f'{path}.tmp', path)
  logging.info('Done: last top-1 %s, best top-1 %.4f at epoch %d.',
               summary['final_top1'], best['top1'], best['epoch'])
  return summary
