r"""Train-step throughput and compiled memory, variants side by side.

Every variant is built, compiled, then timed in interleaved rounds (A B C A B
C ...), so that load from other processes on a shared machine hits all of
them alike; compare the ratios, not the absolute figures, across machines.

  python benchmarks/step_speed.py --model=resnet20 --variants=ce
  python benchmarks/step_speed.py --model=resnet20 \
      --variants=ce,icc_no_cache,icc_features,icc_images
  python benchmarks/step_speed.py --model=resnet8x4 --teacher=resnet32x4 \
      --variants=ce,student_kd
  # a student method trained with another optimiser: `student_M+OPT`
  python benchmarks/step_speed.py --model=resnet8 --teacher=resnet20 \
      --variants=student_kd,student_kd+dot
  python benchmarks/step_speed.py --dtype=bfloat16 --batch_size=512 ...  # GPU
  # Tiny-ImageNet-shaped (64x64, 200 classes) against CIFAR-100-shaped
  python benchmarks/step_speed.py --model=resnet32x4 --num_classes=200 \
      --variants=icc_features,icc_features@64

Data: a synthetic set of `--num_classes` classes (speed does not depend on
pixels), 32x32 unless a variant names another size as `variant@size`; the
crop padding scales with the size (4 pixels at 32).
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
import jax
import numpy as np

from configs import student as student_config
from configs import teacher as teacher_config
from icckd_jax.experiments import ablation_metrics
from icckd_jax.runs import memory as memory_lib
from icckd_jax.data import datasets
from icckd_jax.input_pipeline import resident
from icckd_jax import models
from icckd_jax import parallel
from icckd_jax.stages import student
from icckd_jax.stages import teacher
from icckd_jax.runs import spec

FLAGS = flags.FLAGS
flags.DEFINE_string('model', 'resnet20', 'The network whose step is timed.')
flags.DEFINE_string('teacher', 'resnet56', 'Teacher of the student variants.')
flags.DEFINE_list(
  'variants',
  ['ce', 'icc_features'],
  'ce, icc_no_cache, icc_features, icc_images, student_kd, student_kd_rkd, '
  'student_kd+dot (config.optimizer)',
)
flags.DEFINE_integer('batch_size', 64, 'Global batch.')
flags.DEFINE_integer('steps', 20, 'Timed steps per variant.')
flags.DEFINE_integer('rounds', 4, 'Interleaved rounds the steps are split in.')
flags.DEFINE_string('dtype', 'float32', 'float32 or bfloat16.')
flags.DEFINE_integer('cache_size', 16, 'K of the cache variants.')
flags.DEFINE_integer('num_classes', 100, 'Classes of the synthetic set.')


def _base(config, size=32):
  config.model = FLAGS.model
  config.batch_size = FLAGS.batch_size
  config.dtype = FLAGS.dtype
  config.dataset.name = 'synthetic'
  config.dataset.num_classes = FLAGS.num_classes
  config.dataset.num_train = max(4 * FLAGS.batch_size, 512)
  config.dataset.num_test = 100
  config.dataset.image_size = size
  config.crop_padding = 4 * size // 32
  return config


def _split_variant(variant):
  """'icc_features@64' -> ('icc_features', 64); no '@': size 32."""
  name, _, size = variant.partition('@')
  return name, int(size or 32)


def build(variant, mesh, dataset, size):
  """(config, setup, initial state) of one variant."""
  if variant.startswith('student'):
    config = _base(student_config.get_config(), size)
    method, _, optimizer = variant.removeprefix('student_').partition('+')
    config.distill.method = method
    config.optimizer = optimizer or config.optimizer
    teacher_model = models.create_model(FLAGS.teacher, dataset.num_classes)
    teacher_vars = jax.jit(
      lambda: teacher_model.init(
        jax.random.key(1), np.zeros((1, 32, 32, 3), np.float32), train=False
      ),
      out_shardings=parallel.replicated(mesh),
    )()
    tconf = teacher_config.get_config()
    tconf.model = FLAGS.teacher
    setup = student.build_student(
      spec.from_config(config), dataset, mesh, tconf, teacher_vars
    )
  else:
    config = _base(teacher_config.get_config(), size)
    config.cache.size = FLAGS.cache_size
    if variant == 'ce':
      config.icc.lam = 0.0
    elif variant == 'icc_no_cache':
      config.cache.size = 0
    elif variant in ('icc_features', 'icc_images'):
      config.cache.store = variant.removeprefix('icc_')
    else:
      raise app.UsageError(f'unknown variant {variant}')
    setup = teacher.build_teacher(spec.from_config(config), dataset, mesh)
  state = setup.create_state(mesh)
  return config, setup, state


def main(argv):
  del argv
  mesh = parallel.make_mesh()
  runs = {}
  for variant in FLAGS.variants:
    name, size = _split_variant(variant)
    dataset = datasets.load(
      spec.data_request(_base(teacher_config.get_config(), size).dataset)
    )
    source = resident.ResidentSource.of(dataset)
    config, setup, state = build(name, mesh, dataset, size)
    batches = setup.batches(spec.from_config(config).recipe, source, mesh, 0)
    batch = next(batches)
    compiled = setup.train_step.lower(state, batch, setup.step_args).compile()
    memory = memory_lib.compiled_memory(compiled)
    state, metrics = compiled(state, batch, setup.step_args)
    jax.block_until_ready(metrics)
    runs[variant] = dict(
      compiled=compiled,
      state=state,
      batches=batches,
      args=setup.step_args,
      memory=memory,
      times=[],
    )
  per_round = max(1, FLAGS.steps // FLAGS.rounds)
  for _ in range(FLAGS.rounds):
    for run in runs.values():
      for _ in range(per_round):
        batch = next(run['batches'])
        start = time.perf_counter()
        run['state'], metrics = run['compiled'](
          run['state'], batch, run['args']
        )
        jax.block_until_ready(metrics)
        run['times'].append(time.perf_counter() - start)

  device = jax.devices()[0]
  print(
    f'# {FLAGS.model}, global batch {FLAGS.batch_size}, {FLAGS.dtype}, '
    f'{len(mesh.devices.flat)} x {device.device_kind} ({device.platform})'
  )
  print(
    '| variant | median step ms | images/s | vs first | compiled MiB '
    '(args+out+temp-alias) | temp MiB |'
  )
  print('|---|---|---|---|---|---|')
  first = None
  for variant, run in runs.items():
    stats = ablation_metrics.step_time_stats(
      run['times'], FLAGS.batch_size, skip_first=0
    )
    first = first or stats['images_per_second']
    print(
      f'| {variant} | {1000 * stats["median_step_seconds"]:.1f} | '
      f'{stats["images_per_second"]:.1f} | '
      f'{stats["images_per_second"] / first:.2f} | '
      f'{run["memory"].get("total_bytes", 0) / 2**20:.1f} | '
      f'{run["memory"].get("temp_bytes", 0) / 2**20:.1f} |'
    )
  peak = memory_lib.peak_device_memory()
  # The backend's peak is per process, not per variant: run one variant per
  # process to attribute it.
  print(
    f'process peak device memory: '
    f'{"not reported by this backend" if peak is None else f"{peak / 2**20:.0f} MiB"}'
  )


if __name__ == '__main__':
  app.run(main)
