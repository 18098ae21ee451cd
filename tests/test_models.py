"""Tests for the model zoo: exact sizes, output contracts, BatchNorm state."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from icckd_jax import models
from icckd_jax.errors import UserError
import torch_files

# Trainable parameters with num_classes=100 (BatchNorm running statistics are
# buffers, not parameters): `sum(p.numel() for p in m.parameters())` measured
# in PyTorch 2.13.0 on the benchmark's own definitions, RepDistiller's
# models/*.py at commit b84f547 (its 'vgg8'...'vgg19' are vgg*_bn,
# 'MobileNetV2' is mobile_half, 'ResNet50' is models/resnetv2.py), by
# tests/make_references.py, which prints this dict. The three fixtures that
# PyTorch wrote from the same definitions agree
# (../shared/data/repdistiller/README.md: resnet8x4 1,233,540, resnet20
# 278,324, MobileNetV2 812,836).
EXPECTED_PARAMS = {
  'resnet8': 83_892,
  'resnet14': 181_108,
  'resnet20': 278_324,
  'resnet32': 472_756,
  'resnet44': 667_188,
  'resnet56': 861_620,
  'resnet110': 1_736_564,
  'resnet8x4': 1_233_540,
  'resnet32x4': 7_433_860,
  'ResNet50': 23_705_252,
  'wrn_16_1': 180_916,
  'wrn_16_2': 703_284,
  'wrn_40_1': 569_780,
  'wrn_40_2': 2_255_156,
  'vgg8': 3_965_028,
  'vgg11': 9_277_284,
  'vgg13': 9_462_180,
  'vgg16': 14_774_436,
  'vgg19': 20_086_692,
  'MobileNetV2': 812_836,
  'ShuffleV1': 949_258,
  'ShuffleV2': 1_355_528,
}

# The ImageNet family at 1,000 classes: torchvision's resnet18/34/50 and
# mdistiller's MobileNetV1, `sum(p.numel() for p in model.parameters())`
# (the figures torchvision's model documentation gives for the ResNets;
# tests/make_imagenet_references.py measures all four).
IMAGENET_PARAMS = {
  'imagenet_resnet18': 11_689_512,
  'imagenet_resnet34': 21_797_672,
  'imagenet_resnet50': 25_557_032,
  'imagenet_mobilenetv1': 4_231_976,
}

FEATURE_DIMS = {
  'resnet8': 64,
  'resnet14': 64,
  'resnet20': 64,
  'resnet32': 64,
  'resnet44': 64,
  'resnet56': 64,
  'resnet110': 64,
  'resnet8x4': 256,
  'resnet32x4': 256,
  'wrn_16_2': 128,
  'wrn_40_1': 64,
  'wrn_40_2': 128,
  'vgg8': 512,
  'vgg13': 512,
  'wrn_16_1': 64,
  'vgg11': 512,
  'vgg16': 512,
  'vgg19': 512,
  'MobileNetV2': 1280,
  'ShuffleV1': 960,
  'ShuffleV2': 1024,
  'ResNet50': 2048,
  'imagenet_resnet18': 512,
  'imagenet_resnet50': 2048,
  'imagenet_mobilenetv1': 1024,
}


def _images(batch=2):
  return jax.random.normal(jax.random.key(1), (batch, 32, 32, 3), jnp.float32)


def _abstract_init(module):
  """Variables' shapes and dtypes, without running the initialisers."""
  return jax.eval_shape(
    lambda: module.init(jax.random.key(0), _images(), train=False)
  )


def test_registry_is_complete():
  assert set(models.MODEL_NAMES) == set(EXPECTED_PARAMS) | set(IMAGENET_PARAMS)


def test_benchmark_layout_sizes():
  # tests/torch_files.py's hand-written state_dicts (which the importer's
  # tests use as the benchmark's layout) hold every count PyTorch measured.
  assert {
    n: torch_files.parameter_count(n, 100) for n in torch_files.MODEL_NAMES
  } == EXPECTED_PARAMS


@pytest.mark.parametrize('name', sorted(EXPECTED_PARAMS))
def test_parameter_count_matches_reference(name):
  variables = _abstract_init(models.create_model(name, 100))
  count = sum(x.size for x in jax.tree.leaves(variables['params']))
  assert count == EXPECTED_PARAMS[name]


@pytest.mark.parametrize('name', sorted(IMAGENET_PARAMS))
def test_imagenet_parameter_count_at_1000_classes(name):
  variables = jax.eval_shape(
    lambda: models.create_model(name, 1000).init(
      jax.random.key(0), jnp.zeros((1, 224, 224, 3)), train=False
    )
  )
  count = sum(x.size for x in jax.tree.leaves(variables['params']))
  assert count == IMAGENET_PARAMS[name]
  assert torch_files.parameter_count(name, 1000) == count


@pytest.mark.parametrize('name', sorted(FEATURE_DIMS))
@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16])
def test_output_shapes_and_dtypes(name, dtype):
  module = models.create_model(name, 100, dtype=dtype)
  variables = _abstract_init(module)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(variables))
  (logits, features), state = jax.eval_shape(
    lambda v: module.apply(
      v,
      _images(),
      train=False,
      capture_intermediates=True,
      mutable=['intermediates'],
    ),
    variables,
  )
  # Every layer computes in `dtype`; only the model's own outputs are cast.
  layers = {k: v for k, v in state['intermediates'].items() if k != '__call__'}
  assert {x.dtype for x in jax.tree.leaves(layers)} == {jnp.dtype(dtype)}
  assert (logits.shape, logits.dtype) == ((2, 100), jnp.float32)
  assert (features.shape, features.dtype) == (
    (2, FEATURE_DIMS[name]),
    jnp.float32,
  )


