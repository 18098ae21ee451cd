"""The data-parallel scaffold every train step shares.

A step is a per-device program under `jax.shard_map` inside `jax.jit`, with
the train state donated. Each device holds a shard b = B / n of the global
batch; gradients and metrics are `pmean`-ed over `data`. A loss that relates
examples across devices all-gathers them (`gather`); all-gather's transpose
sums the cotangents of every device's copy of the global loss back to the
shard that produced them, hence `pmean`, not `psum`, of the gradients.
"""

from collections.abc import Callable

import jax
from jax import lax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec as P
import optax

from icckd_jax import parallel
from icckd_jax.input_pipeline.source import Batch

DATA = parallel.DATA


def gather(x: jax.Array) -> jax.Array:
  """[b, ...] on each device -> the global [B, ...], in device order."""
  return lax.all_gather(x, DATA, tiled=True)


def apply_gradients(state, grads, tx: optax.GradientTransformation):
  """(params, opt_state) after one update with the gradients averaged over
  the devices (each device's `grads` are of its own loss)."""
  grads = lax.pmean(grads, DATA)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  return optax.apply_updates(state.params, updates), opt_state


def global_means(metrics: dict[str, jax.Array]) -> dict[str, jax.Array]:
  """Each device's scalar metrics averaged over the devices."""
  return {name: lax.pmean(value, DATA) for name, value in metrics.items()}


def accuracy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """[] the global fraction of `labels` [b] that `logits` [b, K] predict."""
  return lax.pmean(
    jnp.mean((jnp.argmax(logits, -1) == labels).astype(jnp.float32)), DATA
  )


def data_parallel(per_device: Callable, mesh: Mesh) -> Callable:
  """jit(shard_map(per_device)), the state (argument 0) donated.

  per_device(state, batch: `source.Batch`, args) -> (state, metrics): the
  state, args and outputs replicated, the batch's images [V, b, H, W, C],
  labels [b] and indices [b] (None unless the run asks for them) sharded
  over `data` on the batch axis.
  """
  batch_partition = Batch(images=P(None, DATA), labels=P(DATA), indices=P(DATA))
  step = parallel.shard_map(
    per_device,
    mesh,
    in_specs=(P(), batch_partition, P()),
    out_specs=(P(), P()),
  )
  return jax.jit(step, donate_argnums=(0,))
