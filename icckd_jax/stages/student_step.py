"""The student's train step: the distiller's loss on the student's outputs
and the read-only teacher's (docs/method.md §4).

Data parallel through `step.data_parallel`. The teacher's variables are an
argument of the step (never a constant baked into it, never part of the
student's state), applied in inference mode under stop_gradient. For a
method that needs them, both networks are applied with 'intermediates'
mutable and their stage maps (`models.stages`) fill `Outputs.stages`.
"""

from collections.abc import Mapping
import dataclasses
from typing import Any

import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp
from jax.sharding import Mesh
import optax

from icckd_jax import distillers
from icckd_jax.input_pipeline import augment
from icckd_jax.input_pipeline.source import Batch
from icckd_jax.models import stages as model_stages
from icckd_jax.training import step as step_lib


def hyperparameters(weights: Mapping[str, float]) -> dict[str, jax.Array]:
  """The distillation weights (`spec.Distillation.weights`: {name: value}
  of the traced settings the method reads) as traced scalars: one compiled
  step serves every value."""
  return {name: jnp.float32(value) for name, value in weights.items()}


def apply_model(
  model: nn.Module, variables, x: jax.Array, *, train: bool, stages: bool
) -> tuple[distillers.Outputs, dict]:
  """(the model's Outputs, its new mutable state: {} in inference).

  The stage maps are asked for only when `stages`: otherwise the model is
  applied exactly as a method without them always was.
  """
  mutable = ['batch_stats'] if train else []
  if stages:
    mutable.append(model_stages.COLLECTION)
  if not mutable:
    return distillers.Outputs(*model.apply(variables, x, train=False)), {}
  (logits, features), state = model.apply(
    variables, x, train=train, mutable=mutable
  )
  maps = model_stages.collected(state) if stages else ()
  return distillers.Outputs(logits, features, *maps), state


