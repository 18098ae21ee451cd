"""ImageNet's evaluation transform, as torchvision applies it.

torchvision's reference evaluation, which its published weights and
mdistiller's ImageNet table were measured with, is

  Resize(256) -> CenterCrop(224) -> ToTensor() -> Normalize(mean, std)

on a PIL image decoded to RGB. `Resize(256)` scales the shorter side to
256 and the longer to int(256 * long / short) (truncated), with PIL's
bilinear filter, which widens its support when it shrinks (antialiasing);
`CenterCrop(224)` starts at round((size - 224) / 2) on each axis (Python's
round, half to even). This module reproduces both with Pillow, so the
resized pixels are Pillow's own, and returns uint8: `ToTensor` and
`Normalize` are the device-side normalisation every model of this project
gets, (x - 255 · mean) / (255 · std) in [0, 255] units
(`interop.torch_import.normalization`).

The streaming input's evaluation (`stream`, images of several sizes) is
this transform on the decoded record, at other sizes in the same ratio:
`eval_resize(size)` then the centre `size` (256 / 224 at 224), exactly
(`resize_center_crop`, config.input.decode 'torchvision' and 'exact').
With 'fast'
(`center_crop_box`) only the crop's box of the image is resized, straight
to the crop by OpenCV (`images.resize_box`), from a JPEG decoded at the
smallest DCT scale that keeps the box at least the crop
(`images.decode_scaled`): the same geometry, pixels about three grey
levels from torchvision's, for half the work.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from icckd_jax.data import images

RESIZE = 256
CROP = 224
# torchvision's `Normalize`, which its published weights and mdistiller's
# ImageNet students were trained with, in [0, 1] units.
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def normalization() -> tuple[np.ndarray, np.ndarray]:
  """(MEAN, STD), each [3] float32 in [0, 255] units (this project's
  convention: x is normalised as (x - mean) / std on uint8 pixels)."""
  return tuple(
    (255 * np.asarray(v, np.float64)).astype(np.float32) for v in (MEAN, STD)
  )


def resized_size(
  height: int, width: int, short: int = RESIZE
) -> tuple[int, int]:
  """(height, width) after torchvision's `Resize(short)`: the shorter side
  becomes `short`, the longer keeps the aspect ratio, truncated."""
  if width <= height:
    return int(short * height / width), short
  return short, int(short * width / height)


def center_crop_origin(
  height: int, width: int, crop: int = CROP
) -> tuple[int, int]:
  """(top, left) of torchvision's `CenterCrop(crop)` on a [height, width]
  image at least `crop` on each side."""
  return int(round((height - crop) / 2.0)), int(round((width - crop) / 2.0))


def eval_resize(crop: int) -> int:
  """The shorter side evaluation resizes to before a centre crop of
  `crop`: torchvision's 256 for 224, the same ratio at other sizes."""
  return int(round(crop * RESIZE / CROP))


def resize_center_crop(
  image: np.ndarray | Image.Image, resize: int = RESIZE, crop: int = CROP
) -> np.ndarray:
  """A decoded image through `Resize(resize)` then `CenterCrop(crop)`.

  Args:
    image: [H, W, C] uint8, C in {1, 3}, or a Pillow image of mode 'L' or
      'RGB' (not copied).
    resize: the shorter side after resizing, >= crop.
    crop: the side of the centre crop.

  Returns:
    [crop, crop, C] uint8.
  """
  pil = image if isinstance(image, Image.Image) else _pil(image)
  height, width = resized_size(pil.height, pil.width, resize)
  if (height, width) != (pil.height, pil.width):
    pil = pil.resize((width, height), Image.BILINEAR)
  top, left = center_crop_origin(height, width, crop)
  return images.as_array(pil.crop((left, top, left + crop, top + crop)))


def center_crop_box(
  height: int, width: int, resize: int = RESIZE, crop: int = CROP
) -> tuple[float, float, float, float]:
  """(left, top, right, bottom), in a [height, width] image's coordinates,
  of what `Resize(resize)` then `CenterCrop(crop)` keep of it."""
  resized_h, resized_w = resized_size(height, width, resize)
  top, left = center_crop_origin(resized_h, resized_w, crop)
  sy, sx = height / resized_h, width / resized_w
  return left * sx, top * sy, (left + crop) * sx, (top + crop) * sy


def _pil(image: np.ndarray) -> Image.Image:
  return Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
