"""The strong view's RandAugment (icckd_jax/input_pipeline/rand_augment.py):
each op against PIL (which the published code calls) and by hand, the same
pixels from numpy and jax.numpy, and the device's keyed strong view
(augment.strong) against the host's definition of the same draws."""

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
from PIL import ImageDraw
from PIL import ImageEnhance
from PIL import ImageOps
import pytest

from icckd_jax import parallel
from icckd_jax.input_pipeline import augment
from icckd_jax.input_pipeline import host_augment
from icckd_jax.input_pipeline import rand_augment
from icckd_jax.input_pipeline import resident

# Each op as the published code writes it on a PIL image
# (mdistiller/dataset/cifar100.py).
PIL_OPS = {
  'auto_contrast': lambda im, v: ImageOps.autocontrast(im),
  'brightness': lambda im, v: ImageEnhance.Brightness(im).enhance(v),
  'color': lambda im, v: ImageEnhance.Color(im).enhance(v),
  'contrast': lambda im, v: ImageEnhance.Contrast(im).enhance(v),
  'equalize': lambda im, v: ImageOps.equalize(im),
  'identity': lambda im, v: im,
  'posterize': lambda im, v: ImageOps.posterize(im, max(1, int(v))),
  'rotate': lambda im, v: im.rotate(v),
  'sharpness': lambda im, v: ImageEnhance.Sharpness(im).enhance(v),
  'shear_x': lambda im, v: im.transform(
    im.size, Image.AFFINE, (1, v, 0, 0, 1, 0)
  ),
  'shear_y': lambda im, v: im.transform(
    im.size, Image.AFFINE, (1, 0, 0, v, 1, 0)
  ),
  'solarize': lambda im, v: ImageOps.solarize(im, v),
  'translate_x': lambda im, v: im.transform(
    im.size, Image.AFFINE, (1, 0, v * im.size[0], 0, 1, 0)
  ),
  'translate_y': lambda im, v: im.transform(
    im.size, Image.AFFINE, (1, 0, 0, 0, 1, v * im.size[1])
  ),
}
DRAWS = (0.1, 0.5, 0.93)  # magnitude draws u: low + (high - low) · u


def _images():
  """A noisy and a smooth 32x32 RGB image."""
  noisy = np.random.default_rng(0).integers(0, 256, (32, 32, 3), np.uint8)
  y, x = np.mgrid[0:32, 0:32]
  smooth = np.stack([(7 * x + 3 * y) % 256, 2 * x + 50, 5 * y + 20], -1)
  return noisy, smooth.astype(np.uint8)


def _magnitude(low, high, u):
  return np.float32(low + (high - low) * np.float32(u))


def test_every_op_of_the_published_list_is_there():
  assert [op.__name__ for op, _, _ in rand_augment.OPS] == list(PIL_OPS)


@pytest.mark.parametrize('image', _images(), ids=['noisy', 'smooth'])
def test_each_op_equals_pil(image):
  for op, low, high in rand_augment.OPS:
    for u in DRAWS:
      v = _magnitude(low, high, u)
      ours = op(np, image.astype(np.float32), v)
      theirs = np.asarray(
        PIL_OPS[op.__name__](Image.fromarray(image), float(v))
      )
      np.testing.assert_array_equal(ours, theirs, err_msg=f'{op.__name__} {v}')


def test_ops_by_hand():
  row = np.array([0, 127, 128, 255], np.float32).reshape(1, 4, 1)
  ops = {op.__name__: op for op, _, _ in rand_augment.OPS}
  np.testing.assert_array_equal(
    ops['solarize'](np, row, 128.0).ravel(), [0, 127, 127, 0]
  )
  np.testing.assert_array_equal(
    ops['posterize'](np, row, 4.9).ravel(), [0, 112, 128, 240]
  )
  np.testing.assert_array_equal(ops['brightness'](np, row, 0.0), 0 * row)
  # Shifted by v·W = 1 pixel: each output pixel reads its right neighbour.
  np.testing.assert_array_equal(
    ops['translate_x'](np, row, 0.25).ravel(), [127, 128, 255, 0]
  )
  # Three levels of 300 pixels: step = (900 - 300) // 255 = 2, so
  # lut = (1 + #below) // 2: 0, 150 and 300, clipped to 255 (as PIL does).
  levels = np.repeat(np.float32([10, 100, 200]), 300).reshape(1, 900, 1)
  np.testing.assert_array_equal(
    np.unique(ops['equalize'](np, levels, 0.0)), [0, 150, 255]
  )
  # Fewer pixels than levels to spread: the identity.
  two = np.array([10, 10, 200, 200], np.float32).reshape(1, 4, 1)
  np.testing.assert_array_equal(ops['equalize'](np, two, 0.0), two)


