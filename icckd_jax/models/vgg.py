"""VGG with BatchNorm and a single linear classifier, as in the RepDistiller benchmark.

The benchmark's `vgg8`, `vgg11`, `vgg13`, `vgg16` and `vgg19` are its
`vgg*_bn` networks.
"""

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from icckd_jax.models import stages
from icckd_jax.models.resnet import (
  Classifier,
  LogitsAndFeatures,
  small_normal_classifier,
  PAD_1,
  batch_norm,
  conv_kernel_init,
)

# Conv widths of the five blocks; a 2x2 max pool separates consecutive blocks.
CONFIGS = {
  'S': ((64,), (128,), (256,), (512,), (512,)),
  'A': ((64,), (128,), (256, 256), (512, 512), (512, 512)),
  'B': ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
  'D': (
    (64, 64),
    (128, 128),
    (256, 256, 256),
    (512, 512, 512),
    (512, 512, 512),
  ),
  'E': (
    (64, 64),
    (128, 128),
    (256, 256, 256, 256),
    (512, 512, 512, 512),
    (512, 512, 512, 512),
  ),
}


class VGG(Classifier):
  """Five blocks of (conv3x3 with bias, BN, relu), global average pool, fc.

  Records (`models.stages`) the outputs of blocks 1 to 4 (block 0 is
  mdistiller's stem map `feats[0]`) and their last BatchNorm before the
  ReLU.

  Attributes (beside `Classifier`'s):
    cfg: conv widths per block; the last block must have 512 channels.
  """

  cfg: Sequence[Sequence[int]]

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> LogitsAndFeatures:
    """[B, H, W, 3] images (32x32 for CIFAR) -> (logits [B, num_classes], the
    pooled features [B, 512] the final linear layer reads), float32. `train`:
    use and update the batch statistics."""
    norm = batch_norm(train, self.dtype, self.bn_axis_name)
    input_height = x.shape[1]
    for b, widths in enumerate(self.cfg):
      # The reference skips the pool before the last block unless the input is
      # 64x64, so on CIFAR the last block runs at 4x4.
      if 0 < b < 4 or (b == 4 and input_height == 64):
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
      for i, width in enumerate(widths):
        x = nn.Conv(
          width,
          (3, 3),
          1,
          PAD_1,
          kernel_init=conv_kernel_init,
          bias_init=nn.initializers.zeros,
          dtype=self.dtype,
          param_dtype=jnp.float32,
          name=f'block{b}_conv{i}',
        )(x)
        preact = norm(name=f'block{b}_bn{i}')(x)
        x = nn.relu(preact)
      if b > 0:
        stages.record(self, x, preact)
    return small_normal_classifier(
      x, self.num_classes, self.dtype, 'classifier'
    )
