"""Test helper: the benchmark's ShuffleNet V1/V2 forward passes in numpy, NCHW,
on a PyTorch state_dict, written from reading RepDistiller's
models/ShuffleNetv1.py and models/ShuffleNetv2.py (inference mode: BatchNorm
with running statistics). Independent of this project's flax models and of
its importer, so that the two can be compared without PyTorch.
"""

import numpy as np


def conv2d(x, w, stride=1, padding=0, groups=1):
  """torch.nn.functional.conv2d: x [N, C, H, W], w [O, C / groups, kh, kw]."""
  x = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
  n, c, _, _ = x.shape
  out, per_group, kh, kw = w.shape
  windows = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), (2, 3))
  windows = windows[:, :, ::stride, ::stride]  # [N, C, H', W', kh, kw]
  outs = []
  for g in range(groups):
    xs = windows[:, g * per_group : (g + 1) * per_group]
    ws = w[g * (out // groups) : (g + 1) * (out // groups)]
    outs.append(np.einsum('nchwij,ocij->nohw', xs, ws, optimize=True))
  del n, c
  return np.concatenate(outs, axis=1)


def batch_norm(x, state, name, eps=1e-5):
  scale = state[f'{name}.weight'] / np.sqrt(state[f'{name}.running_var'] + eps)
  shift = state[f'{name}.bias'] - state[f'{name}.running_mean'] * scale
  return x * scale[:, None, None] + shift[:, None, None]


def relu(x):
  return np.maximum(x, 0)


def avg_pool_3x3_s2_p1(x):
  """nn.AvgPool2d(3, stride=2, padding=1): zero padding counted (÷ 9)."""
  x = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
  windows = np.lib.stride_tricks.sliding_window_view(x, (3, 3), (2, 3))
  return windows[:, :, ::2, ::2].mean(axis=(-2, -1))


def shuffle(x, groups):
  n, c, h, w = x.shape
  return (
    x.reshape(n, groups, c // groups, h, w)
    .transpose(0, 2, 1, 3, 4)
    .reshape(n, c, h, w)
  )


def _linear_head(out, state):
  features = out.mean(axis=(2, 3))  # avg_pool2d(4) on the 4x4 maps
  return features @ state['linear.weight'].T + state['linear.bias'], features


def shufflev1(x, state, blocks=(4, 8, 4), groups=3):
  """(logits [N, classes], features [N, 960]) of ShuffleV1 on x [N, 3, H, W]."""

  def cbr(x, name, bn, **kw):
    return batch_norm(conv2d(x, state[f'{name}.weight'], **kw), state, bn)

  out = relu(cbr(x, 'conv1', 'bn1'))
  for s, n in enumerate(blocks, 1):
    for i in range(n):
      p, stride = f'layer{s}.{i}', 2 if i == 0 else 1
      mid = state[f'{p}.conv1.weight'].shape[0]
      g = 1 if out.shape[1] == 24 else groups
      y = relu(cbr(out, f'{p}.conv1', f'{p}.bn1', groups=g))
      y = shuffle(y, g)
      y = relu(
        cbr(y, f'{p}.conv2', f'{p}.bn2', stride=stride, padding=1, groups=mid)
      )
      y = cbr(y, f'{p}.conv3', f'{p}.bn3', groups=groups)
      out = relu(
        np.concatenate([y, avg_pool_3x3_s2_p1(out)], 1)
        if stride == 2
        else y + out
      )
  return _linear_head(out, state)


def shufflev2(x, state, blocks=(3, 7, 3)):
  """(logits [N, classes], features [N, 1024]) of ShuffleV2 on x
  [N, 3, H, W]."""

  def cb(x, name, **kw):
    return batch_norm(
      conv2d(x, state[f'{name}.weight'], **kw),
      state,
      name.replace('conv', 'bn'),
    )

  out = relu(cb(x, 'conv1'))
  for s, n in enumerate(blocks, 1):
    p, c = f'layer{s}.0', out.shape[1]
    mid = state[f'{p}.conv2.weight'].shape[0]
    left = cb(out, f'{p}.conv1', stride=2, padding=1, groups=c)
    left = relu(cb(left, f'{p}.conv2'))
    right = relu(cb(out, f'{p}.conv3'))
    right = cb(right, f'{p}.conv4', stride=2, padding=1, groups=mid)
    right = relu(cb(right, f'{p}.conv5'))
    out = shuffle(np.concatenate([left, right], 1), 2)
    for i in range(1, n + 1):
      p, half = f'layer{s}.{i}', int(out.shape[1] * 0.5)
      x1, x2 = out[:, :half], out[:, half:]
      y = relu(cb(x2, f'{p}.conv1'))
      y = cb(y, f'{p}.conv2', padding=1, groups=half)
      y = relu(cb(y, f'{p}.conv3'))
      out = shuffle(np.concatenate([x1, y], 1), 2)
  out = relu(cb(out, 'conv2'))
  return _linear_head(out, state)


def well_scaled(state, seed=0):
  """A copy of a random state_dict with weights scaled by 1/sqrt(fan_in) and
  BatchNorm parameters near identity, so activations stay O(1) in depth."""
  rng = np.random.default_rng(seed)
  out = {}
  for key, value in state.items():
    if value.ndim == 4 or (value.ndim == 2 and key.endswith('weight')):
      out[key] = (value / np.sqrt(np.prod(value.shape[1:]))).astype(np.float32)
    elif key.endswith('.weight'):
      out[key] = rng.uniform(0.5, 1.5, value.shape).astype(np.float32)
    elif key.endswith(('.bias', 'running_mean')):
      out[key] = (0.1 * value).astype(np.float32)
    else:
      out[key] = value
  return out
