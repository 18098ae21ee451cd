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
                and centre crop (`imagenet_preprocess`).

`resized_crop` draws its boxes from the file's size alone, before the
decode. With config.input.decode='torchvision' a JPEG is decoded down to
the lowest box's bottom row only, each box cut out of the Pillow image and
resized: torchvision's RandomResizedCrop on a PIL image, pixel for pixel.
'exact' (what streamed runs decoded before 'torchvision' existed) decodes
the whole image and resizes each box within it, which differs from
torchvision on the boxes' edges (`resized_crop`). With 'fast' the stream
decodes a JPEG at the smallest DCT scale that keeps every box at least the
training size (`images.decode_scaled`, `images.keeping`) and resizes each
box with OpenCV (`images.resize_box`: bilinear, the area filter past 2x).
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


def resized_crop_box(
  height: int,
  width: int,
  rng: np.random.Generator,
  scale: tuple[float, float] = (0.08, 1.0),
  ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> tuple[int, int, int, int]:
  """(left, top, right, bottom) of torchvision's RandomResizedCrop on a
  [height, width] image: ten tries at an area fraction in `scale` and an
  aspect ratio in `ratio`, log-uniform; else the centre crop of the clamped
  ratio."""
  area = height * width
  for _ in range(10):
    target = area * rng.uniform(*scale)
    aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
    cw = int(round(math.sqrt(target * aspect)))
    ch = int(round(math.sqrt(target / aspect)))
    if 0 < cw <= width and 0 < ch <= height:
      top = int(rng.integers(0, height - ch + 1))
      left = int(rng.integers(0, width - cw + 1))
      return left, top, left + cw, top + ch
  aspect = width / height
  if aspect < ratio[0]:
    cw, ch = width, int(round(width / ratio[0]))
  elif aspect > ratio[1]:
    cw, ch = int(round(height * ratio[1])), height
  else:
    cw, ch = width, height
  top, left = (height - ch) // 2, (width - cw) // 2
  return left, top, left + cw, top + ch


def resized_crop(image: Image.Image, box, size: int, flip: bool) -> Image.Image:
  """`box` of `image` resized to [size, size] (bilinear) and flipped if
  `flip` (input.decode='exact'): Pillow's resize of the box within the
  image, whose filter reaches up to a pixel (or a scale's worth) past the
  box's edges. So its outermost rows and columns differ from
  `torchvision_resized_crop`'s (which clamps the filter at the box), and
  the order of Pillow's two passes (each rounding to 8 bits) hangs on the
  whole image's size."""
  out = image.resize((size, size), Image.BILINEAR, box=box)
  return out.transpose(Image.FLIP_LEFT_RIGHT) if flip else out


def torchvision_resized_crop(
  image: Image.Image, box, size: int, flip: bool
) -> Image.Image:
  """`box` of `image` cut out, resized to [size, size] (bilinear) and
  flipped if `flip`: what torchvision's RandomResizedCrop and
  RandomHorizontalFlip do to a PIL image given the same box
  (input.decode='torchvision'). Only the box's pixels count, so `image`
  need hold no row below it."""
  out = image.crop(box).resize((size, size), Image.BILINEAR)
  return out.transpose(Image.FLIP_LEFT_RIGHT) if flip else out
