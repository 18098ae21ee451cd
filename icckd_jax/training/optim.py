"""The optimiser of the CIFAR KD benchmark recipe (docs/method.md §5), or a
student's DOT (training/dot.py)."""

import optax

from icckd_jax.runs.spec import Recipe
from icckd_jax.training import dot


def create_learning_rate_fn(
  recipe: Recipe, steps_per_epoch: int
) -> optax.Schedule:
  """Step decay: lr × `lr_decay_rate` at each epoch of `lr_decay_epochs`."""
  boundaries = {
    int(e) * steps_per_epoch: recipe.lr_decay_rate
    for e in recipe.lr_decay_epochs
  }
  return optax.piecewise_constant_schedule(recipe.learning_rate, boundaries)


def splits_gradients(recipe: Recipe) -> bool:
  """Whether `create_optimizer(recipe, ...)` updates from the pair (task
  gradient, distillation gradient) rather than the loss's gradient."""
  return recipe.optimizer == 'dot'


def create_optimizer(
  recipe: Recipe, learning_rate_fn: optax.Schedule
) -> optax.GradientTransformation:
  """SGD with momentum and L2 weight decay on every parameter.

  Decay is added to the gradient before momentum, as PyTorch's SGD does, so
  the recipe's hyper-parameters mean what they mean in the reference code.
  With recipe.optimizer 'dot' (a student's), DOT: its update takes the
  task and the distillation gradients apart (`dot.dot`).
  """
  if splits_gradients(recipe):
    return dot.dot(
      learning_rate_fn,
      recipe.momentum,
      recipe.dot_delta,
      recipe.weight_decay,
      dot.model_and_distiller,
    )
  return optax.chain(
    optax.add_decayed_weights(recipe.weight_decay),
    optax.sgd(learning_rate_fn, momentum=recipe.momentum, nesterov=False),
  )
