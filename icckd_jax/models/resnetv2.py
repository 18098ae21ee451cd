"""The ImageNet-shaped ResNet with bottleneck blocks, as the RepDistiller
benchmark adapts it to CIFAR (its models/resnetv2.py; the benchmark's
`ResNet50`).

The adaptation: a 3x3 stride-1 stem and no max pool, so the four stages run
at 32, 16, 8 and 4 pixels.
"""

from collections.abc import Sequence

import flax.linen as nn
import jax

from icckd_jax.models import stages
from icckd_jax.models.resnet import (
  Classifier,
  LogitsAndFeatures,
  conv_and_norm,
  PAD_1,
  ModuleDef,
  add_shortcut,
  pooled_classifier,
)

EXPANSION = 4


class Bottleneck(nn.Module):
  """relu(bn(1x1) -> relu(bn(3x3, strides)) -> bn(1x1 to 4 * planes)
  + shortcut).

  The shortcut is a strided 1x1 conv and BN whenever the shape changes.
  Maps [B, H, W, C_in] to (output, pre-ReLU sum), each [B, H / strides,
  W / strides, 4 * planes].
  """

  planes: int
  strides: int
  conv: ModuleDef
  norm: ModuleDef

  @nn.compact
  def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    out = EXPANSION * self.planes
    y = nn.relu(
      self.norm(name='bn1')(self.conv(self.planes, (1, 1), name='conv1')(x))
    )
    y = nn.relu(
      self.norm(name='bn2')(
        self.conv(self.planes, (3, 3), self.strides, PAD_1, name='conv2')(y)
      )
    )
    y = self.norm(name='bn3')(self.conv(out, (1, 1), name='conv3')(y))
    return add_shortcut(x, y, self.strides, self.conv, self.norm, 'shortcut')


class BottleneckResNet(Classifier):
  """3x3 stem, four stages of Bottlenecks (64, 128, 256, 512 planes), pool, fc.

  Records (`models.stages`) the four stages' outputs and their last
  block's sum before the ReLU.

  Attributes (beside `Classifier`'s):
    blocks: Bottlenecks per stage, (3, 4, 6, 3) for ResNet50.
  """

  blocks: Sequence[int]

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> LogitsAndFeatures:
    """[B, H, W, 3] images (32x32 for CIFAR) -> (logits [B, num_classes], the
    pooled features [B, 2048] the final linear layer reads), float32. `train`:
    use and update the batch statistics."""
    conv, norm = conv_and_norm(self.dtype, train, self.bn_axis_name)

    x = nn.relu(norm(name='bn1')(conv(64, (3, 3), 1, PAD_1, name='conv1')(x)))
    for stage, n in enumerate(self.blocks):
      for i in range(n):
        strides = 2 if stage > 0 and i == 0 else 1
        x, preact = Bottleneck(
          64 * 2**stage, strides, conv, norm, name=f'layer{stage + 1}_{i}'
        )(x)
      stages.record(self, x, preact)
    return pooled_classifier(x, self.num_classes, self.dtype, 'linear')
