"""The student: distilled from a restored, read-only teacher (docs/method.md §4).

The teacher is a run of this project (`config.teacher.workdir`: its
architecture and data set come from the config saved with its checkpoint) or
a PyTorch checkpoint of the CIFAR-100 KD benchmark (`config.teacher.pth` with
`config.teacher.model`), whose input is normalised with the benchmark's
statistics rather than the data set's. Its variables are an argument of the
jitted, data-parallel step (never a constant baked into it, never part of the
student's state), run in inference mode under stop_gradient, and are never
written anywhere.
"""

import dataclasses
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
import optax

from icckd_jax.data import augment
from icckd_jax.training import checkpoint
from icckd_jax.data import datasets
from icckd_jax import distillers
from icckd_jax.training import evaluate
from icckd_jax.data import input_pipeline
from icckd_jax import models
from icckd_jax.training import optim
from icckd_jax.training import parallel
from icckd_jax.training import reuse as reuse_lib
from icckd_jax.training import train
from icckd_jax.errors import UserError
from icckd_jax.interop import torch_import
from icckd_jax.training.reuse import Reuse
from icckd_jax.training.train_state import create_train_state

DATA = parallel.DATA
TEACHER_EVAL_FILE = 'teacher_eval.json'
_TRACED = ('teacher.workdir',) + tuple(f'distill.{name}' for name in
                ('temperature', 'gamma', 'alpha', 'beta', 'w_dist', 'w_angle'))


def hyperparameters(distill: ml_collections.ConfigDict) -> dict[str, jax.Array]:
  """The distillation weights as traced scalars."""
  return {name: jnp.float32(distill[name]) for name in
          ('temperature', 'gamma', 'alpha', 'beta', 'w_dist', 'w_angle')}


def make_train_step(student: nn.Module, teacher: nn.Module, distill_fn,
                    tx: optax.GradientTransformation, mesh: Mesh, *, mean, std,
                    dtype, teacher_mean=None, teacher_std=None):
  """Builds step(state, images, labels, args) -> (state, metrics).

  images: [1, B, H, W, C] uint8 and labels [B], sharded over `data`;
  args = {'teacher': the teacher's {'params', 'batch_stats'}, 'hp':
  `hyperparameters(...)`}, replicated. The state is donated, the teacher's
  variables are not. The student's input is normalised with `mean`, `std`
  ([C], in [0, 255] units), the teacher's with `teacher_mean`,
  `teacher_std` when given (a teacher trained with other statistics).
  """

  def gather(x):
    return lax.all_gather(x, DATA, tiled=True)

  def per_device(state, images, labels, args):
    x = augment.normalize(images[0], mean, std, dtype)
    x_teacher = x if teacher_mean is None else augment.normalize(
        images[0], teacher_mean, teacher_std, dtype)
    t_logits, t_features = teacher.apply(args['teacher'], x_teacher,
                                         train=False)
    teacher_out = distillers.Outputs(
        lax.stop_gradient(t_logits.astype(jnp.float32)),
        lax.stop_gradient(t_features.astype(jnp.float32)))

    def loss_fn(params):
      (logits, features), new_model_state = student.apply(
          {'params': params['model'], 'batch_stats': state.batch_stats},
          x, train=True, mutable=['batch_stats'])
      loss, parts = distill_fn(distillers.Outputs(logits, features),
                               teacher_out, labels, args['hp'], gather)
      # The logged loss is the differentiated one, whatever the distiller.
      return loss, (new_model_state, {**parts, 'loss': loss}, logits)

    grads, (new_model_state, parts, logits) = jax.grad(
        loss_fn, has_aux=True)(state.params)
    grads = lax.pmean(grads, DATA)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    # RKD is already global; the per-example terms are local means.
    metrics = {k: lax.pmean(v, DATA) for k, v in parts.items()}
    prediction = jnp.argmax(logits, -1)
    metrics['accuracy'] = lax.pmean(
        jnp.mean((prediction == labels).astype(jnp.float32)), DATA)
    metrics['agreement'] = lax.pmean(jnp.mean(
        (prediction == jnp.argmax(teacher_out.logits, -1)).astype(
            jnp.float32)), DATA)
    return state.replace(step=state.step + 1, params=params,
                         opt_state=opt_state,
                         batch_stats=new_model_state['batch_stats']), metrics

  step = parallel.shard_map(per_device, mesh,
                            in_specs=(P(), P(None, DATA), P(DATA), P()),
                            out_specs=(P(), P()))
  return jax.jit(step, donate_argnums=(0,))


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
    raw = x.astype(jnp.float32) * jnp.asarray(self.std) + jnp.asarray(
        self.mean)
    x_model = (raw - jnp.asarray(self.model_mean)) / jnp.asarray(
        self.model_std)
    return self.model.apply(variables, x_model.astype(x.dtype), **kwargs)


