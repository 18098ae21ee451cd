"""Maps a PyTorch state_dict of a benchmark model onto this project's variables.

The CIFAR-100 KD benchmark (RepDistiller) saves `{'epoch', 'model',
'best_acc', 'optimizer'}` with `model` the network's state_dict; a bare
state_dict, as torchvision publishes its ImageNet weights
(`resnet34-333f7ec4.pth`), is accepted too. Tensor layouts differ between
the frameworks:

  conv weight   [O, I / groups, kh, kw] -> kernel [kh, kw, I / groups, O]
  linear weight [out, in]               -> kernel [in, out]
  BatchNorm weight, bias, running_mean, running_var
                                        -> params scale, bias; batch_stats
                                           mean, var

(`num_batches_tracked` has no counterpart and is ignored.) A flax module's
path maps to the PyTorch module's name by a few rewrite rules per model
family (`_RULES`), written from the benchmark's module definitions
(RepDistiller's, torchvision's ResNets, mdistiller's MobileNetV1).

Each family's teachers were trained on inputs normalised with their data
set's statistics (`normalization`): CIFAR-100's for the CIFAR family,
ImageNet's for the `imagenet_*` models.
"""

import functools
import os
import re
from collections.abc import Mapping
from typing import Any

from absl import logging
import flax
import jax
import jax.numpy as jnp
import numpy as np

from icckd_jax import models
from icckd_jax.input_pipeline import imagenet_preprocess
from icckd_jax.errors import UserError
from icckd_jax.interop import torch_pickle
from icckd_jax.models.imagenet_resnet import ImageNetResNet
from icckd_jax.models.mobilenetv1 import MobileNetV1
from icckd_jax.models.mobilenetv2 import MobileNetV2
from icckd_jax.models.resnet import ResNet
from icckd_jax.models.resnetv2 import BottleneckResNet
from icckd_jax.models.shufflenet import ShuffleNetV1, ShuffleNetV2
from icckd_jax.models.vgg import VGG
from icckd_jax.models.wrn import WideResNet

# The normalisation every benchmark teacher was trained with (its
# dataset/cifar100.py), whatever data set the student reads.
BENCHMARK_MEAN = (0.5071, 0.4867, 0.4408)
BENCHMARK_STD = (0.2675, 0.2565, 0.2761)


def _in_255_units(mean, std) -> tuple[np.ndarray, np.ndarray]:
  return tuple(
    (255 * np.asarray(v, np.float64)).astype(np.float32) for v in (mean, std)
  )


def benchmark_normalization() -> tuple[np.ndarray, np.ndarray]:
  """(mean, std), each [3] float32 in [0, 255] units (this project's
  convention), of the CIFAR-100 benchmark's input normalisation."""
  return _in_255_units(BENCHMARK_MEAN, BENCHMARK_STD)


def normalization(model_name: str) -> tuple[np.ndarray, np.ndarray]:
  """(mean, std), each [3] float32 in [0, 255] units, that a `.pth` teacher
  of `model_name` was trained with: ImageNet's (torchvision's
  `Normalize`) for an `imagenet_*` model, else the CIFAR-100 benchmark's."""
  if model_name.startswith(models.IMAGENET_PREFIX):
    return imagenet_preprocess.normalization()
  return benchmark_normalization()


_IGNORED = ('num_batches_tracked',)


def _sequential_index(stride: int, offset: int):
  """Rewrites the k-th conv or BN of a block to its index in an nn.Sequential
  of (conv, bn, relu) or (conv, bn) groups."""
  return lambda m: f'{m.group(1)}.{stride * int(m.group(2)) + offset}'


# A stage's k-th block: flax 'layerN_k/' is PyTorch's 'layerN.k.'.
_LAYER_BLOCK = (r'^layer(\d)_(\d+)/', r'layer\1.\2.')


def _shortcut(flax_name: str, torch_name: str) -> list[tuple[str, str]]:
  """A projection shortcut: flax NAME_conv and NAME_bn are PyTorch's
  nn.Sequential NAME.0 (conv) and NAME.1 (BN)."""
  return [
    (rf'{flax_name}_conv$', f'{torch_name}.0'),
    (rf'{flax_name}_bn$', f'{torch_name}.1'),
  ]


