"""The teacher's train step: docs/method.md §3, equation by equation.

Data parallel through `step.data_parallel`. Anchors, keys, labels and
margins are all-gathered, so every device evaluates the intra-class loss over
the *global* batch and the result does not depend on the device count.
"""

import dataclasses
from typing import Any

import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp
from jax.sharding import Mesh
import optax

from icckd_jax.input_pipeline import augment
from icckd_jax.input_pipeline.source import Batch
from icckd_jax.objective import cache as cache_lib
from icckd_jax.objective import losses
from icckd_jax import parallel
from icckd_jax.training import step as step_lib
from icckd_jax.runs.train_state import TrainState

DATA = parallel.DATA


def hyperparameters(
  lam: float, tau: float, delta: float
) -> dict[str, jax.Array]:
  """The objective's scalars as arrays: traced, so one compiled step serves
  every value the runs of one process train with."""
  return {
    'lam': jnp.float32(lam),
    'tau': jnp.float32(tau),
    'delta': jnp.float32(delta),
  }


def make_train_step(
  model: nn.Module,
  head: nn.Module | None,
  tx: optax.GradientTransformation,
  mesh: Mesh,
  *,
  mean,
  std,
  dtype,
  num_views: int,
  margin_kind: str,
  cache_store: str,
  empty_anchors: str = 'exclude',
):
  """Builds step(state, batch, hparams) -> (state, metrics).

  Args:
    model: returns (logits [N, classes], features [N, D]); BatchNorm
      synchronised over `data`.
    head: the projection head g, or None for the identity.
    tx: the optimiser.
    mesh: the 1-D `data` mesh.
    mean, std: [C] per-channel normalisation in [0, 255] units.
    dtype: compute dtype of the forward pass.
    num_views: 1 for the plain cross-entropy teacher (λ = 0: view b is never
      computed), 2 with the intra-class objective.
    margin_kind: 'prob' or 'logit'.
    cache_store: 'features' or 'images' (ignored when the cache is empty).
    empty_anchors: 'exclude' leaves anchors without any negative out of the
      gated mean, 'count' keeps them in its denominator (docs/method.md §3).

  The returned step takes a `Batch` (images [V, B, H, W, C] uint8, labels
  [B] int32) sharded over `data` on B, and hparams from `hyperparameters`; it returns the
  new state and a dict of scalar metrics, both replicated.
  """
  objective = _Objective(
    model, head, mean, std, dtype, margin_kind, cache_store, empty_anchors
  )
  return step_lib.data_parallel(_per_device_step(objective, tx), mesh)


def _per_device_step(objective: '_Objective', tx: optax.GradientTransformation):
  """One device's step(state, images [V, b, H, W, C], labels [b], hp) ->
  (state, metrics): the gradient of the objective, the update, the cache."""

  def per_device(state: TrainState, batch: Batch, hp):
    images, labels = batch.images, batch.labels
    v, b = images.shape[:2]
    x = augment.normalize(
      images.reshape((v * b,) + images.shape[2:]),
      objective.mean,
      objective.std,
      objective.dtype,
    )
    grads, (aux, parts) = jax.grad(
      lambda params: objective.loss(params, state, x, labels, v, hp),
      has_aux=True,
    )(state.params)
    params, opt_state = step_lib.apply_gradients(state, grads, tx)
    # The logged loss is the one differentiated: the mean over devices of
    # each device's CE + λ·L (L is already global).
    parts = step_lib.global_means(parts)
    parts['accuracy'] = step_lib.accuracy(aux['logits_a'], labels)
    new_state = state.replace(
      step=state.step + 1,
      params=params,
      opt_state=opt_state,
      batch_stats=aux['new_model_state']['batch_stats'],
      cache=_next_cache(state.cache, aux, images, objective.cache_store),
    )
    return new_state, parts

  return per_device


def _next_cache(cache, aux, images, cache_store: str):
  """The cache after a step over `images` [V, b, H, W, C] (V > 1, a
  non-empty cache; else as it was). Pipeline order: this batch served as
  the anchors and keys of this step; from the next step on it serves as
  negatives (its view b: the keys, or the images)."""
  if images.shape[0] == 1 or cache is None or cache.labels.shape[0] == 0:
    return cache
  stored = (
    aux['keys'] if cache_store == 'features' else step_lib.gather(images[1])
  )
  return cache_lib.push(cache, lax.stop_gradient(stored), aux['all_labels'])


