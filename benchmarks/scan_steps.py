r"""k train steps per dispatch (a `lax.scan` over k batches) against one.

The train loop dispatches one jitted step per batch; on a device that waits
for the host between small steps, scanning over k batches in one dispatch
could pay. Each k is compiled, then all are timed in interleaved rounds
(k=1, k=4, ..., k=1, ...), so load from other processes hits them alike:
compare the ratios. Batches are built on the device beforehand, so only the
dispatch differs.

  python benchmarks/scan_steps.py --model=resnet8 --batch_size=8 --ks=1,4,16
  python benchmarks/scan_steps.py --model=resnet32x4 --batch_size=64 \
      --dtype=bfloat16 --ks=1,4,16   # on a GPU

Data: CIFAR-10-shaped synthetic images (speed does not depend on pixels).
Prints one row per k: median seconds per step, images/s, ratio to k = 1.
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

from configs import teacher as teacher_config
from icckd_jax.data import datasets
from icckd_jax.input_pipeline import resident
from icckd_jax import parallel
from icckd_jax.stages import teacher
from icckd_jax.runs import spec

FLAGS = flags.FLAGS
flags.DEFINE_string('model', 'resnet8', 'The teacher network.')
flags.DEFINE_integer('batch_size', 8, 'Global batch.')
flags.DEFINE_list('ks', ['1', '4', '16'], 'Steps per dispatch to compare.')
flags.DEFINE_integer(
  'steps', 96, 'Timed steps per k and round (a multiple of every k).'
)
flags.DEFINE_integer('rounds', 3, 'Interleaved rounds.')
flags.DEFINE_string('dtype', 'float32', 'float32 or bfloat16.')
flags.DEFINE_float('lam', 0.1, 'λ: 0 times the cross-entropy teacher.')


def scan_step(train_step, k: int):
  """One dispatch of k steps: (state, batches (a `Batch` of leaves [k, ...]),
  args) -> (state, metrics of each step [k])."""
  if k == 1:
    return lambda state, batches, args: train_step(
      state, jax.tree.map(lambda x: x[0], batches), args
    )

  def many(state, batches, args):
    def body(state, batch):
      return train_step(state, batch, args)

    return lax.scan(body, state, batches)

  return jax.jit(many, donate_argnums=(0,))


def main(argv):
  del argv
  config = teacher_config.get_config()
  config.model = FLAGS.model
  config.batch_size = FLAGS.batch_size
  config.dtype = FLAGS.dtype
  config.icc.lam = FLAGS.lam
  config.dataset.name = 'synthetic'
  config.dataset.num_train = max(8 * FLAGS.batch_size, 512)
  config.dataset.num_test = 100
  mesh = parallel.make_mesh()
  dataset = datasets.load(spec.data_request(config.dataset))
  setup = teacher.build_teacher(spec.from_config(config), dataset, mesh)
  source = resident.ResidentSource.of(dataset)
  ks = [int(k) for k in FLAGS.ks]
  # One pool of device batches, stacked per k: the loop only dispatches.
  batches = setup.batches(spec.from_config(config).recipe, source, mesh, 0)
  pool = [next(batches) for _ in range(max(ks))]
  runs = {}
  for k in ks:
    stacked = jax.tree.map(lambda *b: jnp.stack(b), *pool[:k])
    step = scan_step(setup.train_step, k)
    state = setup.create_state(mesh)
    state, metrics = step(state, stacked, setup.step_args)
    jax.block_until_ready(metrics)
    runs[k] = dict(step=step, state=state, batches=stacked, times=[])
  for _ in range(FLAGS.rounds):
    for k, run in runs.items():
      start = time.perf_counter()
      for _ in range(FLAGS.steps // k):
        run['state'], metrics = run['step'](
          run['state'], run['batches'], setup.step_args
        )
      jax.block_until_ready(metrics)
      run['times'].append(
        (time.perf_counter() - start) / (FLAGS.steps // k * k)
      )
  device = jax.devices()[0]
  print(
    f'# {FLAGS.model}, batch {FLAGS.batch_size}, {FLAGS.dtype}, '
    f'λ={FLAGS.lam}, {len(mesh.devices.flat)} x {device.device_kind} '
    f'({device.platform}); {FLAGS.rounds} rounds of {FLAGS.steps} steps'
  )
  print('| steps per dispatch | median ms per step | images/s | vs k=1 |')
  print('|---|---|---|---|')
  base = None
  for k, run in runs.items():
    seconds = float(np.median(run['times']))
    base = base or seconds
    print(
      f'| {k} | {1000 * seconds:.2f} | {FLAGS.batch_size / seconds:.0f} | '
      f'{base / seconds:.3f}x |'
    )


if __name__ == '__main__':
  app.run(main)
