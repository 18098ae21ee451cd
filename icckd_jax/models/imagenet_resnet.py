"""torchvision's ImageNet ResNets (ResNet18, 34 and 50), layer for layer.

The teachers and students of the KD benchmark's ImageNet table
(mdistiller: ResNet34 -> ResNet18, ResNet50 -> MobileNetV1) are
torchvision's `resnet18/34/50` with its published weights: a 7x7 stride-2
stem, a 3x3 stride-2 max pool, four stages of BasicBlocks (18, 34) or
Bottlenecks (50), each stage after the first halving the map in its first
block, global average pool, fc. The Bottleneck strides its 3x3 convolution
(torchvision's "ResNet v1.5"), and the shortcut is a strided 1x1
convolution and BatchNorm (`layerN.0.downsample.{0,1}`) wherever the shape
changes. The blocks are the CIFAR families' (`resnet.BasicBlock`,
`resnetv2.Bottleneck`), which are these same blocks.

At 224x224 the stages run at 56, 28, 14 and 7 pixels; any size that
survives the five halvings runs the same layers (Tiny-ImageNet's 64x64:
16, 8, 4, 2).

Records (`models.stages`) the four stages' outputs and their last block's
sum before the ReLU: mdistiller's `feats[1:]` and `preact_feats[1:]`
(its ImageNet blocks apply the ReLU at the next block's input, which is
the same network).
"""

from collections.abc import Sequence

import flax.linen as nn
import jax

from icckd_jax.models import stages
from icckd_jax.models.resnet import (
  Classifier,
  LogitsAndFeatures,
  conv_and_norm,
  BasicBlock,
  pooled_classifier,
)
from icckd_jax.models.resnetv2 import Bottleneck

# torchvision's stem: Conv2d(3, 64, 7, stride 2, padding 3) and
# MaxPool2d(3, stride 2, padding 1), whose padding never wins the max.
_STEM_PAD = ((3, 3), (3, 3))
_POOL_PAD = ((1, 1), (1, 1))
STAGE_PLANES = (64, 128, 256, 512)


class ImageNetResNet(Classifier):
  """torchvision's ResNet: 7x7 stem, max pool, four stages, pool, fc.

  Attributes (beside `Classifier`'s):
    blocks: blocks per stage, (2, 2, 2, 2) for ResNet18, (3, 4, 6, 3) for
      ResNet34 and ResNet50.
    bottleneck: Bottleneck blocks (ResNet50) rather than BasicBlocks.
  """

  blocks: Sequence[int]
  bottleneck: bool

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> LogitsAndFeatures:
    """[B, H, W, 3] images (224x224 for ImageNet, H and W >= 32) -> (logits [B,
    num_classes], the pooled features [B, 512] (ResNet18, 34) or [B, 2048]
    (ResNet50) the final linear layer reads), float32. `train`: use and update
    the batch statistics."""
    conv, norm = conv_and_norm(self.dtype, train, self.bn_axis_name)

    x = conv(64, (7, 7), 2, _STEM_PAD, name='conv1')(x)
    x = nn.relu(norm(name='bn1')(x))
    x = nn.max_pool(x, (3, 3), (2, 2), _POOL_PAD)
    for stage, (planes, n) in enumerate(zip(STAGE_PLANES, self.blocks)):
      for i in range(n):
        strides = 2 if stage > 0 and i == 0 else 1
        name = f'layer{stage + 1}_{i}'
        if self.bottleneck:
          block = Bottleneck(planes, strides, conv, norm, name=name)
        else:
          block = BasicBlock(planes, strides, conv, norm, name=name)
        x, preact = block(x)
      stages.record(self, x, preact)
    return pooled_classifier(x, self.num_classes, self.dtype, 'fc')
