"""The strong augmentation of MLKD's recipe: FixMatch's RandAugment, two
random ops of fourteen at a random magnitude each, then a random cutout.

Source: Jin-Ying/Multi-Level-Logit-Distillation (and sunshangquan/logit-
standardization-KD), mdistiller/dataset/cifar100.py and imagenet.py:
`RandAugment(2, 10)` after the crop and flip of the strong view, its ops
`augment_list()` and `Cutout` on PIL images. Each op here is a small pure
function of one image [H, W, C] (float32 holding uint8 values) and its
magnitude v, written once for both array libraries (`xp`: numpy on the
host, jax.numpy on the device), so the two paths compute the same pixels
from the same draws (tests/test_rand_augment.py); only the draws differ
(numpy generators there, JAX keys here, as for the crop and flip).

Each op's definition, after PIL's (which the published code calls):
  auto_contrast  each channel stretched from [min, max] to [0, 255];
  brightness, color, contrast, sharpness
                 blend(d, x, v) = floor(clip(d + v·(x - d), 0, 255)) with
                 d black, the grey image, the grey mean, the 3x3 smoothed
                 image ([[1,1,1],[1,5,1],[1,1,1]] / 13, border kept);
  equalize       PIL's histogram equalisation per channel;
  posterize      the top max(1, floor(v)) bits kept;
  solarize       x < v ? x : 255 - x;
  rotate, shear_x, shear_y, translate_x, translate_y
                 affine maps, nearest pixel at each output pixel's centre,
                 black outside (PIL's `rotate` about the centre, `transform`
                 with (1, v, 0, 0, 1, 0) etc.; translations v·size);
  cutout         a square of side v·W filled with (125, 123, 114) (its grey
                 value on one channel), its corner at max(0, c - v·W / 2)
                 for a centre c uniform in (1, size] (the code's
                 np.random.uniform(w), whose `low` is w).
The grey image is L = floor(0.299 R + 0.587 G + 0.114 B + 0.5) (one
channel: the image itself). Each op equals PIL's, pixel for pixel, on the
tests' images (tests/test_rand_augment.py compares them).
"""

import math

NUM_OPS = 2  # RandAugment(n=2, ...)
CUTOUT_MAX = 0.5  # the code's cutout_val = random() * 0.5
CUTOUT_FILL = (125.0, 123.0, 114.0)
CHANNELS = (1, 3)  # the images the grey value is defined for


def _blend(xp, degenerate, image, factor):
  return xp.floor(xp.clip(degenerate + factor * (image - degenerate), 0, 255))


def _grey(xp, image):
  """[H, W, 1]: the luma of an RGB image, or a one-channel image itself."""
  if image.shape[-1] == 1:
    return image
  r, g, b = image[..., 0:1], image[..., 1:2], image[..., 2:3]
  return xp.floor(0.299 * r + 0.587 * g + 0.114 * b + 0.5)


def _affine(xp, image, a, b, c, d, e, f):
  """out[y, x] = image[floor(d·u + e·w + f), floor(a·u + b·w + c)] at the
  pixel centre (u, w) = (x + ½, y + ½); black where that is outside."""
  h, w_, _ = image.shape
  w, u = xp.meshgrid(
    xp.arange(h, dtype=xp.float32) + 0.5,
    xp.arange(w_, dtype=xp.float32) + 0.5,
    indexing='ij',
  )
  xs = xp.floor(a * u + b * w + c)
  ys = xp.floor(d * u + e * w + f)
  inside = (xs >= 0) & (xs < w_) & (ys >= 0) & (ys < h)
  xi = xp.clip(xs, 0, w_ - 1).astype(xp.int32)
  yi = xp.clip(ys, 0, h - 1).astype(xp.int32)
  return xp.where(inside[..., None], image[yi, xi], 0.0)


def identity(xp, image, v):
  del xp, v
  return image


def auto_contrast(xp, image, v):
  del v
  lo = xp.min(image, axis=(0, 1))
  hi = xp.max(image, axis=(0, 1))
  scale = 255.0 / xp.maximum(hi - lo, 1.0)
  stretched = xp.floor(xp.clip((image - lo) * scale, 0, 255))
  return xp.where(hi > lo, stretched, image)


def brightness(xp, image, v):
  return _blend(xp, xp.zeros_like(image), image, v)


def color(xp, image, v):
  return _blend(xp, _grey(xp, image), image, v)


def contrast(xp, image, v):
  mean = xp.floor(xp.mean(_grey(xp, image)) + 0.5)
  return _blend(xp, mean, image, v)


def sharpness(xp, image, v):
  h, w, _ = image.shape
  padded = xp.pad(image, ((1, 1), (1, 1), (0, 0)))
  total = sum(
    padded[dy : dy + h, dx : dx + w] for dy in range(3) for dx in range(3)
  )
  smooth = xp.floor((total + 4.0 * image) / 13.0 + 0.5)
  rows = xp.arange(h)[:, None, None]
  cols = xp.arange(w)[None, :, None]
  border = (rows == 0) | (rows == h - 1) | (cols == 0) | (cols == w - 1)
  return _blend(xp, xp.where(border, image, smooth), image, v)


