r"""The pipeline-cache ablation (docs/method.md §6): the cache removed, the default
feature cache, and the image cache; teacher and student, every seed.

  python launch.py --config=configs/ablation_cache.py --workdir=workdirs/cache
  # after the margin sweep with the same store: its δ = 0.4 runs are this
  # sweep's `features` runs, not trained again
  python launch.py --config=configs/ablation_cache.py:cpu \
      --workdir=workdirs/cache --config.store=workdirs/store \
      --config.base.teacher.dataset.path=path/to/cifar10-folder.tar.gz

The image cache re-embeds K·B cached images every step (K = cache.size), so
its teacher steps cost several times the others.
"""

import ml_collections

from configs import sweep_common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = sweep_common.sweep_config(arg)
  c.settings = (
    'no_cache: teacher.cache.size=0',
    'features: teacher.cache.store="features"',
    'images: teacher.cache.store="images"',
  )
  return c
