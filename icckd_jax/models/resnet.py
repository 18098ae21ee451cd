"""CIFAR ResNet (BasicBlock, depth 6n+2) as defined by the RepDistiller benchmark.

Also holds the initialisers and the BatchNorm factory that the WRN and VGG
families share, so that all three match the PyTorch reference the same way.
"""

import dataclasses
import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from icckd_jax.models import stages

ModuleDef = Any
# What every model returns: (logits [B, classes], pooled features [B, D]).
LogitsAndFeatures = tuple[jax.Array, jax.Array]

# PyTorch `kaiming_normal_(mode='fan_out', nonlinearity='relu')`: an untruncated
# normal with variance 2 / (kh * kw * out_channels).
conv_kernel_init = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')

# PyTorch's default `nn.Linear` weight: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
torch_linear_kernel_init = nn.initializers.variance_scaling(
  1.0 / 3.0, 'fan_in', 'uniform'
)

# Explicit symmetric padding: flax's 'SAME' pads (0, 1) for stride 2 on even
# inputs, which samples different pixels than PyTorch's padding=1.
PAD_1 = ((1, 1), (1, 1))


def torch_linear_bias_init(fan_in: int) -> Callable[..., jax.Array]:
  """PyTorch's default `nn.Linear` bias: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
  bound = 1.0 / math.sqrt(fan_in)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def pooled_classifier(
  x: jax.Array,
  num_classes: int,
  dtype: Any,
  name: str,
  kernel_init: Callable[..., jax.Array] = torch_linear_kernel_init,
  bias_init: Callable[..., jax.Array] | None = None,
) -> tuple[jax.Array, jax.Array]:
  """The tail every benchmark model shares: global average pool, linear.

  Called from a model's compact `__call__`, so the linear layer is that
  model's submodule `name` ('fc', 'linear' or 'classifier', by family).
  The global mean is each reference's fixed-size pool (AvgPool2d(4), (7),
  (8)...) on the map size it was written for, and keeps the layers the same
  at any other input size.

  Args:
    x: [B, H, W, D] the last map, after its ReLU.
    num_classes: size of the logits.
    dtype: compute dtype of the linear layer; parameters stay float32.
    name: the linear layer's name.
    kernel_init: its weight initialiser (PyTorch's `nn.Linear` default).
    bias_init: its bias initialiser; None: PyTorch's `nn.Linear` default.

  Returns:
    (logits [B, num_classes], features [B, D]), both float32.
  """
  features = jnp.mean(x, axis=(1, 2))
  logits = nn.Dense(
    num_classes,
    kernel_init=kernel_init,
    bias_init=bias_init or torch_linear_bias_init(features.shape[-1]),
    dtype=dtype,
    param_dtype=jnp.float32,
    name=name,
  )(features)
  return logits.astype(jnp.float32), features.astype(jnp.float32)


def batch_norm(train: bool, dtype: Any, axis_name: str | None) -> ModuleDef:
  """BatchNorm matching PyTorch's defaults (momentum 0.1 == flax 0.9, eps 1e-5).

  `axis_name` names the mapped mesh axis over which batch statistics are
  averaged (synchronised BN under `shard_map`); None keeps them per device.
  """
  return functools.partial(
    nn.BatchNorm,
    use_running_average=not train,
    momentum=0.9,
    epsilon=1e-5,
    axis_name=axis_name,
    dtype=dtype,
    param_dtype=jnp.float32,
  )


def conv_and_norm(
  dtype: Any,
  train: bool,
  bn_axis_name: str | None,
  kernel_init: Callable[..., jax.Array] = conv_kernel_init,
) -> tuple[ModuleDef, ModuleDef]:
  """(conv, norm): the bias-free nn.Conv (PyTorch's Kaiming init unless
  `kernel_init`) and the `batch_norm` a model builds its layers from, both
  computing in `dtype` with float32 parameters. 1x1 convolutions keep
  flax's default 'SAME', which pads nothing for a 1x1 kernel."""
  conv = functools.partial(
    nn.Conv,
    use_bias=False,
    kernel_init=kernel_init,
    dtype=dtype,
    param_dtype=jnp.float32,
  )
  return conv, batch_norm(train, dtype, axis_name=bn_axis_name)


def small_normal_classifier(
  x: jax.Array, num_classes: int, dtype: Any, name: str
) -> tuple[jax.Array, jax.Array]:
  """`pooled_classifier` with the weights N(0, 0.01²) and zero bias that the
  VGG and MobileNetV2 references initialise their classifier with."""
  return pooled_classifier(
    x,
    num_classes,
    dtype,
    name,
    nn.initializers.normal(0.01),
    nn.initializers.zeros,
  )


def depthwise(
  conv: ModuleDef, channels: int, strides: int, name: str
) -> nn.Module:
  """A 3x3 depthwise convolution of `conv` (one filter per channel,
  padding 1): [B, H, W, channels] -> [B, H / strides, W / strides,
  channels]."""
  return conv(
    channels,
    (3, 3),
    strides,
    PAD_1,
    feature_group_count=channels,
    name=name,
  )


def add_shortcut(
  x: jax.Array,
  y: jax.Array,
  strides: int,
  conv: ModuleDef,
  norm: ModuleDef,
  prefix: str,
  padding: str = 'SAME',
) -> tuple[jax.Array, jax.Array]:
  """(relu(y + shortcut), y + shortcut): a post-activation block's output
  and its pre-ReLU sum, both [B, H', W', C], from its input x [B, H, W,
  C_in] and its residual branch y [B, H', W', C]. The shortcut is x where
  the shape is kept, else a strided 1x1 conv then BatchNorm, named
  f'{prefix}_conv' and f'{prefix}_bn' in the calling block (a compact
  `__call__`)."""
  shortcut = x
  if strides != 1 or x.shape[-1] != y.shape[-1]:
    shortcut = conv(
      y.shape[-1], (1, 1), strides, padding, name=f'{prefix}_conv'
    )(x)
    shortcut = norm(name=f'{prefix}_bn')(shortcut)
  preact = y + shortcut
  return nn.relu(preact), preact


class Classifier(nn.Module):
  """The attributes every model of the zoo shares (`create_model` sets them
  by keyword, so they follow each model's own).

  Attributes:
    num_classes: size of the logits.
    dtype: compute dtype; parameters stay float32.
    bn_axis_name: mesh axis to synchronise BatchNorm statistics over, or None.
  """

  num_classes: int = dataclasses.field(kw_only=True)
  dtype: Any = dataclasses.field(default=jnp.float32, kw_only=True)
  bn_axis_name: str | None = dataclasses.field(default=None, kw_only=True)


class Block(nn.Module):
  """The fields of a residual or separable block: its output width, the
  stride of its first layer, and the conv and norm factories of its model
  (`conv_and_norm`)."""

  features: int
  strides: int
  conv: ModuleDef
  norm: ModuleDef


class BasicBlock(Block):
  """Post-activation residual block: relu(bn(conv(relu(bn(conv(x))))) + x).

  Maps [B, H, W, C_in] to (output, pre-ReLU sum), each [B, H / strides,
  W / strides, features].
  """

  @nn.compact
  def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    y = self.conv(self.features, (3, 3), self.strides, PAD_1, name='conv1')(x)
    y = nn.relu(self.norm(name='bn1')(y))
    y = self.conv(self.features, (3, 3), 1, PAD_1, name='conv2')(y)
    y = self.norm(name='bn2')(y)
    return add_shortcut(
      x, y, self.strides, self.conv, self.norm, 'downsample', 'VALID'
    )


class ResNet(Classifier):
  """CIFAR ResNet: 3x3 stem, three stages of n BasicBlocks, global pool, fc.

  Records (`models.stages`) the three stages' outputs and their last
  block's sum before the ReLU.

  Attributes (beside `Classifier`'s):
    depth: 6n + 2 layers.
    widths: channels of the stem and of the three stages, e.g. (16, 16, 32, 64).
  """

  depth: int
  widths: Sequence[int]

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> LogitsAndFeatures:
    """[B, H, W, 3] images (32x32 for CIFAR) -> (logits [B, num_classes], the
    pooled features [B, widths[3]] the final linear layer reads), float32.
    `train`: use and update the batch statistics."""
    if (self.depth - 2) % 6:
      raise ValueError(f'ResNet depth must be 6n+2, got {self.depth}')
    blocks_per_stage = (self.depth - 2) // 6
    conv, norm = conv_and_norm(self.dtype, train, self.bn_axis_name)

    x = conv(self.widths[0], (3, 3), 1, PAD_1, name='conv1')(x)
    x = nn.relu(norm(name='bn1')(x))
    for stage, width in enumerate(self.widths[1:]):
      for i in range(blocks_per_stage):
        strides = 2 if stage > 0 and i == 0 else 1
        x, preact = BasicBlock(
          width, strides, conv, norm, name=f'layer{stage + 1}_{i}'
        )(x)
      stages.record(self, x, preact)
    # The reference's AvgPool2d(8) is the global mean on its 8x8 CIFAR maps.
    return pooled_classifier(x, self.num_classes, self.dtype, 'fc')