def _epoch(step: jax.Array, steps_per_epoch: int) -> jax.Array:
  """[] float32 1-based epoch of `step` (0-based count of steps taken), as
  mdistiller's trainer numbers epochs; from the state's step, so a resumed
  run computes the same value."""
  return (step // steps_per_epoch + 1).astype(jnp.float32)


def make_train_step(
  student: nn.Module,
  teacher: nn.Module,
  distiller: distillers.Distiller,
  tx: optax.GradientTransformation,
  mesh: Mesh,
  *,
  steps_per_epoch: int,
  mean,
  std,
  dtype,
  teacher_mean=None,
  teacher_std=None,
  split_gradients=False,
):
  """Builds step(state, batch, args) -> (state, metrics).

  batch: a `Batch` of images [V, B, H, W, C] uint8 (V = 2 for a method
  that reads the strong view, its view [1]; else 1) and labels [B] (and a
  trainable distiller's example indices [B]), sharded over `data`;
  args = {'teacher': the teacher's {'params', 'batch_stats'}, 'hp':
  `hyperparameters(...)`}, replicated. The state is donated, the teacher's
  variables are not. The student's input is normalised with `mean`, `std`
  ([C], in [0, 255] units), the teacher's with `teacher_mean`,
  `teacher_std` when given (a teacher trained with other statistics).
  `distiller.reads` says whether to collect stage maps and the epoch, which
  is state.step // steps_per_epoch + 1.

  A trainable distiller's step reads the batch's example indices; its loss also differentiates params['distiller'] (pmean-ed with
  the model's by `apply_gradients`) and returns its new buffers,
  state.distiller_buffers (replicated: the loss keeps them equal). For the
  other methods those are None, and the step compiles to the program of a
  plain distillation step.

  With `split_gradients` (DOT, training/dot.py), `tx` receives the pair
  (gradient of the task term, gradient of the distillation term) of one
  forward pass (`_gradients`); else the loss's gradient, as always.
  """
  statics = _Statics(
    teacher,
    distiller,
    steps_per_epoch,
    mean,
    std,
    dtype,
    teacher_mean,
    teacher_std,
    split_gradients,
  )
  return step_lib.data_parallel(_per_device_fn(student, statics, tx), mesh)


def _per_device_fn(student: nn.Module, statics: '_Statics', tx):
  """The step on one device's shard (`make_train_step`)."""
  distiller, stages = statics.distiller, statics.distiller.reads.stages

  def per_device(state, batch: Batch, args):
    images, labels, indices = batch.images, batch.labels, batch.indices
    xs, teacher_outs, hp = statics.inputs(state, images, args)

    def loss_fn(params):
      batch_stats, student_outs = _student_views(
        student, params['model'], state.batch_stats, xs, stages
      )
      trainable = distillers.Trainable(
        params.get('distiller'), state.distiller_buffers, indices, state.step
      )
      strong = {}
      if len(xs) > 1:
        strong = {
          'student_strong': student_outs[1],
          'teacher_strong': teacher_outs[1],
        }
      loss, parts, buffers = distiller.loss(
        distillers.Batch(
          student_outs[0],
          teacher_outs[0],
          labels,
          step_lib.gather,
          trainable,
          **strong,
        ),
        hp,
      )
      # The logged loss is the differentiated one, whatever the distiller.
      return loss, (
        batch_stats,
        buffers,
        {**parts, 'loss': loss},
        student_outs[0].logits,
      )

    grads, (batch_stats, buffers, parts, logits) = _gradients(
      loss_fn,
      state.params,
      lambda parts: distiller.task(parts, hp),
      statics.split_gradients,
    )
    params, opt_state = step_lib.apply_gradients(state, grads, tx)
    metrics = _metrics(parts, logits, labels, teacher_outs[0])
    return state.replace(
      step=state.step + 1,
      params=params,
      opt_state=opt_state,
      batch_stats=batch_stats,
      distiller_buffers=buffers,
    ), metrics

  return per_device


def _student_views(student, params, batch_stats, xs, stages):
  """(the new batch statistics, [the student's Outputs] on each input of
  `xs`): one view, or the weak then the strong one (MLKD), the second seeing
  the statistics the first updated, as the published code's two forward
  passes do."""
  outs = []
  for x in xs:
    out, new_state = apply_model(
      student,
      {'params': params, 'batch_stats': batch_stats},
      x,
      train=True,
      stages=stages,
    )
    batch_stats = new_state['batch_stats']
    outs.append(out)
  return batch_stats, outs


@dataclasses.dataclass(frozen=True)
class _Statics:
  """The static inputs of a student step (make_train_step's arguments)."""

  teacher: nn.Module
  distiller: distillers.Distiller
  steps_per_epoch: int
  mean: Any
  std: Any
  dtype: Any
  teacher_mean: Any
  teacher_std: Any
  split_gradients: bool = False

  def inputs(self, state, images, args):
    """([x] the student's input of each view it sees, [the teacher's
    Outputs] on each under stop_gradient in float32, the traced scalars
    with the epoch if the method reads it)."""
    return _inputs(self, state, images, args)


def _gradients(loss_fn, params, task, split: bool):
  """(grads, aux) of `loss_fn(params)` -> (loss [], aux), aux[2] its
  parts: the loss's gradient, or with `split` the pair (∂task/∂params,
  ∂(loss − task)/∂params), `task(parts)` [] its task term, from one forward
  pass and two backward ones, as DOT's published trainer does. In the
  second, the task term's two paths cancel exactly (w − w = 0) at CE."""
  if not split:
    return jax.grad(loss_fn, has_aux=True)(params)

  def terms(params):
    loss, aux = loss_fn(params)
    t = task(aux[2])
    return jnp.stack([t, loss - t]), aux

  _, vjp, aux = jax.vjp(terms, params, has_aux=True)
  (g_task,), (g_distill,) = (
    vjp(jnp.array(cotangent, jnp.float32))
    for cotangent in ((1.0, 0.0), (0.0, 1.0))
  )
  return (g_task, g_distill), aux


def _inputs(statics: _Statics, state, images, args):
  """(the student's inputs, one per view it sees, the teacher's Outputs of
  each, the traced scalars): views [0] of `images`, or [0] and [1] for a
  method that reads the strong view."""
  views = 2 if statics.distiller.reads.strong_view else 1
  xs, teacher_outs = [], []
  for v in range(views):
    x, out = _teacher_view(statics, images[v], args)
    xs.append(x)
    teacher_outs.append(out)
  hp = args['hp']
  if statics.distiller.reads.epoch:
    hp = {**hp, 'epoch': _epoch(state.step, statics.steps_per_epoch)}
  return xs, teacher_outs, hp


def _teacher_view(statics: _Statics, images, args):
  """(the student's input x of one view [b, H, W, C] uint8, the teacher's
  Outputs on it under stop_gradient in float32)."""
  teacher, distiller = statics.teacher, statics.distiller
  mean, std, dtype = statics.mean, statics.std, statics.dtype
  teacher_mean, teacher_std = statics.teacher_mean, statics.teacher_std
  x = augment.normalize(images, mean, std, dtype)
  x_teacher = (
    x
    if teacher_mean is None
    else augment.normalize(images, teacher_mean, teacher_std, dtype)
  )
  t_out, _ = apply_model(
    teacher,
    args['teacher'],
    x_teacher,
    train=False,
    stages=distiller.reads.stages,
  )
  return x, t_out._replace(
    logits=lax.stop_gradient(t_out.logits.astype(jnp.float32)),
    features=lax.stop_gradient(t_out.features.astype(jnp.float32)),
    stages=lax.stop_gradient(t_out.stages),
    preact_stages=lax.stop_gradient(t_out.preact_stages),
  )


def _metrics(parts, logits, labels, teacher_out) -> dict[str, jax.Array]:
  # Relational terms are already global; the per-example terms are
  # local means.
  metrics = step_lib.global_means(parts)
  metrics['accuracy'] = step_lib.accuracy(logits, labels)
  metrics['agreement'] = step_lib.accuracy(
    logits, jnp.argmax(teacher_out.logits, -1)
  )
  return metrics