def teacher_normalization(teacher_config: ml_collections.ConfigDict,
                          dataset: datasets.Dataset):
  """(mean, std) [C] in [0, 255] units that the teacher's input is normalised
  with: a PyTorch teacher's training statistics, else the data set's."""
  if teacher_config.get('input_mean') is not None:
    return (np.asarray(teacher_config.input_mean, np.float32),
            np.asarray(teacher_config.input_std, np.float32))
  return dataset.mean, dataset.std


def _load_pytorch_teacher(config: ml_collections.ConfigDict, mesh: Mesh):
  """(teacher config, variables) of the `.pth` file config.teacher.pth."""
  path, model = config.teacher.pth, config.teacher.get('model')
  if config.teacher.get('workdir'):
    raise UserError(f'config.teacher.pth={path!r} and config.teacher.workdir='
                    f'{config.teacher.workdir!r} are both set; the teacher is '
                    'one or the other')
  torch_import.check_source(path, model, 'config.teacher.pth',
                            'config.teacher.model')
  variables = torch_import.load_checkpoint(path, model)
  mean, std = torch_import.benchmark_normalization()
  saved = ml_collections.ConfigDict({
      'model': model, 'pth': path, 'input_mean': mean.tolist(),
      'input_std': std.tolist()})
  return saved, parallel.put_replicated(variables, mesh)


def load_teacher(config: ml_collections.ConfigDict, mesh: Mesh):
  """(teacher config, its variables replicated on `mesh`).

  The teacher config is the one saved with an Orbax teacher run, or for a
  PyTorch teacher {'model', 'pth', 'input_mean', 'input_std'}. Of an Orbax
  run, the newest intact checkpoint is used; a damaged one is skipped (the
  teacher's workdir is only read).
  """
  if config.teacher.get('pth'):
    return _load_pytorch_teacher(config, mesh)
  workdir = config.teacher.get('workdir')
  if not workdir or not os.path.isdir(workdir):
    raise UserError(f'config.teacher.workdir={workdir!r} is not a directory '
                    'holding a trained teacher (or set config.teacher.pth to '
                    'a PyTorch checkpoint)')
  ckpts = checkpoint.Checkpoints(workdir, read_only=True)
  restored = ckpts.restore_newest_intact(
      None, which=config.teacher.checkpoint, mesh=mesh)
  ckpts.close()
  if restored is None:
    raise UserError(f'no {config.teacher.checkpoint} checkpoint in '
                    f'config.teacher.workdir={workdir!r}; train the teacher '
                    'first')
  state, _, saved = restored
  return ml_collections.ConfigDict(saved), {
      'params': state['params']['model'],
      'batch_stats': state['batch_stats']}


# The dataset fields that decide which images and labels the teacher saw;
# the synthetic set is drawn from its seed, sizes and class count. The
# subsets (train_subset, test_subset) may differ: the same images, fewer.
_DATA_FIELDS = ('name', 'path', 'image_size', 'channels', 'label_kind')
_SYNTHETIC_FIELDS = ('seed', 'num_train', 'num_test', 'num_classes')


def _check_same_data(student: ml_collections.ConfigDict,
                     teacher: ml_collections.ConfigDict,
                     input_shape=None, teacher_shape=None) -> None:
  """The student's data must be the teacher's: same set, same image size and
  channels (a teacher fed other images scores near chance)."""
  fields = _DATA_FIELDS + (_SYNTHETIC_FIELDS if student.get('name') ==
                           'synthetic' else ())
  for field in fields:
    mine, theirs = student.get(field), teacher.get(field)
    if mine != theirs:
      raise UserError(f'config.dataset.{field}={mine!r} but the teacher was '
                      f'trained on dataset.{field}={theirs!r}')
  if teacher_shape and list(input_shape) != list(teacher_shape):
    raise UserError(f'the student data set has images of shape '
                    f'{tuple(input_shape)} (height, width, channels) but the '
                    f'teacher was trained on {tuple(teacher_shape)}')


