"""Image files to uint8 arrays: decoding, stacking, resizing.

Shared by the loaders that read encoded images (image folders,
Tiny-ImageNet, TFDS sets).
"""

from __future__ import annotations

import concurrent.futures
import functools
import io
import math
import os
from typing import Any, Sequence

import numpy as np
from PIL import Image

from icckd_jax.errors import UserError, one_line

# Modes Pillow decodes grey images into; anything else becomes RGB.
_GREY_MODES = ('1', 'L', 'LA')
# Images per decoding task: large enough to amortise the pool's overhead.
_DECODE_CHUNK = 1024


# PIL's modes of 16-bit grey images (PNG and TIFF open as one of these).
_WIDE_MODES = ('I;16', 'I;16B', 'I;16L', 'I;16N', 'I')


def eight_bit(where: str, name: str, image: Image.Image) -> Image.Image:
  """`image`, a 16-bit grey one scaled to 8 bits (v / 257, rounded): PIL's
  own conversion clips at 255, which saturates almost every pixel.

  Raises:
    UserError: floating-point pixels, or values outside 16 bits.
  """
  if image.mode not in _WIDE_MODES and image.mode != 'F':
    return image
  values = np.asarray(image)
  if image.mode == 'F' or values.min() < 0 or values.max() > 65535:
    raise UserError(
      f'{where}: {name!r} holds {image.mode}-mode pixels outside 8 or 16 '
      'bits; save it as an 8- or 16-bit image'
    )
  return Image.fromarray(
    np.round(values.astype(np.float64) / 257).astype(np.uint8), 'L'
  )


def open_image(
  where: str, name: str, source: Any, rgb: bool = False, rows=None
) -> Image.Image:
  """Decodes one image file to a Pillow image of mode 'L' or 'RGB', with no
  copy of its pixels when the file holds one of those modes already.

  Args:
    where: the data set's path, for error messages.
    name: the file's name within it, for error messages.
    source: a path or the file's bytes.
    rgb: convert grey images to RGB too (sets known to be colour, whose few
      grey files must not change the channel count).
    rows: None, or a function of the file's (width, height) giving how many
      of its top rows the caller reads, called once before the decode: a
      JPEG given as bytes is then decoded down to that row only (the image
      is that tall), its rows bit for bit those of the whole decode.

  Raises:
    UserError: the file is not an image (names it).
  """
  try:
    with Image.open(
      io.BytesIO(source) if isinstance(source, bytes) else source
    ) as opened:
      needed = opened.height if rows is None else rows(*opened.size)
      if needed < opened.height and _stops_early(opened, source):
        image = _top_rows(opened, source, needed)
      else:
        opened.load()
        image = opened
      image = eight_bit(where, name, image)
      mode = 'L' if image.mode in _GREY_MODES and not rgb else 'RGB'
      # convert() copies even an image already in `mode`.
      if image.mode != mode:
        image = image.convert(mode)
  except (OSError, ValueError, Image.DecompressionBombError) as e:
    raise UserError(
      f'{where}: cannot decode {name!r} as an image ({one_line(e)})'
    ) from e
  return image


def _stops_early(opened: Image.Image, source: Any) -> bool:
  """Whether `_top_rows` can decode `opened`: a JPEG in one piece, read
  from bytes."""
  return (
    isinstance(source, bytes)
    and opened.format == 'JPEG'
    and len(opened.tile) == 1
  )


def _top_rows(opened: Image.Image, data: bytes, rows: int) -> Image.Image:
  """The top `rows` rows of the JPEG `opened` (of bytes `data`), decoded
  without the rest.

  libjpeg hands a decode's rows out top down, each the same however far the
  decode goes; Pillow's `load()` always goes to the end, so its decoder is
  driven here, into an image `rows` tall (the ~18% of a RandomResizedCrop's
  decode below its box is spared). libjpeg then refuses to finish the
  decode it was not let finish (an error once the rows are written), while
  data that ends before them leaves the decoder asking for more.
  """
  (tile,) = opened.tile
  decoder = Image._getdecoder(  # pylint: disable=protected-access
    opened.mode, tile.codec_name, tile.args, opened.decoderconfig
  )
  image = Image.new(opened.mode, (opened.width, rows))
  try:
    decoder.setimage(image.im, (0, 0, opened.width, rows))
    _, status = decoder.decode(memoryview(data)[tile.offset :])
  finally:
    decoder.cleanup()
  if status == 0:
    raise OSError('image file is truncated')
  return image


