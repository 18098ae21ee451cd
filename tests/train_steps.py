"""Helpers shared by the tests: run a few train steps in-process."""

import jax

from icckd_jax.data import datasets
from icckd_jax import parallel
from icckd_jax.input_pipeline import resident
from icckd_jax.stages import teacher
from icckd_jax.runs import spec


def run_steps(config, num_devices, steps, build=teacher.build_teacher):
  """Trains `steps` steps on `num_devices` with the setup `build` makes
  from (config's `spec.RunSpec`, dataset, mesh) (a teacher's by default).

  Returns (initial state, [state after each step], [metrics of each step]),
  on the host.
  """
  mesh = parallel.make_mesh(num_devices)
  run = spec.from_config(config)
  dataset = datasets.load(run.data)
  setup = build(run, dataset, mesh)
  state = setup.create_state(mesh)
  initial = jax.device_get(state)
  source = resident.ResidentSource.of(dataset)
  batches = setup.batches(run.recipe, source, mesh, 0)
  states, metrics = [], []
  for _ in range(steps):
    state, m = setup.train_step(state, next(batches), setup.step_args)
    states.append(jax.device_get(state))
    metrics.append(m)
  return initial, states, jax.device_get(metrics)