def build_student(config: ml_collections.ConfigDict,
                  dataset: datasets.Dataset, mesh: Mesh,
                  teacher_config: ml_collections.ConfigDict,
                  teacher_variables,
                  reuse: Reuse | None = None) -> train.RunSetup:
  """The student's model, optimiser and jitted step around a loaded teacher.

  With `reuse`, students of same-architecture teachers share one step: the
  teacher's weights and the distillation weights are arguments.
  """
  dtype = train.compute_dtype(config)
  parallel.check_batch_size(config.batch_size, mesh, 'config.batch_size')
  steps_per_epoch = train.check_steps_per_epoch(config, dataset)
  teacher_classes = models.num_classes(teacher_variables['params'])
  if teacher_classes != dataset.num_classes:
    raise UserError(f'the teacher predicts {teacher_classes} classes but the '
                    f'student data set has {dataset.num_classes}')
  teacher_model = models.create_model(teacher_config.model, teacher_classes,
                                      dtype=dtype)
  # A teacher trained with other statistics than the data set's (a PyTorch
  # one) gets its own normalisation in the step and in the agreement metric.
  teacher_mean = teacher_std = None
  reference = teacher_model
  if teacher_config.get('input_mean') is not None:
    teacher_mean, teacher_std = teacher_normalization(teacher_config, dataset)
    reference = Renormalized(
        teacher_model, tuple(dataset.mean.tolist()),
        tuple(dataset.std.tolist()), tuple(teacher_mean.tolist()),
        tuple(teacher_std.tolist()))
  student_model = models.create_model(config.model, dataset.num_classes,
                                      dtype=dtype, bn_axis_name=DATA)
  distill_fn = distillers.get(config.distill.method)
  learning_rate_fn = optim.create_learning_rate_fn(config, steps_per_epoch)
  tx = optim.create_optimizer(config, learning_rate_fn)
  input_shape = dataset.train_images.shape[1:]

  def init_state():
    variables = student_model.init(
        jax.random.key(config.seed), jnp.zeros((1, *input_shape)),
        train=False)
    return create_train_state({'model': variables['params']},
                              variables['batch_stats'], tx)

  return train.RunSetup(
      model=student_model, tx=tx, learning_rate_fn=learning_rate_fn,
      steps_per_epoch=steps_per_epoch, num_views=1, init_state=init_state,
      train_step=reuse_lib.get(
          reuse, 'student_step',
          f'{reuse_lib.config_key(config, train.RUN_ONLY_FIELDS + _TRACED)}|'
          f'{teacher_model}|{train.mesh_key(mesh)}',
          lambda: make_train_step(student_model, teacher_model, distill_fn,
                                  tx, mesh, mean=dataset.mean,
                                  std=dataset.std, dtype=dtype,
                                  teacher_mean=teacher_mean,
                                  teacher_std=teacher_std)),
      step_args={'teacher': teacher_variables,
                 'hp': hyperparameters(config.distill)},
      reference=(reference, teacher_variables))


def train_student(config: ml_collections.ConfigDict, workdir: str,
                  reuse: Reuse | None = None) -> dict[str, Any]:
  """Distils the teacher of config.teacher.workdir (or .pth) into a student
  in `workdir`, resuming if it can; returns the summary."""
  mesh = train.checked_mesh(config, workdir)
  teacher_config, teacher_variables = load_teacher(config, mesh)
  if 'dataset' in teacher_config:  # An Orbax teacher of this project.
    # The config fields first: a mismatch is refused before any data loads.
    _check_same_data(config.dataset, teacher_config.dataset)
  dataset = train.load_dataset(config, reuse)
  if 'dataset' in teacher_config:
    ckpts = checkpoint.Checkpoints(config.teacher.workdir, read_only=True)
    _check_same_data(config.dataset, teacher_config.dataset,
                     dataset.train_images.shape[1:],
                     ckpts.input_shape(config.teacher.checkpoint))
    ckpts.close()
  setup = build_student(config, dataset, mesh, teacher_config,
                        teacher_variables, reuse)
  memory = train.check_step_memory(config, setup, dataset, mesh)
  workdir = train.prepare_workdir(workdir)
  with train.hold_workdir(workdir):
    return _train_student(config, workdir, setup, dataset, mesh,
                          teacher_config, teacher_variables, reuse, memory)


def _train_student(config, workdir, setup, dataset, mesh, teacher_config,
                   teacher_variables, reuse, step_memory=None):
  teacher_eval_path = os.path.join(workdir, TEACHER_EVAL_FILE)
  if not os.path.exists(teacher_eval_path):
    _, test_split = input_pipeline.to_device(dataset, mesh)
    # Normalised as configs/eval.py does, so the two print the same top-1.
    teacher_mean, teacher_std = teacher_normalization(teacher_config, dataset)
    dtype = train.compute_dtype(config)
    evaluate_fn = evaluate.make_eval_fn(
        models.create_model(teacher_config.model,
                            models.num_classes(teacher_variables['params']),
                            dtype=dtype),
        mesh, mean=teacher_mean, std=teacher_std, dtype=dtype,
        batch_size=config.eval_batch_size)
    teacher_eval = evaluate_fn(teacher_variables, test_split)
    source = config.teacher.get('pth') or config.teacher.workdir
    teacher_eval.update(model=teacher_config.model, source=source,
                        workdir=config.teacher.get('workdir'))
    logging.info('Teacher %s from %s: test top-1 %.4f', teacher_config.model,
                 source, teacher_eval['top1'])
    if jax.process_index() == 0:
      with open(teacher_eval_path, 'w') as f:
        json.dump(teacher_eval, f, indent=2)
  with open(teacher_eval_path) as f:
    teacher_eval = json.load(f)

  return train.fit(config, workdir, setup, dataset, mesh,
                   summary_extra={'teacher_top1': teacher_eval['top1']},
                   reuse=reuse, step_memory=step_memory)
