"""MobileNetV1 as mdistiller defines it for ImageNet (its
models/imagenet/mobilenetv1.py), the student of ResNet50 in the KD
benchmark's ImageNet table.

`model.0` is `conv_bn`: a 3x3 stride-2 convolution, BatchNorm, ReLU; then 13
depthwise-separable blocks `model.1` ... `model.13` (a 3x3 depthwise
convolution, BatchNorm, ReLU, a 1x1 convolution, BatchNorm, ReLU), doubling
the width at the strided ones; a 7x7 average pool and fc 1024 -> classes.
At 224x224 the last map is 7x7, so the pool is the global mean, which is
what runs at any other size (Tiny-ImageNet's 64x64 ends at 2x2).

Records (`models.stages`) the outputs of blocks 3, 5, 11 and 13 (128, 256,
512 and 1024 channels; 56, 28, 14 and 7 pixels at 224) and each one's last
BatchNorm before its ReLU: mdistiller's `feats` and `preact_feats`, which
for this network have no stem map.
"""

import flax.linen as nn
import jax

from icckd_jax.models import stages
from icckd_jax.models.resnet import (
  Classifier,
  Block,
  LogitsAndFeatures,
  conv_and_norm,
  depthwise,
  PAD_1,
  pooled_classifier,
  torch_linear_kernel_init,
)

# (output channels, stride) of blocks 1 ... 13.
BLOCKS = (
  (64, 1),
  (128, 2),
  (128, 1),
  (256, 2),
  (256, 1),
  (512, 2),
  (512, 1),
  (512, 1),
  (512, 1),
  (512, 1),
  (512, 1),
  (1024, 2),
  (1024, 1),
)
# The blocks whose output ends a recorded stage (mdistiller's forward).
STAGE_ENDS = (3, 5, 11, 13)

# mdistiller leaves PyTorch's default Conv2d initialisation in place:
# kaiming_uniform_(a=sqrt(5)), U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
torch_conv_kernel_init = torch_linear_kernel_init


class DepthwiseSeparable(Block):
  """`conv_dw`: relu(bn(3x3 depthwise, strides)), then bn(1x1 pointwise).

  Maps [B, H, W, C_in] to (output, pre-ReLU map), each [B, H / strides,
  W / strides, features].
  """

  @nn.compact
  def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    channels = x.shape[-1]
    y = depthwise(self.conv, channels, self.strides, 'dw_conv')(x)
    y = nn.relu(self.norm(name='dw_bn')(y))
    preact = self.norm(name='pw_bn')(
      self.conv(self.features, (1, 1), name='pw_conv')(y)
    )
    return nn.relu(preact), preact


class MobileNetV1(Classifier):
  """conv_bn, 13 depthwise-separable blocks, pool, fc; its attributes are
  `Classifier`'s (num_classes 1000 for ImageNet)."""

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> LogitsAndFeatures:
    """[B, H, W, 3] images (224x224 for ImageNet, H and W >= 32) -> (logits [B,
    num_classes], the pooled features [B, 1024] the final linear layer reads),
    float32. `train`: use and update the batch statistics."""
    conv, norm = conv_and_norm(
      self.dtype, train, self.bn_axis_name, torch_conv_kernel_init
    )

    x = conv(32, (3, 3), 2, PAD_1, name='stem_conv')(x)
    x = nn.relu(norm(name='stem_bn')(x))
    for b, (features, strides) in enumerate(BLOCKS, 1):
      x, preact = DepthwiseSeparable(
        features, strides, conv, norm, name=f'block{b}'
      )(x)
      if b in STAGE_ENDS:
        stages.record(self, x, preact)
    return pooled_classifier(x, self.num_classes, self.dtype, 'fc')
