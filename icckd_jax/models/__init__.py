"""The knowledge-distillation benchmark models, by name: the CIFAR-100
family (RepDistiller's) and the ImageNet family (`imagenet_*`:
torchvision's ResNets and mdistiller's MobileNetV1).

Every model maps [B, H, W, 3] NHWC images to `(logits, features)`: float32
logits [B, num_classes] and the float32 pooled penultimate features [B, D] that
feed the final linear layer. Applied with 'intermediates' mutable, it also
records each stage's output map (`models.stages`).
"""

import functools
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from icckd_jax.errors import UserError
from icckd_jax.models.imagenet_resnet import ImageNetResNet
from icckd_jax.models.mobilenetv1 import MobileNetV1
from icckd_jax.models.mobilenetv2 import MobileNetV2
from icckd_jax.models.resnet import ResNet
from icckd_jax.models.resnetv2 import BottleneckResNet
from icckd_jax.models.shufflenet import ShuffleNetV1, ShuffleNetV2
from icckd_jax.models.vgg import CONFIGS as VGG_CONFIGS
from icckd_jax.models.vgg import VGG
from icckd_jax.models.wrn import WideResNet

_NARROW = (16, 16, 32, 64)
_WIDE = (32, 64, 128, 256)

_BUILDERS = {
  'resnet8': functools.partial(ResNet, 8, _NARROW),
  'resnet14': functools.partial(ResNet, 14, _NARROW),
  'resnet20': functools.partial(ResNet, 20, _NARROW),
  'resnet32': functools.partial(ResNet, 32, _NARROW),
  'resnet44': functools.partial(ResNet, 44, _NARROW),
  'resnet56': functools.partial(ResNet, 56, _NARROW),
  'resnet110': functools.partial(ResNet, 110, _NARROW),
  'resnet8x4': functools.partial(ResNet, 8, _WIDE),
  'resnet32x4': functools.partial(ResNet, 32, _WIDE),
  'ResNet50': functools.partial(BottleneckResNet, (3, 4, 6, 3)),
  'wrn_16_1': functools.partial(WideResNet, 16, 1),
  'wrn_16_2': functools.partial(WideResNet, 16, 2),
  'wrn_40_1': functools.partial(WideResNet, 40, 1),
  'wrn_40_2': functools.partial(WideResNet, 40, 2),
  'vgg8': functools.partial(VGG, VGG_CONFIGS['S']),
  'vgg11': functools.partial(VGG, VGG_CONFIGS['A']),
  'vgg13': functools.partial(VGG, VGG_CONFIGS['B']),
  'vgg16': functools.partial(VGG, VGG_CONFIGS['D']),
  'vgg19': functools.partial(VGG, VGG_CONFIGS['E']),
  'MobileNetV2': MobileNetV2,
  'ShuffleV1': ShuffleNetV1,
  'ShuffleV2': ShuffleNetV2,
  'imagenet_resnet18': functools.partial(ImageNetResNet, (2, 2, 2, 2), False),
  'imagenet_resnet34': functools.partial(ImageNetResNet, (3, 4, 6, 3), False),
  'imagenet_resnet50': functools.partial(ImageNetResNet, (3, 4, 6, 3), True),
  'imagenet_mobilenetv1': MobileNetV1,
}
# The models whose teachers come with ImageNet's input statistics.
IMAGENET_PREFIX = 'imagenet_'


MODEL_NAMES = tuple(_BUILDERS)


def create_model(
  name: str,
  num_classes: int,
  *,
  dtype: Any = jnp.float32,
  bn_axis_name: str | None = None,
) -> nn.Module:
  """Builds a benchmark model.

  Args:
    name: one of `MODEL_NAMES`.
    num_classes: size of the logits.
    dtype: compute dtype (e.g. jnp.bfloat16); parameters are always float32.
    bn_axis_name: mesh axis over which BatchNorm averages batch statistics
      (e.g. 'data' under `shard_map`), or None for per-device statistics.

  Returns:
    An unbound module called as `module.apply(variables, x, train=...)` on
    [B, H, W, 3] images, returning `(logits [B, num_classes],
    features [B, D])`, both float32.

  Raises:
    UserError: `name` is not a registered model.
  """
  if name not in _BUILDERS:
    raise UserError(
      f'config.model={name!r} is unknown; choose one of: '
      f'{", ".join(MODEL_NAMES)}'
    )
  return _BUILDERS[name](
    num_classes=num_classes, dtype=dtype, bn_axis_name=bn_axis_name
  )


# The final linear layer of each family, named as in the benchmark.
CLASSIFIER_NAMES = ('fc', 'linear', 'classifier')


def num_classes(params: Any) -> int:
  """The number of classes a model's `params` predict: the output width of
  its final linear layer ('fc', 'linear' or 'classifier', by family)."""
  (kernel,) = [
    params[name]['kernel'] for name in CLASSIFIER_NAMES if name in params
  ]
  return kernel.shape[-1]
