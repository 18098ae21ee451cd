"""The optimiser of the CIFAR KD benchmark recipe (docs/method.md §5)."""

import optax

from icckd_jax.runs.spec import Recipe


def create_learning_rate_fn(
  recipe: Recipe, steps_per_epoch: int
) -> optax.Schedule:
  """Step decay: lr × `lr_decay_rate` at each epoch of `lr_decay_epochs`."""
  boundaries = {
    int(e) * steps_per_epoch: recipe.lr_decay_rate
    for e in recipe.lr_decay_epochs
  }
  return optax.piecewise_constant_schedule(recipe.learning_rate, boundaries)


def create_optimizer(
  recipe: Recipe, learning_rate_fn: optax.Schedule
) -> optax.GradientTransformation:
  """SGD with momentum and L2 weight decay on every parameter.

  Decay is added to the gradient before momentum, as PyTorch's SGD does, so
  the recipe's hyper-parameters mean what they mean in the reference code.
  """
  return optax.chain(
    optax.add_decayed_weights(recipe.weight_decay),
    optax.sgd(learning_rate_fn, momentum=recipe.momentum, nesterov=False),
  )
