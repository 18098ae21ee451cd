"""The optimiser of the CIFAR KD benchmark recipe (docs/method.md §5)."""

import ml_collections
import optax


def create_learning_rate_fn(
  config: ml_collections.ConfigDict, steps_per_epoch: int
) -> optax.Schedule:
  """Step decay: lr × `lr_decay_rate` at each epoch of `lr_decay_epochs`."""
  boundaries = {
    int(e) * steps_per_epoch: config.lr_decay_rate
    for e in config.lr_decay_epochs
  }
  return optax.piecewise_constant_schedule(config.learning_rate, boundaries)


def create_optimizer(
  config: ml_collections.ConfigDict, learning_rate_fn: optax.Schedule
) -> optax.GradientTransformation:
  """SGD with momentum and L2 weight decay on every parameter.

  Decay is added to the gradient before momentum, as PyTorch's SGD does, so
  the recipe's hyper-parameters mean what they mean in the reference code.
  """
  return optax.chain(
    optax.add_decayed_weights(config.weight_decay),
    optax.sgd(learning_rate_fn, momentum=config.momentum, nesterov=False),
  )