@pytest.mark.parametrize('draws', [(0.3, 0.2, 0.7), (0.9, 0.99, 0.01)])
def test_cutout_equals_the_published_rectangle(draws):
  """The code's CutoutAbs: a centre from np.random.uniform(w) (low w, high
  1), its corner at max(0, c - v·W / 2), filled with ImageDraw."""
  image = _images()[0]
  v = np.float32(rand_augment.CUTOUT_MAX * np.float32(draws[0]))
  ours = rand_augment.cutout(
    np, image.astype(np.float32), v, np.float32(draws[1:])
  )
  side = float(v) * 32
  c = [32 + (1 - 32) * float(np.float32(d)) for d in draws[1:]]
  x0, y0 = (int(max(0, ci - side / 2.0)) for ci in c)
  pil = Image.fromarray(image)
  ImageDraw.Draw(pil).rectangle(
    (x0, y0, min(32, x0 + side), min(32, y0 + side)), (125, 123, 114)
  )
  np.testing.assert_array_equal(ours, np.asarray(pil))
  assert (ours != image).any()


@pytest.mark.slow  # each op eagerly in jax.numpy (~15 s on 2 loaded cores)
def test_each_op_is_the_same_from_numpy_and_jax():
  image = _images()[0]
  for op, low, high in rand_augment.OPS:
    for u in DRAWS:
      v = _magnitude(low, high, u)
      np.testing.assert_array_equal(
        op(jnp, jnp.asarray(image, jnp.float32), jnp.float32(v)),
        op(np, image.astype(np.float32), v),
        err_msg=op.__name__,
      )


def test_one_channel_images():
  grey = _images()[1][..., :1]
  out = rand_augment.apply(np, grey, [2, 3], [0.5, 0.5], [0.9, 0.5, 0.5])
  assert out.shape == grey.shape and out.dtype == np.uint8
  assert 123 in out  # the fill's grey value


def _draws(key):
  """The draws `augment.strong` takes from one example's key."""
  k_ops, k_magnitudes, k_cutout = jax.random.split(key, 3)
  return (
    jax.random.randint(k_ops, (2,), 0, len(rand_augment.OPS)),
    jax.random.uniform(k_magnitudes, (2,)),
    jax.random.uniform(k_cutout, (3,)),
  )


@pytest.mark.slow  # compiles the fourteen ops under vmap (~10 s on 2 cores)
def test_the_devices_strong_view_is_the_hosts_definition_of_its_draws():
  images = np.stack([*_images(), *_images()[::-1]])
  keys = augment.example_keys(jax.random.key(7), jnp.arange(4))
  strong = jax.jit(augment.strong)
  out = np.asarray(strong(jnp.asarray(images), keys))
  for image, key, got in zip(images, keys, out):
    ops, uniforms, cutout = jax.device_get(_draws(key))
    np.testing.assert_array_equal(
      got, rand_augment.apply(np, image, ops, uniforms, cutout)
    )
  np.testing.assert_array_equal(strong(jnp.asarray(images), keys), out)
  other = augment.example_keys(jax.random.key(8), jnp.arange(4))
  assert (np.asarray(strong(jnp.asarray(images), other)) != out).any()


@pytest.mark.slow  # compiles the batch maker with its strong view
def test_the_resident_strong_view_leaves_the_weak_one_and_needs_no_device():
  """View 0 is the crop and flip it always was; view 1 is RandAugment on
  top of its own crop and flip; the batch is the same on 1 and 4 devices."""
  images = np.random.default_rng(1).integers(0, 256, (16, 8, 8, 3), np.uint8)
  split_labels = np.arange(16, dtype=np.int32)
  indices = jnp.arange(8, dtype=jnp.int32)

  def batch(devices, strong):
    mesh = parallel.make_mesh(devices)
    split = resident.to_device(images, split_labels, mesh)
    make = resident.make_batch_fn(mesh, 3, 2, 2, True, strong)
    return np.asarray(make(split, indices, 5)[0])

  plain, strong = batch(1, False), batch(1, True)
  np.testing.assert_array_equal(strong[0], plain[0])
  keys = augment.example_keys(
    jax.random.fold_in(
      jax.random.fold_in(
        jax.random.fold_in(jax.random.key(3), resident.STRONG_STREAM), 5
      ),
      1,
    ),
    jnp.arange(8),
  )
  np.testing.assert_array_equal(
    strong[1], np.asarray(jax.jit(augment.strong)(plain[1], keys))
  )
  np.testing.assert_array_equal(batch(4, True), strong)


def test_the_hosts_strong_view_is_keyed_by_its_generator():
  image = _images()[0]
  rng = lambda: host_augment.example_rng(0, resident.STRONG_STREAM, 5, 1, 2)  # noqa: E731
  a, b = host_augment.strong(image, rng()), host_augment.strong(image, rng())
  np.testing.assert_array_equal(a, b)
  draws = rng()
  ops, uniforms, cutout = (
    draws.integers(0, 14, 2),
    draws.random(2),
    draws.random(3),
  )
  np.testing.assert_array_equal(
    a, rand_augment.apply(np, image, ops, uniforms, cutout)
  )
  other = host_augment.example_rng(0, resident.STRONG_STREAM, 6, 1, 2)
  assert (host_augment.strong(image, other) != a).any()
