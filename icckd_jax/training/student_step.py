"""The student's train step: the distiller's loss on the student's outputs
and the read-only teacher's (docs/method.md §4).

Data parallel through `step.data_parallel`. The teacher's variables are an
argument of the step (never a constant baked into it, never part of the
student's state), applied in inference mode under stop_gradient.
"""

import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp
from jax.sharding import Mesh
import ml_collections
import optax

from icckd_jax import distillers
from icckd_jax.data import augment
from icckd_jax.training import step as step_lib

# The distillation weights, traced: one compiled step serves every value.
DISTILL_WEIGHTS = ('temperature', 'gamma', 'alpha', 'beta', 'w_dist',
                   'w_angle')


def hyperparameters(distill: ml_collections.ConfigDict) -> dict[str, jax.Array]:
  """The distillation weights as traced scalars."""
  return {name: jnp.float32(distill[name]) for name in DISTILL_WEIGHTS}


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
                               teacher_out, labels, args['hp'],
                               step_lib.gather)
      # The logged loss is the differentiated one, whatever the distiller.
      return loss, (new_model_state, {**parts, 'loss': loss}, logits)

    grads, (new_model_state, parts, logits) = jax.grad(
        loss_fn, has_aux=True)(state.params)
    params, opt_state = step_lib.apply_gradients(state, grads, tx)
    # RKD is already global; the per-example terms are local means.
    metrics = step_lib.global_means(parts)
    metrics['accuracy'] = step_lib.accuracy(logits, labels)
    metrics['agreement'] = step_lib.accuracy(
        logits, jnp.argmax(teacher_out.logits, -1))
    return state.replace(step=state.step + 1, params=params,
                         opt_state=opt_state,
                         batch_stats=new_model_state['batch_stats']), metrics

  return step_lib.data_parallel(per_device, mesh)