def equalize(xp, image, v):
  """PIL's ImageOps.equalize: per channel, step = #{x < the last level
  present} // 255 and lut[i] = min((step // 2 + #{x < i}) // step, 255),
  the identity where step is 0. The counts come from a sort (memory of
  the image's size, whatever its size)."""
  del v
  h, w, c = image.shape
  levels = xp.arange(256, dtype=xp.float32)
  channels = []
  for ch in range(c):
    flat = image[..., ch].reshape(h * w)
    below = xp.searchsorted(xp.sort(flat), levels, side='left')
    step = below[xp.max(flat).astype(xp.int32)] // 255
    lut = xp.where(
      step > 0,
      xp.minimum((step // 2 + below) // xp.maximum(step, 1), 255),
      levels.astype(below.dtype),
    )
    channels.append(lut[flat.astype(xp.int32)].reshape(h, w))
  return xp.stack(channels, axis=-1).astype(xp.float32)


def posterize(xp, image, v):
  unit = 2.0 ** (8 - xp.maximum(1.0, xp.floor(v)))
  return xp.floor(image / unit) * unit


def solarize(xp, image, v):
  return xp.where(image < v, image, 255.0 - image)


def rotate(xp, image, v):
  """Counter-clockwise by v degrees about the centre (PIL's rotate)."""
  h, w, _ = image.shape
  angle = -v * (math.pi / 180.0)
  cos, sin = xp.cos(angle), xp.sin(angle)
  cx, cy = w / 2.0, h / 2.0
  return _affine(
    xp,
    image,
    cos,
    sin,
    cx - cos * cx - sin * cy,
    -sin,
    cos,
    cy + sin * cx - cos * cy,
  )


def shear_x(xp, image, v):
  return _affine(xp, image, 1.0, v, 0.0, 0.0, 1.0, 0.0)


def shear_y(xp, image, v):
  return _affine(xp, image, 1.0, 0.0, 0.0, v, 1.0, 0.0)


def translate_x(xp, image, v):
  return _affine(xp, image, 1.0, 0.0, v * image.shape[1], 0.0, 1.0, 0.0)


def translate_y(xp, image, v):
  return _affine(xp, image, 1.0, 0.0, 0.0, 0.0, 1.0, v * image.shape[0])


# (op, lowest, highest magnitude), in the code's `augment_list()` order.
OPS = (
  (auto_contrast, 0.0, 1.0),
  (brightness, 0.05, 0.95),
  (color, 0.05, 0.95),
  (contrast, 0.05, 0.95),
  (equalize, 0.0, 1.0),
  (identity, 0.0, 1.0),
  (posterize, 4.0, 8.0),
  (rotate, -30.0, 30.0),
  (sharpness, 0.05, 0.95),
  (shear_x, -0.3, 0.3),
  (shear_y, -0.3, 0.3),
  (solarize, 0.0, 256.0),
  (translate_x, -0.3, 0.3),
  (translate_y, -0.3, 0.3),
)


def _at_magnitude(xp, op, low, high):
  """fn(image, u) = op at magnitude low + (high - low) · u."""
  return lambda image, u: op(xp, image, low + (high - low) * u)


def cutout(xp, image, v, centre_draws):
  """A square of side v·W (none at v = 0) at centre (1 + (W - 1)·(1 - u_x),
  1 + (H - 1)·(1 - u_y)), centre_draws = (u_x, u_y) uniform in [0, 1)."""
  h, w, c = image.shape
  side = v * w
  cx = w + (1.0 - w) * centre_draws[0]
  cy = h + (1.0 - h) * centre_draws[1]
  x0 = xp.floor(xp.maximum(0.0, cx - side / 2.0))
  y0 = xp.floor(xp.maximum(0.0, cy - side / 2.0))
  x1 = xp.floor(xp.minimum(float(w), x0 + side))
  y1 = xp.floor(xp.minimum(float(h), y0 + side))
  rows = xp.arange(h, dtype=xp.float32)[:, None, None]
  cols = xp.arange(w, dtype=xp.float32)[None, :, None]
  inside = (rows >= y0) & (rows <= y1) & (cols >= x0) & (cols <= x1) & (v > 0)
  fill = xp.asarray(CUTOUT_FILL, dtype=xp.float32)
  if c == 1:
    fill = _grey(xp, fill[None, None, :])[0, 0]
  return xp.where(inside, fill, image)


def branches(xp) -> list:
  """[fn(image, u)] of every op in OPS order, u in [0, 1) its magnitude's
  draw (jax.lax.switch's branches)."""
  return [_at_magnitude(xp, *op) for op in OPS]


def apply(xp, image, ops, uniforms, cutout_draws):
  """[H, W, C] uint8 -> the strong view: ops[k] at low + (high - low) ·
  uniforms[k] for k = 0, 1 (OPS's range), then `cutout` at v = CUTOUT_MAX ·
  cutout_draws[0], centre draws cutout_draws[1:3]. The ops are called
  directly: the host's path (`augment.strong` makes the same choice with
  jax.lax.switch).

  Args:
    xp: numpy or jax.numpy.
    image: [H, W, C] uint8, C in CHANNELS.
    ops: [NUM_OPS] int, each in [0, len(OPS)).
    uniforms, cutout_draws: [NUM_OPS] and [3] floats in [0, 1).
  """
  x = image.astype(xp.float32)
  uniforms = xp.asarray(uniforms, dtype=xp.float32)
  for k in range(NUM_OPS):
    x = branches(xp)[int(ops[k])](x, uniforms[k])
  return finish(xp, x, cutout_draws)


def finish(xp, x, cutout_draws):
  """The ops' result [H, W, C] float32 -> uint8 after `cutout` at v =
  CUTOUT_MAX · cutout_draws[0], centre draws cutout_draws[1:3]."""
  draws = xp.asarray(cutout_draws, dtype=xp.float32)
  x = cutout(xp, x, CUTOUT_MAX * draws[0], draws[1:3])
  return x.astype(xp.uint8)