def decode_scaled(
  where: str, name: str, data: bytes, channels: int, min_size
) -> tuple[np.ndarray, tuple[float, float]]:
  """Decodes a JPEG at the smallest of libjpeg-turbo's k/8 DCT scales that
  `min_size` allows, straight into an array (simplejpeg, no Pillow image);
  any other file, or a JPEG libjpeg-turbo cannot convert (CMYK), at full
  size through `open_image`.

  Args:
    where, name: as in `open_image`.
    data: the file's bytes.
    channels: 1 (grey) or 3 (RGB): what the image becomes.
    min_size: a function of the file's (width, height) giving the least
      (width, height) the decode may have; called once, whatever the file.

  Returns:
    [h, w, channels] uint8, and (h / height, w / width): the scale the file
    was decoded at on each axis (1.0: full size).

  Raises:
    UserError: the file is not an image (names it).
  """
  import simplejpeg  # pylint: disable=g-import-not-at-top

  size = None
  if simplejpeg.is_jpeg(data):
    try:
      size = simplejpeg.decode_jpeg_header(data)[1::-1]
    except ValueError:
      pass  # decoded below, or refused in one line
  if size is not None:
    min_width, min_height = min_size(*size)
    try:
      array = simplejpeg.decode_jpeg(
        data,
        colorspace='RGB' if channels == 3 else 'GRAY',
        min_height=min_height,
        min_width=min_width,
      )
      return array, (array.shape[0] / size[1], array.shape[1] / size[0])
    except ValueError:
      pass  # a colour space libjpeg-turbo cannot convert: Pillow's decode
  image = open_image(where, name, data, channels == 3)
  if size is None:
    min_size(*image.size)
  return as_array(image), (1.0, 1.0)


def keeping(boxes, size: int, width: int, height: int) -> tuple[int, int]:
  """The least (width, height) a decode of a [height, width] file may have
  for every box (left, top, right, bottom; the file's coordinates) to keep
  both sides at least `size` pixels once rounded to the decode's pixels
  (`resize_box`), or the file's own size where a box is smaller:
  `decode_scaled`'s `min_size`."""
  side = min(min(r - l, b - t) for l, t, r, b in boxes)
  fraction = min(1.0, (size + 1) / side)
  return math.ceil(width * fraction), math.ceil(height * fraction)


@functools.cache
def _cv2():
  import cv2  # pylint: disable=g-import-not-at-top

  # One thread: the decode workers are the parallelism; OpenCV's own pool
  # in each would only contend for the same cores.
  cv2.setNumThreads(1)
  return cv2


def resize_box(
  array: np.ndarray,
  box,
  scale: tuple[float, float],
  size: int,
  flip: bool = False,
) -> np.ndarray:
  """`box` of a decoded image, resized to [size, size] by OpenCV: bilinear
  where the box is at most twice the size (as `keeping` makes it, bar
  crops over 16x the size), its 2x2 taps then reaching every pixel, else the
  area filter (pixel-area averaging), which costs 4x as much here.

  Args:
    array: [h, w, C] uint8, the file decoded at `scale`.
    box: (left, top, right, bottom) in the file's full-size coordinates;
      each edge rounded to the decode's nearest pixel edge (half a pixel of
      one at least `size` wide, as `keeping` makes it).
    scale: (y, x), the decode's size over the file's.
    size: the side of the result.
    flip: mirror the result left to right (by OpenCV: numpy's copy of a
      reversed view walks it three bytes at a time, at several times the
      cost).

  Returns:
    [size, size, C] uint8, a new array.
  """
  (sy, sx), (h, w) = scale, array.shape[:2]
  left, top, right, bottom = box
  x0, y0 = min(w - 1, round(left * sx)), min(h - 1, round(top * sy))
  x1 = min(w, max(x0 + 1, round(right * sx)))
  y1 = min(h, max(y0 + 1, round(bottom * sy)))
  cv2 = _cv2()
  shrink = max(x1 - x0, y1 - y0) / size
  out = cv2.resize(
    array[y0:y1, x0:x1],
    (size, size),
    interpolation=cv2.INTER_LINEAR if shrink <= 2 else cv2.INTER_AREA,
  )
  if flip:
    out = cv2.flip(out, 1)
  return out.reshape(size, size, array.shape[-1])


