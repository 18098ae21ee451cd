"""MobileNetV2 as the RepDistiller benchmark defines it for CIFAR.

The benchmark's `MobileNetV2` is its `mobile_half`: expansion 6, width 0.5, a
stride-2 stem (so a 32x32 image reaches the last block at 2x2) and a
1280-wide last 1x1 conv. Unlike the ImageNet network, the first block also
has its 1x1 expansion conv (with expansion 1).
"""

import flax.linen as nn
import jax

from icckd_jax.models import stages
from icckd_jax.models.resnet import (
  Classifier,
  LogitsAndFeatures,
  conv_and_norm,
  depthwise,
  small_normal_classifier,
  PAD_1,
  ModuleDef,
)

# (expansion, channels at width 1, blocks, stride of the first block).
_SETTINGS = (
  (1, 16, 1, 1),
  (6, 24, 2, 1),
  (6, 32, 3, 2),
  (6, 64, 4, 2),
  (6, 96, 3, 1),
  (6, 160, 3, 2),
  (6, 320, 1, 1),
)
# The entries of _SETTINGS whose output ends a recorded stage.
_STAGE_ENDS = (1, 2, 4, 6)


class InvertedResidual(nn.Module):
  """1x1 expand, 3x3 depthwise, 1x1 linear projection; identity added when
  the stride is 1 and the width is unchanged.

  Maps [B, H, W, C_in] to [B, H / strides, W / strides, features].
  """

  features: int
  strides: int
  expansion: int
  conv: ModuleDef
  norm: ModuleDef

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    hidden = x.shape[-1] * self.expansion
    y = self.conv(hidden, (1, 1), name='conv0')(x)
    y = nn.relu(self.norm(name='bn0')(y))
    y = depthwise(self.conv, hidden, self.strides, 'conv1')(y)
    y = nn.relu(self.norm(name='bn1')(y))
    y = self.conv(self.features, (1, 1), name='conv2')(y)
    y = self.norm(name='bn2')(y)
    if self.strides == 1 and x.shape[-1] == self.features:
      return x + y
    return y


class MobileNetV2(Classifier):
  """Stem conv (stride 2), seven stages of inverted residuals, 1x1 conv,
  pool, fc.

  Records (`models.stages`) the outputs after blocks 1, 2, 4 and 6 of
  `_SETTINGS` (16, 8, 4 and 2 pixels on CIFAR), as mdistiller's
  mobilenetv2.py picks its `feats`. A linear bottleneck ends without a
  ReLU, so each one's pre-ReLU map is the output itself.

  Attributes (beside `Classifier`'s):
    expansion: hidden-width multiplier of the inverted residuals (T).
    width_mult: multiplier of the stem and stage widths.
  """

  expansion: int = 6
  width_mult: float = 0.5

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> LogitsAndFeatures:
    """[B, H, W, 3] images (32x32 for CIFAR) -> (logits [B, num_classes], the
    pooled features [B, 1280] the final linear layer reads), float32. `train`:
    use and update the batch statistics."""
    conv, norm = conv_and_norm(self.dtype, train, self.bn_axis_name)

    x = conv(int(32 * self.width_mult), (3, 3), 2, PAD_1, name='conv1')(x)
    x = nn.relu(norm(name='bn1')(x))
    for b, (t, c, n, s) in enumerate(_SETTINGS):
      expansion = self.expansion if t != 1 else 1
      for i in range(n):
        x = InvertedResidual(
          int(c * self.width_mult),
          s if i == 0 else 1,
          expansion,
          conv,
          norm,
          name=f'blocks{b}_{i}',
        )(x)
      if b in _STAGE_ENDS:
        stages.record(self, x, x)
    # The reference widens the last conv only for width multipliers above 1.
    last = int(1280 * self.width_mult) if self.width_mult > 1.0 else 1280
    x = conv(last, (1, 1), name='conv2')(x)
    x = nn.relu(norm(name='bn2')(x))
    # The reference's AvgPool2d(2, ceil_mode=True) covers its 2x2 CIFAR maps.
    return small_normal_classifier(
      x, self.num_classes, self.dtype, 'classifier'
    )