# (pattern, replacement) applied in order to the '/'-joined flax module path;
# the result is the PyTorch module name.
_RULES = {
  ResNet: [_LAYER_BLOCK, *_shortcut('downsample', 'downsample')],
  WideResNet: [
    (r'^block(\d)_(\d+)/', r'block\1.layer.\2.'),
    (r'shortcut$', 'convShortcut'),
  ],
  VGG: [
    (r'^(block\d)_conv(\d+)$', _sequential_index(3, 0)),
    (r'^(block\d)_bn(\d+)$', _sequential_index(3, 1)),
  ],
  MobileNetV2: [
    (r'^(conv\d)$', r'\1.0'),
    (r'^bn(\d)$', r'conv\1.1'),
    (r'^classifier$', 'classifier.0'),
    (r'^blocks(\d)_(\d+)/', r'blocks.\1.\2.'),
    (
      r'(blocks\.\d\.\d+\.)conv(\d)$',
      lambda m: f'{m.group(1)}conv.{3 * int(m.group(2))}',
    ),
    (
      r'(blocks\.\d\.\d+\.)bn(\d)$',
      lambda m: f'{m.group(1)}conv.{3 * int(m.group(2)) + 1}',
    ),
  ],
  ShuffleNetV1: [_LAYER_BLOCK],
  ShuffleNetV2: [_LAYER_BLOCK],
  BottleneckResNet: [_LAYER_BLOCK, *_shortcut('shortcut', 'shortcut')],
  # torchvision's names for both block types' shortcut.
  ImageNetResNet: [
    _LAYER_BLOCK,
    *_shortcut('(downsample|shortcut)', 'downsample'),
  ],
  # nn.Sequential indices: model.0 is (conv, bn, relu), model.k (conv, bn,
  # relu, conv, bn, relu).
  MobileNetV1: [
    (r'^stem_conv$', 'model.0.0'),
    (r'^stem_bn$', 'model.0.1'),
    (r'^block(\d+)/dw_conv$', r'model.\1.0'),
    (r'^block(\d+)/dw_bn$', r'model.\1.1'),
    (r'^block(\d+)/pw_conv$', r'model.\1.3'),
    (r'^block(\d+)/pw_bn$', r'model.\1.4'),
  ],
}

# (flax collection, leaf name) -> PyTorch tensor name.
_LEAVES = {
  ('params', 'kernel'): 'weight',
  ('params', 'bias'): 'bias',
  ('params', 'scale'): 'weight',
  ('batch_stats', 'mean'): 'running_mean',
  ('batch_stats', 'var'): 'running_var',
}


def to_flax_layout(array: np.ndarray) -> np.ndarray:
  """PyTorch layout -> flax layout (OIHW -> HWIO, [out, in] -> [in, out])."""
  if array.ndim == 4:
    return array.transpose(2, 3, 1, 0)
  if array.ndim == 2:
    return array.T
  return array


def _torch_shape(flax_shape: tuple[int, ...]) -> tuple[int, ...]:
  if len(flax_shape) == 4:
    return tuple(flax_shape[i] for i in (3, 2, 0, 1))
  return tuple(reversed(flax_shape)) if len(flax_shape) == 2 else flax_shape


@functools.lru_cache(maxsize=None)
def torch_layout(model_name: str, num_classes: int) -> dict[str, tuple]:
  """The state_dict a benchmark model has in PyTorch: {tensor name:
  (flax collection, flax path, PyTorch shape)}, in flax's parameter order.

  Raises:
    UserError: `model_name` is not a registered model.
  """
  module = models.create_model(model_name, num_classes)
  shapes = jax.eval_shape(
    lambda: module.init(
      jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False
    )
  )
  rules = _RULES[type(module)]
  layout = {}
  for collection in ('params', 'batch_stats'):
    for path, leaf in flax.traverse_util.flatten_dict(
      shapes[collection]
    ).items():
      name = '/'.join(path[:-1])
      for pattern, replacement in rules:
        name = re.sub(pattern, replacement, name)
      key = f'{name.replace("/", ".")}.{_LEAVES[(collection, path[-1])]}'
      layout[key] = (collection, path, _torch_shape(leaf.shape))
  return layout


def state_dict_of(checkpoint: Any, source: str) -> Mapping[str, np.ndarray]:
  """The network's tensors in a loaded `.pth`: its 'model' entry, or the
  object itself when it is a bare state_dict. A `module.` prefix that
  nn.DataParallel adds to every name is removed."""
  state = checkpoint
  if isinstance(checkpoint, Mapping) and isinstance(
    checkpoint.get('model'), Mapping
  ):
    state = checkpoint['model']
  if not (
    isinstance(state, Mapping)
    and state
    and all(
      isinstance(k, str) and isinstance(v, np.ndarray) for k, v in state.items()
    )
  ):
    raise UserError(
      f'{source}: holds neither a state_dict nor a dict with '
      "a 'model' state_dict"
    )
  if all(k.startswith('module.') for k in state):
    state = {k[len('module.') :]: v for k, v in state.items()}
  return state


