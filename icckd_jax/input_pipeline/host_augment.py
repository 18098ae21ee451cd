"""The streaming path's augmentation, in numpy on the host (Grain workers).

Each example's randomness is its own generator, seeded by (seed, stream,
step, view, position in the global batch): the key `input_pipeline` folds
together on the device, so the pixels do not depend on which process or
worker augments the example, nor in which order.

A strong view (`source.TrainFeed.strong_view`) then goes through
`strong`, with a generator of its own stream.

Two recipes, by the images' sizes:

  crop          one image size (CIFAR-like sets): zero padding, random crop
                and flip, as the resident path (`augment.random_crop_flip`);
                evaluation sees the image as it is.
  resized_crop  images of several sizes (ImageNet): RandomResizedCrop
                (scale 0.08-1, ratio 3/4-4/3) to the training size and flip;
                evaluation is torchvision's resize to 256/224 of the size
                and centre crop (`imagenet_preprocess.resize_center_crop`).
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

from icckd_jax.input_pipeline import rand_augment

RECIPES = ('crop', 'resized_crop')


def example_rng(
  seed: int, stream: int, step: int, view: int, position: int
) -> np.random.Generator:
  """The generator of one view of one example of one step."""
  return np.random.default_rng([seed, stream, step, view, position])


def crop_flip(
  image: np.ndarray, rng: np.random.Generator, pad: int, flip: bool
) -> np.ndarray:
  """[H, W, C] uint8 -> [H, W, C]: a random crop of the zero-padded image,
  then a random horizontal flip."""
  h, w, _ = image.shape
  if pad:
    padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)))
    y, x = rng.integers(0, 2 * pad + 1, size=2)
    image = padded[y : y + h, x : x + w]
  if flip and rng.random() < 0.5:
    image = image[:, ::-1]
  return np.ascontiguousarray(image)


def strong(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """[H, W, C] uint8 -> [H, W, C] uint8: `rand_augment.apply` with draws
  from `rng` (as `augment.strong` draws them from a key)."""
  ops = rng.integers(0, len(rand_augment.OPS), rand_augment.NUM_OPS)
  uniforms = rng.random(rand_augment.NUM_OPS)
  cutout = rng.random(3)
  return rand_augment.apply(np, image, ops, uniforms, cutout)


def _resize(image: np.ndarray, width: int, height: int, box=None) -> np.ndarray:
  """Bilinear resize of `image` (or its `box`, (left, top, right, bottom))."""
  channels = image.shape[-1]
  pil = Image.fromarray(image[..., 0] if channels == 1 else image)
  out = np.asarray(pil.resize((width, height), Image.BILINEAR, box=box))
  return out.reshape(height, width, channels)


def resized_crop_flip(
  image: np.ndarray,
  rng: np.random.Generator,
  size: int,
  flip: bool,
  scale: tuple[float, float] = (0.08, 1.0),
  ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> np.ndarray:
  """[H, W, C] uint8 -> [size, size, C]: torchvision's RandomResizedCrop
  (ten tries at an area fraction in `scale` and an aspect ratio in `ratio`,
  log-uniform; else the centre crop of the clamped ratio), then a flip."""
  h, w, _ = image.shape
  area = h * w
  box = None
  for _ in range(10):
    target = area * rng.uniform(*scale)
    aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
    cw = int(round(math.sqrt(target * aspect)))
    ch = int(round(math.sqrt(target / aspect)))
    if 0 < cw <= w and 0 < ch <= h:
      top = int(rng.integers(0, h - ch + 1))
      left = int(rng.integers(0, w - cw + 1))
      box = (left, top, left + cw, top + ch)
      break
  if box is None:
    aspect = w / h
    if aspect < ratio[0]:
      cw, ch = w, int(round(w / ratio[0]))
    elif aspect > ratio[1]:
      cw, ch = int(round(h * ratio[1])), h
    else:
      cw, ch = w, h
    top, left = (h - ch) // 2, (w - cw) // 2
    box = (left, top, left + cw, top + ch)
  out = _resize(image, size, size, box)
  if flip and rng.random() < 0.5:
    out = out[:, ::-1]
  return np.ascontiguousarray(out)