@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16])
def test_batch_stats_update_only_in_training(dtype):
  module = models.create_model('resnet8', 10, dtype=dtype)
  x = _images(4)
  variables = module.init(jax.random.key(0), x, train=False)
  stats = variables['batch_stats']

  (logits, features), updates = module.apply(
    variables, x, train=True, mutable=['batch_stats']
  )
  assert logits.shape == (4, 10) and logits.dtype == jnp.float32
  assert features.shape == (4, 64) and features.dtype == jnp.float32
  assert np.all(np.isfinite(logits))
  changed = jax.tree.map(
    lambda a, b: bool(jnp.any(a != b)), stats, updates['batch_stats']
  )
  assert all(jax.tree.leaves(changed))

  _, eval_updates = module.apply(
    variables, x, train=False, mutable=['batch_stats']
  )
  jax.tree.map(
    np.testing.assert_array_equal, stats, eval_updates['batch_stats']
  )
  # Inference needs no mutable collection at all.
  logits_eval, _ = module.apply(variables, x, train=False)
  assert np.all(np.isfinite(logits_eval))


def test_initialisation_follows_pytorch_reference():
  variables = models.create_model('resnet8', 100).init(
    jax.random.key(0), _images(), train=False
  )
  params = variables['params']
  bn = params['layer3_0']['bn2']
  np.testing.assert_array_equal(bn['scale'], 1.0)
  np.testing.assert_array_equal(bn['bias'], 0.0)
  # Kaiming normal, fan_out: std sqrt(2 / (3 * 3 * 64)); 36,864 samples.
  kernel = params['layer3_0']['conv2']['kernel']
  assert abs(float(jnp.std(kernel)) / np.sqrt(2 / (9 * 64)) - 1) < 0.03
  # PyTorch's default Linear: weight and bias in +-1/sqrt(fan_in = 64).
  fc = params['fc']
  assert float(jnp.max(jnp.abs(fc['kernel']))) <= 1 / 8
  assert 0 < float(jnp.max(jnp.abs(fc['bias']))) <= 1 / 8


def _wave_params(params):
  """Replaces every parameter by a fixed sine pattern, scaled by 1/sqrt(fan_in).

  Leaves are visited in `jax.tree.flatten` order (sorted keys), the k-th one
  gets sin(0.7 * i + k) over its row-major elements i in flax layout (conv
  kernels HWIO, dense kernels [in, out]).
  """
  leaves, treedef = jax.tree.flatten(params)
  waves = []
  for k, leaf in enumerate(leaves):
    wave = np.sin(0.7 * np.arange(leaf.size) + k).reshape(leaf.shape)
    fan_in = np.prod(leaf.shape[:-1]) if leaf.ndim > 1 else 1
    waves.append(jnp.asarray(wave / np.sqrt(fan_in), jnp.float32))
  return treedef.unflatten(waves)


# logits[:, :4] in training mode (batch statistics) for the input and weights
# of `test_logits_match_pytorch_reference`, printed by tests/make_references.py:
# the same weights copied (HWIO -> OIHW, [in, out] -> [out, in]) into
# RepDistiller's resnet8, wrn_16_2 and vgg8_bn (commit b84f547), run by
# PyTorch 2.13.0 in train() mode on the CPU in float64. Float32 arithmetic
# alone moves them by ~1e-7 for resnet8 and wrn_16_2, and for vgg8, whose
# last BatchNorm normalises only 2 x 4 x 4 values per channel, by 9e-6 in
# PyTorch (the script prints these) and 6e-5 in these flax models (another
# summation order). The tolerance 5e-4 is above that round-off and far
# below what a wiring mistake does: flax's 'SAME' padding (0, 1) on the
# stride-2 convs instead of PyTorch's padding=1 moves resnet8's logits by
# 1.0e-2 and wrn_16_2's by 8.4e-3.
REFERENCE_LOGITS = {
  'resnet8': [
    [0.11275903, -0.51327555, -0.89790869, -0.86024127],
    [0.11008522, -0.51357882, -0.89569879, -0.85655754],
  ],
  'vgg8': [
    [0.93314377, 0.98555756, 0.57444824, -0.10683304],
    [0.93399116, 0.98574512, 0.57388776, -0.10787796],
  ],
  'wrn_16_2': [
    [-0.80265304, -0.87748565, -0.53962302, 0.05203274],
    [-0.81212604, -0.88586316, -0.54296496, 0.05529813],
  ],
}


@pytest.mark.parametrize('name', sorted(REFERENCE_LOGITS))
def test_logits_match_pytorch_reference(name):
  x = np.sin(0.3 * np.arange(2 * 32 * 32 * 3)).reshape(2, 32, 32, 3)
  x = jnp.asarray(x, jnp.float32)
  module = models.create_model(name, 100)
  shapes = _abstract_init(module)
  # Running statistics do not enter a training-mode forward pass.
  variables = {
    'params': _wave_params(shapes['params']),
    'batch_stats': jax.tree.map(
      lambda s: jnp.zeros(s.shape, s.dtype), shapes['batch_stats']
    ),
  }
  # TF32/bf16 matmuls on accelerators would swamp the tolerance.
  with jax.default_matmul_precision('highest'):
    (logits, _), _ = jax.jit(
      lambda v: module.apply(v, x, train=True, mutable=['batch_stats'])
    )(variables)
  np.testing.assert_allclose(
    logits[:, :4], REFERENCE_LOGITS[name], rtol=0, atol=5e-4
  )


def test_unknown_name_raises_user_error():
  with pytest.raises(UserError, match="config.model='resnet9' is unknown"):
    models.create_model('resnet9', 100)
