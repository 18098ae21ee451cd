"""The pieces the trainable methods' connectors share: PyTorch's BatchNorm,
synchronised over the data-parallel devices, and a connector's training
application."""

from typing import Any

import flax.linen as nn

from icckd_jax import parallel


def batch_norm(train: bool) -> nn.BatchNorm:
  """PyTorch's BatchNorm2d defaults (momentum 0.1 == flax 0.9, eps 1e-5);
  in training synchronised over the data-parallel devices, so that the
  statistics are those of the global batch. Called inside a compact
  `__call__`, it is that module's submodule."""
  return nn.BatchNorm(
    use_running_average=not train,
    momentum=0.9,
    epsilon=1e-5,
    axis_name=parallel.DATA if train else None,
  )


def apply_training(
  module: nn.Module, params: Any, batch_stats: Any, *args
) -> tuple[Any, Any]:
  """(module's output, its new BatchNorm statistics): `module` applied in
  training mode (its last argument `train=True`) to `args`."""
  out, new = module.apply(
    {'params': params, 'batch_stats': batch_stats},
    *args,
    train=True,
    mutable=['batch_stats'],
  )
  return out, new['batch_stats']
