r"""Whether input.decode='torchvision' makes torchvision's pixels.

On photograph-like JPEGs of ImageNet's shapes (input_speed.py's generator,
quality 90), it draws RandomResizedCrop boxes and flips as the stream draws
them (`host_augment.resized_crop_box`) and makes each 224 crop three ways:
the project's 'torchvision' decode (the JPEG decoded down to the box's
bottom row, the box cut out and resized), its 'exact' one (the box resized
within the whole image), and torchvision's own `F.resized_crop` +
`F.hflip` on the PIL image. It prints how many of the crops are identical
to torchvision's, and how far 'exact''s are from them.

  python benchmarks/torchvision_crops.py      # needs torchvision; ~30 s
"""

import io
import sys

import numpy as np
from PIL import Image

from input_speed import _natural

IMAGES = 256
SIZE = 224


def main() -> int:
  try:
    import torchvision.transforms.functional as F  # pylint: disable=g-import-not-at-top
  except ImportError:
    print('skipped: torchvision is not importable here')
    return 0
  from icckd_jax.data import images  # pylint: disable=g-import-not-at-top
  from icckd_jax.input_pipeline import host_augment  # pylint: disable=g-import-not-at-top

  rng = np.random.default_rng(0)
  same = 0
  exact_pixels = exact_level = 0.0
  for _ in range(IMAGES):
    h, w = int(rng.integers(333, 501)), int(rng.integers(333, 667))
    buffer = io.BytesIO()
    Image.fromarray(_natural(rng, h, w)).save(buffer, 'JPEG', quality=90)
    data = buffer.getvalue()
    box = left, top, right, bottom = host_augment.resized_crop_box(h, w, rng)
    flip = bool(rng.random() < 0.5)
    part = images.open_image('photos', 'one', data, True, lambda *_: bottom)
    ours = np.asarray(
      host_augment.torchvision_resized_crop(part, box, SIZE, flip)
    )
    whole = images.open_image('photos', 'one', data, True)
    exact = np.asarray(host_augment.resized_crop(whole, box, SIZE, flip))
    theirs = F.resized_crop(
      Image.open(io.BytesIO(data)).convert('RGB'), top, left,
      bottom - top, right - left, [SIZE, SIZE],
      F.InterpolationMode.BILINEAR, antialias=True,
    )  # fmt: skip
    theirs = np.asarray(F.hflip(theirs) if flip else theirs).astype(int)
    same += np.array_equal(ours, theirs)
    differ = exact.astype(int) != theirs
    exact_pixels += differ.mean() / IMAGES
    exact_level += np.abs(exact - theirs).mean() / IMAGES
  print(
    f"input.decode='torchvision': {same} of {IMAGES} crops identical to "
    f"torchvision's F.resized_crop (+ hflip); 'exact': {100 * exact_pixels:.1f}% "
    f'of the values differ, by {exact_level:.2f} grey levels on average'
  )
  return 0 if same == IMAGES else 1


if __name__ == '__main__':
  sys.exit(main())
