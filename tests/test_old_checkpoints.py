"""Checkpoints written before TrainState.distiller_buffers: a student's
distiller buffers (CRD's memory bank, Z, its sampling tables) were saved
under `cache`. Such a checkpoint must resume bit for bit and evaluate with
today's code, and must not be judged damaged."""

import os
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import student as student_config
from configs import teacher as teacher_config
from icckd_jax import models
from icckd_jax import parallel
from icckd_jax.data import datasets
from icckd_jax.input_pipeline import resident
from icckd_jax.objective import cache as cache_lib
from icckd_jax.runs import train_state
from icckd_jax.runs import spec
from icckd_jax.stages import student
from icckd_jax.training import checkpoint
from icckd_jax.stages import evaluate_checkpoint
from icckd_jax.training import loop
from icckd_jax.runs import layout


@flax.struct.dataclass
class LegacyTrainState:
  """runs/train_state.TrainState as it was: one `cache` field for a
  teacher's negative cache and a student's distiller buffers."""

  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  cache: Any = None


def _crd_student(tmp_path):
  """(run spec, dataset, mesh, setup) of a two-epoch CRD student of 16 8x8
  images in batches of 8 (2 steps an epoch), from a random resnet8
  teacher (its weights do not matter to the checkpoint's layout)."""
  config = student_config.get_config('smoke')
  config.dataset.update(num_train=16, num_test=16, image_size=8)
  config.batch_size = 8
  config.eval_batch_size = 16
  config.num_epochs = 2
  config.distill.method = 'crd'
  config.distill.update(crd_negatives=4, crd_dim=8)
  t_config = teacher_config.get_config('smoke')
  config.model = t_config.model
  config.teacher.workdir = str(tmp_path / 'no_teacher')
  run = spec.from_config(config)
  dataset = resident.ResidentSource.of(datasets.load(run.data))
  mesh = parallel.make_mesh(1)
  model = models.create_model(t_config.model, dataset.num_classes)
  t_variables = parallel.put_replicated(
    jax.jit(model.init)(jax.random.key(3), jnp.zeros((1, 8, 8, 3))), mesh
  )
  setup = student.build_student(run, dataset, mesh, t_config, t_variables)
  return run, dataset, mesh, setup


def _write_legacy(
  source: str, target: str, epoch: int, abstract, config: dict
) -> Any:
  """Rewrites checkpoint `epoch` of workdir `source` into workdir `target`
  in the layout of the code before `distiller_buffers`, with the same
  Orbax calls and the run's `config` (as the loop saves it); returns the
  state it wrote (on the host)."""
  with checkpoint.Checkpoints(source, read_only=True) as ckpts:
    state, meta = ckpts.restore(abstract, epoch=epoch)
  assert state.distiller_buffers is not None and state.cache is None
  legacy = LegacyTrainState(
    state.step,
    state.params,
    state.batch_stats,
    state.opt_state,
    cache=state.distiller_buffers,
  )
  with checkpoint.Checkpoints(target) as ckpts:
    ckpts.save(epoch, legacy, meta, config, last=True, best=False)
  return jax.device_get(state)


def _restored(workdir: str) -> dict:
  with checkpoint.Checkpoints(workdir, read_only=True) as ckpts:
    state, _ = ckpts.restore(None, mesh=parallel.make_mesh(1))
  return jax.device_get(state)


def test_an_old_crd_student_checkpoint_resumes_bit_for_bit_and_evaluates(
  tmp_path,
):
  run, dataset, mesh, setup = _crd_student(tmp_path)
  straight, old = str(tmp_path / 'straight'), str(tmp_path / 'old')
  loop.fit(run, straight, setup, dataset, mesh)
  abstract = checkpoint.abstract_like(jax.eval_shape(setup.init_state), mesh)
  written = _write_legacy(straight, old, 1, abstract, run.saved)

  # Its buffers come back in their own field, equal; nothing is set aside.
  with checkpoint.Checkpoints(old) as ckpts:
    state, meta, _ = ckpts.restore_newest_intact(abstract)
  assert isinstance(state, train_state.TrainState) and state.cache is None
  assert meta['epoch'] == 1
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(state), written)
  assert set(written.distiller_buffers) >= {'memory_s', 'memory_t', 'z'}

  # It evaluates (from the config saved with it).
  result = evaluate_checkpoint.evaluate_checkpoint(old, 'last', batch_size=16)
  assert result['epoch'] == 1 and result['count'] == 16

  # It resumes: the second epoch ends where the uninterrupted run's did.
  loop.fit(run, old, setup, dataset, mesh)
  assert not os.path.exists(os.path.join(old, layout.DAMAGED_DIR))
  assert sorted(os.listdir(os.path.join(old, 'checkpoints'))) == ['1', '2']
  final_straight, final_old = _restored(straight), _restored(old)
  assert int(final_old['step']) == 4
  jax.tree.map(np.testing.assert_array_equal, final_straight, final_old)


@pytest.mark.parametrize('negative_cache', [False, True])
def test_an_old_teacher_or_plain_student_checkpoint_restores(
  tmp_path, negative_cache
):
  """The other states of the old layout: a teacher's negative cache, or
  nothing, under `cache`; they come back as such, with no distiller
  buffers, and nothing is set aside."""
  tx = optax.sgd(0.1)
  params = {'model': {'kernel': jnp.arange(6.0).reshape(2, 3)}}
  cache = cache_lib.create(2, 4, (3,), jnp.float32) if negative_cache else None
  legacy = LegacyTrainState(
    jnp.int32(7), params, {'mean': jnp.ones(3)}, tx.init(params), cache
  )
  workdir = str(tmp_path / 'run')
  with checkpoint.Checkpoints(workdir) as ckpts:
    ckpts.save(1, legacy, {'epoch': 1}, {}, last=True, best=False)
  target = train_state.TrainState(
    legacy.step, params, legacy.batch_stats, legacy.opt_state, cache
  )
  mesh = parallel.make_mesh(1)
  with checkpoint.Checkpoints(workdir) as ckpts:
    state, meta, _ = ckpts.restore_newest_intact(
      checkpoint.abstract_like(target, mesh)
    )
  assert meta == {'epoch': 1} and state.distiller_buffers is None
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(state), target)
  assert not os.path.exists(os.path.join(workdir, layout.DAMAGED_DIR))
