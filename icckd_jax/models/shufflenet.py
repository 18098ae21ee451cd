"""ShuffleNet V1 and V2 as the RepDistiller benchmark defines them for CIFAR.

Both keep the 32x32 resolution through a 1x1 stem (no stride, no max pool),
so their three stages run at 16, 8 and 4 pixels. Convolutions use PyTorch's
default initialisation, as in the reference (which does not re-initialise).
"""

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from icckd_jax.models import stages
from icckd_jax.models.resnet import (
  Classifier,
  LogitsAndFeatures,
  conv_and_norm,
  depthwise,
  PAD_1,
  ModuleDef,
  pooled_classifier,
  torch_linear_kernel_init,
)

# PyTorch's default Conv2d weight, kaiming_uniform(a=sqrt(5)):
# U(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in counting one group's inputs.
torch_conv_kernel_init = torch_linear_kernel_init


def channel_shuffle(x: jax.Array, groups: int) -> jax.Array:
  """[B, H, W, C] -> [B, H, W, C] with channel g * (C / groups) + j moved to
  j * groups + g, the reference's view-permute-reshape on NCHW."""
  b, h, w, c = x.shape
  x = x.reshape(b, h, w, groups, c // groups)
  return jnp.swapaxes(x, 3, 4).reshape(b, h, w, c)


def _stem(
  x: jax.Array, dtype: Any, train: bool, bn_axis_name: str | None
) -> tuple[jax.Array, ModuleDef, ModuleDef]:
  """(the stem's map [B, H, W, 24], conv, norm): both ShuffleNets' 1x1 stem
  (conv1, bn1, ReLU) on images x [B, H, W, 3], and the layer factories
  their blocks are built from. Called inside a compact `__call__`, its
  layers are that module's 'conv1' and 'bn1'."""
  conv, norm = conv_and_norm(dtype, train, bn_axis_name, torch_conv_kernel_init)
  return (
    nn.relu(norm(name='bn1')(conv(24, (1, 1), name='conv1')(x))),
    conv,
    norm,
  )


class ShuffleV1Block(nn.Module):
  """Grouped 1x1, shuffle, depthwise 3x3, grouped 1x1; added to the input, or
  at stride 2 concatenated with its 3x3 average pool.

  Maps [B, H, W, C_in] to (output, pre-ReLU map), each [B, H / strides,
  W / strides, features (+ C_in when strides == 2)].
  """

  features: int
  strides: int
  groups: int
  conv: ModuleDef
  norm: ModuleDef

  @nn.compact
  def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    mid = self.features // 4
    # The stem's 24 channels do not divide into groups.
    first_groups = 1 if x.shape[-1] == 24 else self.groups
    y = self.conv(mid, (1, 1), feature_group_count=first_groups, name='conv1')(
      x
    )
    y = nn.relu(self.norm(name='bn1')(y))
    y = channel_shuffle(y, first_groups)
    y = depthwise(self.conv, mid, self.strides, 'conv2')(y)
    y = nn.relu(self.norm(name='bn2')(y))
    y = self.conv(
      self.features, (1, 1), feature_group_count=self.groups, name='conv3'
    )(y)
    y = self.norm(name='bn3')(y)
    if self.strides == 2:
      # PyTorch's AvgPool2d counts the zero padding (count_include_pad).
      shortcut = nn.avg_pool(x, (3, 3), (2, 2), PAD_1, count_include_pad=True)
      preact = jnp.concatenate([y, shortcut.astype(y.dtype)], -1)
    else:
      preact = y + x
    return nn.relu(preact), preact


class ShuffleV2Block(nn.Module):
  """Splits the channels in half, transforms the second half (1x1, depthwise
  3x3, 1x1), concatenates and shuffles.

  Maps [B, H, W, C] to (output, pre-ReLU map), each [B, H, W, C]; the
  latter is the concatenation before its last ReLU and before the shuffle,
  as the reference's ShuffleNetv2.py returns it.
  """

  conv: ModuleDef
  norm: ModuleDef

  @nn.compact
  def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    y = nn.relu(
      self.norm(name='bn1')(self.conv(half, (1, 1), name='conv1')(x2))
    )
    y = self.norm(name='bn2')(depthwise(self.conv, half, 1, 'conv2')(y))
    y = self.norm(name='bn3')(self.conv(half, (1, 1), name='conv3')(y))
    out = channel_shuffle(jnp.concatenate([x1, nn.relu(y)], -1), 2)
    return out, jnp.concatenate([x1, y], -1)


class ShuffleV2DownBlock(nn.Module):
  """Two stride-2 branches (depthwise 3x3 then 1x1; 1x1, depthwise 3x3, 1x1),
  concatenated and shuffled. Maps [B, H, W, C_in] to [B, H/2, W/2, features].
  """

  features: int
  conv: ModuleDef
  norm: ModuleDef

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    mid = self.features // 2
    c = x.shape[-1]
    left = self.norm(name='bn1')(depthwise(self.conv, c, 2, 'conv1')(x))
    left = nn.relu(
      self.norm(name='bn2')(self.conv(mid, (1, 1), name='conv2')(left))
    )
    right = nn.relu(
      self.norm(name='bn3')(self.conv(mid, (1, 1), name='conv3')(x))
    )
    right = self.norm(name='bn4')(depthwise(self.conv, mid, 2, 'conv4')(right))
    right = nn.relu(
      self.norm(name='bn5')(self.conv(mid, (1, 1), name='conv5')(right))
    )
    return channel_shuffle(jnp.concatenate([left, right], -1), 2)


class ShuffleNetV1(Classifier):
  """1x1 stem, three stages of ShuffleV1Blocks (the first at stride 2), pool,
  fc.

  Records (`models.stages`) the three stages' outputs and their last
  block's map before the ReLU.

  Attributes (beside `Classifier`'s):
    widths: output channels of the three stages.
    blocks: blocks per stage.
    groups: groups of the 1x1 convolutions.
  """

  widths: Sequence[int] = (240, 480, 960)
  blocks: Sequence[int] = (4, 8, 4)
  groups: int = 3

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> LogitsAndFeatures:
    """[B, H, W, 3] images (32x32 for CIFAR) -> (logits [B, num_classes], the
    last stage's pooled map [B, widths[-1]], which the final linear layer
    reads), float32. `train`: use and update the batch statistics."""
    x, conv, norm = _stem(x, self.dtype, train, self.bn_axis_name)
    for stage, (width, n) in enumerate(zip(self.widths, self.blocks)):
      for i in range(n):
        # The first block's pooled shortcut supplies its input's channels.
        features = width - x.shape[-1] if i == 0 else width
        x, preact = ShuffleV1Block(
          features,
          2 if i == 0 else 1,
          self.groups,
          conv,
          norm,
          name=f'layer{stage + 1}_{i}',
        )(x)
      stages.record(self, x, preact)
    return pooled_classifier(x, self.num_classes, self.dtype, 'linear')


class ShuffleNetV2(Classifier):
  """1x1 stem, three stages (a down block then n ShuffleV2Blocks), 1x1 conv,
  pool, fc.

  Records (`models.stages`) the three stages' outputs and their last
  ShuffleV2Block's unshuffled map before the ReLU (see ShuffleV2Block).

  Attributes (beside `Classifier`'s):
    widths: channels of the three stages and of the last 1x1 conv.
    blocks: ShuffleV2Blocks per stage after its down block.
  """

  widths: Sequence[int] = (116, 232, 464, 1024)
  blocks: Sequence[int] = (3, 7, 3)

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> LogitsAndFeatures:
    """[B, H, W, 3] images (32x32 for CIFAR) -> (logits [B, num_classes], the
    pooled output [B, widths[-1]] of the last 1x1 conv, which the final
    linear layer reads), float32. `train`: use and update the batch
    statistics."""
    x, conv, norm = _stem(x, self.dtype, train, self.bn_axis_name)
    for stage, (width, n) in enumerate(zip(self.widths, self.blocks)):
      x = ShuffleV2DownBlock(width, conv, norm, name=f'layer{stage + 1}_0')(x)
      for i in range(1, n + 1):
        x, preact = ShuffleV2Block(conv, norm, name=f'layer{stage + 1}_{i}')(x)
      stages.record(self, x, preact)
    x = nn.relu(
      norm(name='bn2')(conv(self.widths[-1], (1, 1), name='conv2')(x))
    )
    return pooled_classifier(x, self.num_classes, self.dtype, 'linear')