@dataclasses.dataclass(frozen=True)
class _Objective:
  """CE + λ · the gated intra-class loss of one device's shard."""

  model: nn.Module
  head: nn.Module | None
  mean: Any
  std: Any
  dtype: Any
  margin_kind: str
  cache_store: str
  empty_anchors: str

  def embed(self, params, features):
    """z = normalize(g(f(x))): [N, D] -> [N, d]."""
    if self.head is not None:
      features = self.head.apply({'params': params['head']}, features)
    return losses.l2_normalize(features.astype(jnp.float32))

  def cache_negatives(self, params, state):
    """(keys [M, d], labels [M], valid [M]) of the pipeline cache, or Nones."""
    cache = state.cache
    if cache is None or cache.labels.shape[0] == 0:
      return None, None, None
    items, labels, valid = cache_lib.entries(cache)
    if self.cache_store == 'images':
      # Fresh embeddings under the current parameters, no gradient, BatchNorm
      # in inference mode so the cache does not move the running statistics.
      # Each device embeds its 1/n of the entries, then they are gathered.
      m = items.shape[0] // lax.axis_size(DATA)
      mine = lax.dynamic_slice_in_dim(items, lax.axis_index(DATA) * m, m)
      p = lax.stop_gradient(params)
      _, features = self.model.apply(
        {'params': p['model'], 'batch_stats': state.batch_stats},
        augment.normalize(mine, self.mean, self.std, self.dtype),
        train=False,
      )
      items = step_lib.gather(self.embed(p, features))
    return lax.stop_gradient(items), labels, valid

  def loss(self, params, state, x, labels, v: int, hp):
    """(loss, (aux, metrics)) of the shard `x` [V·b, H, W, C] (views a then
    b, normalised) and `labels` [b]."""
    b = labels.shape[0]
    # Views a and b go through the network in one pass, BatchNorm in
    # training mode over both.
    (logits, features), new_model_state = self.model.apply(
      {'params': params['model'], 'batch_stats': state.batch_stats},
      x,
      train=True,
      mutable=['batch_stats'],
    )
    logits_a = logits[:b]
    ce = losses.cross_entropy(logits_a, labels).mean()
    aux = {'new_model_state': new_model_state, 'logits_a': logits_a}
    if v == 1:
      return ce, (aux, {'loss': ce, 'ce': ce})
    gather = step_lib.gather
    z = self.embed(params, features)
    q = gather(z[:b])  # anchors, view a   [B, d]
    k = gather(z[b:])  # keys, view b      [B, d]
    y = gather(labels)  # [B]
    margins = gather(losses.margin(logits_a, labels, self.margin_kind))  # [B]
    cache_keys, cache_labels, cache_valid = self.cache_negatives(params, state)
    intra_per_anchor = losses.intra_class_contrastive(
      q, k, y, hp['tau'], cache_keys, cache_labels, cache_valid
    )
    neg_batch, neg_cache = losses.negative_counts(y, cache_labels, cache_valid)
    has_negatives = (neg_batch + neg_cache) > 0
    intra = losses.gated_mean(
      intra_per_anchor,
      margins,
      hp['delta'],
      has_negatives if self.empty_anchors == 'exclude' else None,
    )
    gate = margins > hp['delta']
    aux.update(keys=k, all_labels=y)
    # Each device's loss is its local CE plus λ times the global intra
    # loss; pmean of the gradients makes it CE(B) + λ·L_intra^δ.
    loss = ce + hp['lam'] * intra
    return loss, (
      aux,
      {
        'loss': loss,
        'ce': ce,
        'intra': intra,
        'gate_pass_rate': jnp.mean(gate.astype(jnp.float32)),
        'effective_weight': losses.effective_weight(
          margins, hp['delta'], has_negatives
        ),
        'margin_mean': jnp.mean(margins),
        'neg_in_batch': jnp.mean(neg_batch.astype(jnp.float32)),
        'neg_cache': jnp.mean(neg_cache.astype(jnp.float32)),
      },
    )


def init_params(
  model: nn.Module,
  head: nn.Module | None,
  key: jax.Array,
  input_shape: tuple[int, ...],
) -> tuple[Any, Any]:
  """(params {'model': ..., ['head': ...]}, batch_stats) from `key`."""
  k_model, k_head = jax.random.split(key)
  variables = model.init(
    k_model, jnp.zeros((1, *input_shape), jnp.float32), train=False
  )
  params = {'model': variables['params']}
  if head is not None:
    _, features = model.apply(
      variables, jnp.zeros((1, *input_shape), jnp.float32), train=False
    )
    params['head'] = head.init(k_head, features)['params']
  return params, variables.get('batch_stats', {})


def embedding_dim(
  model: nn.Module,
  head: nn.Module | None,
  params,
  batch_stats,
  input_shape: tuple[int, ...],
) -> int:
  """d, the width of z: the head's output, else the pooled features'."""
  if head is not None:
    return head.dim
  _, features = jax.eval_shape(
    lambda: model.apply(
      {'params': params['model'], 'batch_stats': batch_stats},
      jnp.zeros((1, *input_shape), jnp.float32),
      train=False,
    )
  )
  return features.shape[-1]