def import_variables(
  state: Mapping[str, np.ndarray],
  model_name: str,
  num_classes: int,
  source: str,
) -> dict[str, Any]:
  """This project's variables of `model_name` from a PyTorch state_dict.

  Args:
    state: tensor name -> array, in PyTorch layouts.
    model_name: a registered model, e.g. 'resnet32x4'.
    num_classes: the classes the model must predict.
    source: the file's name, for error messages.

  Returns:
    {'params': ..., 'batch_stats': ...} of float32 numpy arrays, the
    structure `models.create_model(model_name, num_classes).init` returns.

  Raises:
    UserError: one line naming the first tensor of the file (in its order)
      that the model has no place for, has the wrong shape or holds a value
      that is not finite, else the first tensor the model needs that the
      file lacks.
  """
  layout = torch_layout(model_name, num_classes)
  for key, array in state.items():
    if key.rsplit('.', 1)[-1] in _IGNORED:
      continue
    if key not in layout:
      raise UserError(
        f'{source}: tensor {key!r} {list(array.shape)} has no counterpart '
        f'in {model_name}; is the file a {model_name}?'
      )
    expected = layout[key][2]
    if tuple(array.shape) != expected:
      raise UserError(
        f'{source}: tensor {key!r} is {list(array.shape)} but '
        f'{model_name} with {num_classes} classes expects {list(expected)}'
      )
    bad = np.size(array) - np.count_nonzero(np.isfinite(array))
    if bad:
      # A teacher's NaN would train its student on NaN logits, exit 0.
      raise UserError(
        f'{source}: tensor {key!r} holds {bad} NaN or infinite values; '
        'the file is damaged or was saved by a diverged run'
      )
  variables = {'params': {}, 'batch_stats': {}}
  for key, (collection, path, expected) in layout.items():
    if key not in state:
      raise UserError(
        f'{source}: {model_name} needs tensor {key!r} '
        f'{list(expected)}, which the file lacks'
      )
    variables[collection][path] = to_flax_layout(
      np.asarray(state[key], np.float32)
    )
  return {c: flax.traverse_util.unflatten_dict(v) for c, v in variables.items()}


def _classes_in_file(
  state: Mapping[str, np.ndarray], model_name: str, source: str
) -> int:
  """The output width of the file's final linear layer."""
  (key,) = [
    key
    for key, (_, path, _) in torch_layout(model_name, 1).items()
    if path[-1] == 'kernel' and path[0] in models.CLASSIFIER_NAMES
  ]
  if key not in state or state[key].ndim != 2:
    shape = list(state[key].shape) if key in state else 'absent'
    raise UserError(
      f'{source}: {model_name} needs a classifier tensor '
      f'{key!r} [classes, features], the file has {shape}'
    )
  return int(state[key].shape[0])


def check_source(
  path: str, model_name: str, path_field: str, model_field: str
) -> None:
  """One-line UserErrors, before anything is read, for a `.pth` setting:
  `model_field` must name a zoo model and `path_field` an existing file."""
  if model_name not in models.MODEL_NAMES:
    raise UserError(
      f'{model_field}={model_name!r} must name the architecture '
      f'of {path_field}; choose one of: '
      f'{", ".join(models.MODEL_NAMES)}'
    )
  if not os.path.isfile(path):
    raise UserError(f'{path_field}={path!r} is not a file')


def load_checkpoint(
  path: str, model_name: str, num_classes: int | None = None
) -> dict[str, Any]:
  """Reads a benchmark `.pth` file into `model_name`'s variables.

  Args:
    path: the `.pth` file.
    model_name: a registered model, the file's architecture.
    num_classes: the classes the model must predict; None takes them from
      the file's classifier.

  The optimizer state and other entries of the file are ignored. See
  `import_variables` for the result and the errors.
  """
  models.create_model(model_name, 1)  # an unknown name fails here
  checkpoint = torch_pickle.load(path)
  if isinstance(checkpoint, Mapping) and 'best_acc' in checkpoint:
    logging.info(
      '%s: saved at epoch %s with best test top-1 %s',
      path,
      checkpoint.get('epoch'),
      np.asarray(checkpoint['best_acc']).round(2),
    )
  state = state_dict_of(checkpoint, path)
  if num_classes is None:
    num_classes = _classes_in_file(state, model_name, path)
  return import_variables(state, model_name, num_classes, path)
