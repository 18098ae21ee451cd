"""Wide ResNet (depth 6n+4, pre-activation blocks) as in the RepDistiller benchmark.

Dropout is 0 in every benchmark configuration, so it is left out.
"""

import flax.linen as nn
import jax

from icckd_jax.models import stages
from icckd_jax.models.resnet import (
  Classifier,
  Block,
  LogitsAndFeatures,
  conv_and_norm,
  PAD_1,
  pooled_classifier,
)


class PreActBlock(Block):
  """Pre-activation block: conv(relu(bn(conv(relu(bn(x)))))) + shortcut.

  When the width changes, the 1x1 shortcut conv reads the pre-activated input
  (as in the reference); otherwise the raw input is added.
  Maps [B, H, W, C_in] to (output [B, H / strides, W / strides, features],
  bn1(x) [B, H, W, C_in]: the input's map before the block's first ReLU).
  """

  @nn.compact
  def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    preact = self.norm(name='bn1')(x)
    act = nn.relu(preact)
    y = self.conv(self.features, (3, 3), self.strides, PAD_1, name='conv1')(act)
    y = nn.relu(self.norm(name='bn2')(y))
    y = self.conv(self.features, (3, 3), 1, PAD_1, name='conv2')(y)
    if x.shape[-1] == self.features:
      return x + y, preact
    shortcut = self.conv(
      self.features, (1, 1), self.strides, 'VALID', name='shortcut'
    )(act)
    return shortcut + y, preact


class WideResNet(Classifier):
  """WRN-depth-widen: 3x3 stem, three stages of n PreActBlocks, bn-relu, pool, fc.

  Records (`models.stages`) the three stages' outputs (the blocks' sums: a
  pre-activation network applies no ReLU there) and, as their pre-ReLU
  maps, the BatchNorm that next reads each one: the next stage's first
  bn1, and the final bn1 (as mdistiller's wrn.py defines `preact_feats`).

  Attributes (beside `Classifier`'s):
    depth: 6n + 4 layers.
    widen_factor: stage widths are (16, 32, 64) * widen_factor.
  """

  depth: int
  widen_factor: int

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> LogitsAndFeatures:
    """[B, H, W, 3] images (32x32 for CIFAR) -> (logits [B, num_classes], the
    pooled features [B, 64 * widen_factor] the final linear layer reads),
    float32. `train`: use and update the batch statistics."""
    if (self.depth - 4) % 6:
      raise ValueError(f'WideResNet depth must be 6n+4, got {self.depth}')
    blocks_per_stage = (self.depth - 4) // 6
    conv, norm = conv_and_norm(self.dtype, train, self.bn_axis_name)

    x = conv(16, (3, 3), 1, PAD_1, name='conv1')(x)
    for stage in range(3):
      width = 16 * 2**stage * self.widen_factor
      for i in range(blocks_per_stage):
        strides = 2 if stage > 0 and i == 0 else 1
        x, preact = PreActBlock(
          width, strides, conv, norm, name=f'block{stage + 1}_{i}'
        )(x)
        if stage > 0 and i == 0:  # bn1 of the previous stage's output
          stages.record_preact(self, preact)
      stages.record_stage(self, x)
    preact = norm(name='bn1')(x)
    stages.record_preact(self, preact)
    x = nn.relu(preact)
    # The reference's avg_pool2d(8) is the global mean on its 8x8 CIFAR maps.
    return pooled_classifier(
      x, self.num_classes, self.dtype, 'fc', bias_init=nn.initializers.zeros
    )
