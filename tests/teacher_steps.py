"""Helpers shared by the tests: run a few teacher steps in-process."""

import jax

from icckd_jax import datasets
from icckd_jax import parallel
from icckd_jax import input_pipeline
from icckd_jax import train


def run_steps(config, num_devices, steps):
  """Trains `steps` steps on `num_devices`.

  Returns (initial state, final state, per-step metrics), on the host.
  """
  mesh = parallel.make_mesh(num_devices)
  dataset = datasets.load(config.dataset)
  setup = train.build_teacher(config, dataset, mesh)
  state = jax.jit(setup.init_state, out_shardings=parallel.replicated(mesh))()
  initial = jax.device_get(state)
  split, _ = input_pipeline.to_device(dataset, mesh)
  batches = setup.batches(config, split, mesh, 0)
  metrics = []
  for _ in range(steps):
    images, labels = next(batches)
    state, m = setup.train_step(state, images, labels, setup.step_args)
    metrics.append(m)
  return initial, jax.device_get(state), jax.device_get(metrics)
