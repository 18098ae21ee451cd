"""One step's rows of a streamed batch, made in Grain's workers (`stream.py`):
the training split's order per epoch, each example read from its shard,
decoded, cropped, flipped and (MLKD) strongly augmented, keyed by (seed,
step, view, position) so that a batch is the same whatever the processes,
devices and workers; the evaluation split's rows, padded and masked. A
`split` here is a `stream.StreamSplit` (not imported: stream.py imports
this module)."""

from __future__ import annotations

import functools

import numpy as np

from icckd_jax.data import array_record
from icckd_jax.data import images as images_lib
from icckd_jax.input_pipeline import host_augment
from icckd_jax.input_pipeline import imagenet_preprocess
from icckd_jax.input_pipeline import resident


# Kept for the epoch's steps: ImageNet's permutation costs a worker about
# 30 ms, and it is asked for at every step.
@functools.lru_cache(maxsize=2)
def epoch_order(seed: int, epoch: int, num_examples: int) -> np.ndarray:
  """[num_examples] int64: the training split's order in `epoch` (cached:
  do not write to it)."""
  order = np.random.default_rng(
    [seed, resident.ORDER_STREAM, epoch]
  ).permutation(num_examples)
  order.setflags(write=False)
  return order


class TrainRows:
  """Grain's map from a step to this process's rows of its batch:
  {'images' [V, b, H, W, C] uint8, 'labels' [b] int32, 'indices' [b] int32},
  or {'error': message} for a record that cannot be read (raised as a
  UserError in the training process, not a worker's traceback)."""

  def __init__(self, split, seed, batch_size, rows, num_views,
               crop_padding, flip, strong_view=False):  # fmt: skip
    self.records = array_record.Records(split.info, split.split)
    self.split, self.seed, self.batch_size = split, seed, batch_size
    self.rows, self.num_views = rows, num_views
    self.crop_padding, self.flip = crop_padding, flip
    self.strong_view = strong_view
    self.steps = resident.steps_per_epoch(split.size, batch_size)

  def _rng(self, step, view, position):
    return host_augment.example_rng(
      self.seed, resident.AUGMENT_STREAM, step, view, position
    )

  def _resized_crops(self, index, step, position, out) -> int:
    """Writes the views of example `index` into `out` [V, H, W, C]
    (RandomResizedCrop and flip, decoded as `split.decode` says); returns
    its label."""
    size = self.split.image_shape[0]
    views = []

    def boxes(width, height):
      for v in range(self.num_views):
        rng = self._rng(step, v, position)
        box = host_augment.resized_crop_box(height, width, rng)
        views.append((box, self.flip and rng.random() < 0.5))
      return images_lib.keeping([b for b, _ in views], size, width, height)

    if self.split.decode == 'fast':
      array, scale, label = self.records.scaled(index, boxes)
      for v, (box, flip) in enumerate(views):
        out[v] = images_lib.resize_box(array, box, scale, size, flip)
    else:  # Pillow; 'torchvision' decodes down to the lowest box only
      torchvision = self.split.decode == 'torchvision'

      def rows(width, height):
        boxes(width, height)
        return max(b[3] for b, _ in views) if torchvision else height

      image, label = self.records.image(index, rows)
      crop = (
        host_augment.torchvision_resized_crop
        if torchvision
        else host_augment.resized_crop
      )
      for v, (box, flip) in enumerate(views):
        out[v] = images_lib.as_array(crop(image, box, size, flip))
    self._strong(out, step, position)
    return label

  def _row(self, index, step, position, out) -> int:
    """Writes the views of example `index` into `out`; returns its label."""
    if self.split.recipe == 'resized_crop':
      return self._resized_crops(index, step, position, out)
    image, label = self.records[index]
    for v in range(self.num_views):
      out[v] = host_augment.crop_flip(
        image, self._rng(step, v, position), self.crop_padding, self.flip
      )
    self._strong(out, step, position)
    return label

  def _strong(self, out, step, position) -> None:
    """The last view of `out` [V, H, W, C] through the strong augmentation
    when the run asks for one (after its crop and flip)."""
    if self.strong_view:
      view = self.num_views - 1
      out[view] = host_augment.strong(out[view], host_augment.example_rng(
        self.seed, resident.STRONG_STREAM, step, view, position))  # fmt: skip

  def __call__(self, step: int) -> dict[str, np.ndarray | str]:
    epoch, i = divmod(int(step), self.steps)
    order = epoch_order(self.seed, epoch, self.split.size)
    lo, hi = self.rows
    indices = order[i * self.batch_size + lo : i * self.batch_size + hi]
    images = np.empty(
      (self.num_views, hi - lo, *self.split.image_shape), np.uint8
    )
    labels = np.empty(hi - lo, np.int32)
    for r, index in enumerate(indices):
      try:
        labels[r] = self._row(int(index), int(step), lo + r, images[:, r])
      except array_record.RecordError as e:
        return {'error': str(e)}
    return {
      'images': images,
      'labels': labels,
      'indices': indices.astype(np.int32),
    }


class EvalRows:
  """Grain's map from an evaluation batch's number to this process's rows:
  {'images' [b, H, W, C], 'labels' [b], 'mask' [b] bool}; the last batch is
  padded with example 0, masked out."""

  def __init__(self, split, batch_size, rows):
    self.records = array_record.Records(split.info, split.split)
    self.split, self.batch_size, self.rows = split, batch_size, rows

  def _resized(self, index: int) -> tuple[np.ndarray, int]:
    """([size, size, C], label): torchvision's resize and centre crop of
    example `index` ('torchvision' and 'exact'), or its box alone resized
    from a reduced decode ('fast')."""
    size = self.split.image_shape[0]
    resize = imagenet_preprocess.eval_resize(size)
    if self.split.decode in ('exact', 'torchvision'):
      image, label = self.records.image(index)
      return imagenet_preprocess.resize_center_crop(image, resize, size), label
    boxes = []

    def keeping(width, height):
      boxes.append(
        imagenet_preprocess.center_crop_box(height, width, resize, size)
      )
      return images_lib.keeping(boxes, size, width, height)

    array, scale, label = self.records.scaled(index, keeping)
    return images_lib.resize_box(array, boxes[0], scale, size), label

  def __call__(self, batch: int) -> dict[str, np.ndarray | str]:
    lo, hi = self.rows
    positions = int(batch) * self.batch_size + np.arange(lo, hi)
    mask = positions < self.split.size
    images = np.empty((hi - lo, *self.split.image_shape), np.uint8)
    labels = np.empty(hi - lo, np.int32)
    for r, index in enumerate(np.where(mask, positions, 0)):
      try:
        if self.split.recipe == 'resized_crop':
          images[r], labels[r] = self._resized(int(index))
        else:
          images[r], labels[r] = self.records[int(index)]
      except array_record.RecordError as e:
        return {'error': str(e)}
    return {'images': images, 'labels': labels, 'mask': mask}