def fast_decode_missing() -> list[str]:
  """The packages `decode_scaled` and its resize need that are not
  installed (pip install 'icckd_jax[fast]')."""
  import importlib.util  # pylint: disable=g-import-not-at-top

  return [
    package
    for package, module in (
      ('simplejpeg', 'simplejpeg'),
      ('opencv-python-headless', 'cv2'),
    )
    if importlib.util.find_spec(module) is None
  ]


def decode(where: str, name: str, source: Any, rgb: bool = False) -> np.ndarray:
  """Decodes one image file to [H, W, 1 or 3] uint8 (`open_image`'s
  arguments)."""
  return as_array(open_image(where, name, source, rgb))


def as_array(image: Image.Image) -> np.ndarray:
  """[H, W, C] uint8 of a Pillow image of mode 'L' (C = 1) or 'RGB'."""
  array = np.asarray(image)
  return array[..., None] if array.ndim == 2 else array


def decode_all(
  where: str, names: Sequence[str], sources: Sequence[Any], rgb: bool = False
) -> np.ndarray:
  """Decodes images of one size in a thread pool and stacks them.

  Pillow releases the GIL while decoding, which pays off for large images;
  tiny ones such as CIFAR's are bound by Python overhead, hence the chunks.

  Args:
    where: the data set's path, for error messages.
    names: each file's name, for error messages.
    sources: each file's path or bytes.
    rgb: as in `decode`.

  Returns:
    [len(sources), H, W, C] uint8; C is 1 only if every image is grey.

  Raises:
    UserError: a file is not an image, or the images differ in size.
  """

  def decode_chunk(start: int) -> list[np.ndarray]:
    stop = start + _DECODE_CHUNK
    return [
      decode(where, name, source, rgb)
      for name, source in zip(names[start:stop], sources[start:stop])
    ]

  workers = min(8, os.cpu_count() or 1)
  with concurrent.futures.ThreadPoolExecutor(workers) as pool:
    chunks = pool.map(decode_chunk, range(0, len(sources), _DECODE_CHUNK))
    arrays = [array for chunk in chunks for array in chunk]
  return stack(where, names, arrays)


def stack(
  where: str, names: Sequence[str], arrays: Sequence[np.ndarray]
) -> np.ndarray:
  """Stacks [H, W, C] images of one size; grey ones broadcast across RGB
  when the set mixes the two.

  Returns:
    [len(arrays), H, W, max C] uint8.

  Raises:
    UserError: the images differ in height or width; names the first two
      that differ.
  """
  height, width = arrays[0].shape[:2]
  channels = 1
  for name, array in zip(names, arrays):
    if array.shape[:2] != (height, width):
      raise UserError(
        f'{where}: all images must have one size, but '
        f'{names[0]!r} is {width}x{height} and {name!r} is '
        f'{array.shape[1]}x{array.shape[0]} (width x height)'
      )
    channels = max(channels, array.shape[-1])
  images = np.empty((len(arrays), height, width, channels), np.uint8)
  for i, array in enumerate(arrays):
    images[i] = array
  return images


def resize_center(image: np.ndarray, size: int) -> np.ndarray:
  """Scales the shorter side to `size` (bilinear), then crops the centre.

  The aspect ratio is kept, as in the usual ImageNet evaluation transform
  (Resize then CenterCrop), so nothing is stretched.

  Args:
    image: [H, W, C] uint8, C in {1, 3}.
    size: output height and width.

  Returns:
    [size, size, C] uint8.
  """
  height, width, channels = image.shape
  scale = size / min(height, width)
  new_w = max(size, round(width * scale))
  new_h = max(size, round(height * scale))
  pil = Image.fromarray(image[..., 0] if channels == 1 else image)
  pil = pil.resize((new_w, new_h), Image.BILINEAR)
  top = (new_h - size) // 2
  left = (new_w - size) // 2
  out = np.asarray(pil.crop((left, top, left + size, top + size)))
  return out.reshape(size, size, channels)
