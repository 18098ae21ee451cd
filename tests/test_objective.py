"""docs/method.md §7.3 and the cache modes, through the real jitted teacher step."""

import pytest
import jax
import numpy as np
import optax

from icckd_jax.input_pipeline.source import TrainFeed
from icckd_jax.input_pipeline import augment
from icckd_jax.data import datasets
from icckd_jax.objective import losses
from icckd_jax import models
from icckd_jax.training import optim
from icckd_jax import parallel
from icckd_jax.input_pipeline import resident
from icckd_jax.runs import spec
from train_steps import run_steps


def _small(config, **icc):
  config.dataset.num_train = 64
  config.batch_size = 16
  config.cache.size = 2
  config.icc.update(icc)
  return config


def _batches(config, source, mesh, num_views):
  """The batches the run of `config` trains on, from step 0."""
  return source.train_batches(
    mesh,
    TrainFeed(
      seed=config.seed,
      batch_size=config.batch_size,
      num_views=num_views,
      crop_padding=4,
      flip=True,
    ),
    0,
  )


def _cross_entropy64(logits, labels):
  """mean_i logsumexp(l_i) - l_i[y_i], in float64 NumPy."""
  logits = np.asarray(logits, np.float64)
  top = logits.max(axis=1)
  lse = top + np.log(np.exp(logits - top[:, None]).sum(axis=1))
  return float(np.mean(lse - logits[np.arange(len(labels)), labels]))


def test_lambda_zero_is_the_plain_cross_entropy_teacher(smoke_config):
  """λ = 0 trains exactly like a CE step written here from scratch."""
  config = _small(smoke_config, lam=0.0)
  initial, (*_, state), metrics = run_steps(config, 1, 3)
  assert state.cache is None

  dataset = datasets.load(spec.data_request(config.dataset))
  mesh = parallel.make_mesh(1)
  model = models.create_model(
    config.model, dataset.num_classes, bn_axis_name=parallel.DATA
  )
  recipe = spec.from_config(config).recipe
  tx = optim.create_optimizer(recipe, optim.create_learning_rate_fn(recipe, 4))
  params, batch_stats = initial.params['model'], initial.batch_stats
  opt_state = tx.init(initial.params)

  def ce(p, bs, images, labels):
    x = augment.normalize(images, dataset.mean, dataset.std)
    (logits, _), upd = model.apply(
      {'params': p, 'batch_stats': bs}, x, train=True, mutable=['batch_stats']
    )
    return (
      losses.cross_entropy(logits, labels).mean(),
      (upd['batch_stats'], logits),
    )

  @jax.jit
  def reference_step(params, batch_stats, opt_state, images, labels):
    # BatchNorm's axis name needs a mapped axis; a size-1 vmap provides it.
    grad_fn = jax.vmap(
      jax.grad(ce, has_aux=True), (None, None, 0, 0), axis_name=parallel.DATA
    )
    grads, (bs, logits) = grad_fn(
      params, batch_stats, images[None], labels[None]
    )
    grads, bs, logits = jax.tree.map(lambda t: t[0], (grads, bs, logits))
    updates, opt_state = tx.update(
      {'model': grads}, opt_state, {'model': params}
    )
    return (
      optax.apply_updates({'model': params}, updates)['model'],
      bs,
      opt_state,
      logits,
    )

  source = resident.ResidentSource.of(dataset)
  batches = _batches(config, source, mesh, num_views=1)
  reference_losses = []
  for _ in range(3):
    batch = next(batches)
    images, labels = batch.images, batch.labels
    assert images.shape[0] == 1, 'λ = 0 must not draw a second view'
    params, batch_stats, opt_state, logits = reference_step(
      params, batch_stats, opt_state, images[0], labels
    )
    reference_losses.append(_cross_entropy64(logits, labels))
  assert_close = lambda a, b: jax.tree.map(
    lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6), a, b
  )
  assert_close(state.params['model'], jax.device_get(params))
  assert_close(state.batch_stats, jax.device_get(batch_stats))
  # The logged loss is the CE of each step's batch under the parameters
  # before that step (float64 here, from the reference's logits).
  for key in ('loss', 'ce'):
    np.testing.assert_allclose(
      [m[key] for m in metrics], reference_losses, rtol=1e-5
    )


def test_delta_at_least_one_is_cross_entropy(smoke_config):
  """δ ≥ 1 gates every anchor off: the loss is CE and λ no longer matters."""
  _, (*_, state_a), metrics_a = run_steps(
    _small(smoke_config, lam=0.5, delta=1.0), 1, 3
  )
  from configs import teacher  # pylint: disable=g-import-not-at-top

  _, (*_, state_b), metrics_b = run_steps(
    _small(teacher.get_config('smoke'), lam=2.0, delta=1.5), 1, 3
  )
  for m in metrics_a + metrics_b:
    assert m['gate_pass_rate'] == 0.0
    assert m['intra'] == 0.0
    assert m['loss'] == m['ce']
  jax.tree.map(np.testing.assert_array_equal, state_a.params, state_b.params)


def _objective64(logits, features, labels, cache, tau):
  """(CE, L_intra) of one step with every anchor gated on, in float64 NumPy,
  written from docs/method.md §3: rows [:B] are view a (anchors and the CE
  logits), rows [B:] view b (keys); negatives of anchor i are the keys and
  valid cache entries of its class other than its own key; anchors without
  a negative are left out of the mean."""
  logits = np.asarray(logits, np.float64)
  z = np.asarray(features, np.float64)
  z /= np.linalg.norm(z, axis=1, keepdims=True)
  b = len(labels)
  q, k = z[:b], z[b:]
  slots, per_slot = cache.labels.shape
  c_items = np.asarray(cache.items, np.float64).reshape(slots * per_slot, -1)
  c_labels = np.asarray(cache.labels).reshape(-1)
  c_valid = np.repeat(np.asarray(cache.valid), per_slot)
  per_anchor = []
  for i in range(b):
    negatives = [k[j] for j in range(b) if j != i and labels[j] == labels[i]]
    negatives += [
      c for c, y, v in zip(c_items, c_labels, c_valid) if v and y == labels[i]
    ]
    if negatives:
      s = np.concatenate([[q[i] @ k[i]], np.stack(negatives) @ q[i]]) / tau
      per_anchor.append(np.log(np.sum(np.exp(s - s.max()))) + s.max() - s[0])
  return _cross_entropy64(logits[:b], labels), float(np.mean(per_anchor))


def test_delta_minus_one_gates_nothing(smoke_config):
  """δ = -1 passes every anchor; each step's logged CE, L_intra and loss
  equal CE + λ·L_intra recomputed in float64 from the network's outputs
  under the parameters, BatchNorm statistics and cache before that step."""
  config = _small(smoke_config, lam=0.5, delta=-1.0)
  initial, states, metrics = run_steps(config, 1, 3)
  dataset = datasets.load(spec.data_request(config.dataset))
  mesh = parallel.make_mesh(1)
  model = models.create_model(config.model, dataset.num_classes)
  source = resident.ResidentSource.of(dataset)
  batches = _batches(config, source, mesh, num_views=2)
  forward = jax.jit(
    lambda v, x: model.apply(v, x, train=True, mutable=['batch_stats'])[0]
  )
  for m, before in zip(metrics, [initial] + states[:-1]):
    batch = next(batches)
    images, labels = np.asarray(batch.images), np.asarray(batch.labels)
    x = (
      images.reshape(-1, *images.shape[2:]).astype(np.float32) - dataset.mean
    ) / dataset.std
    logits, features = forward(
      {'params': before.params['model'], 'batch_stats': before.batch_stats}, x
    )
    ce, intra = _objective64(
      logits, features, labels, before.cache, config.icc.tau
    )
    assert m['gate_pass_rate'] == 1.0
    assert intra > 0.0
    # Two float32 forward passes of one network (this one and the step's,
    # compiled apart) agree to round-off, ~1e-6 relative; a wrong view,
    # mask, cache entry, gate or weight moves these by 1e-2 or more.
    np.testing.assert_allclose(m['ce'], ce, rtol=1e-5)
    np.testing.assert_allclose(m['intra'], intra, rtol=1e-5)
    np.testing.assert_allclose(m['loss'], ce + 0.5 * intra, rtol=1e-5)


@pytest.mark.slow
def test_cache_modes_store_what_they_say_and_serve_the_same_negatives(
  smoke_config,
):
  """With the parameters frozen (lr = 0), the two cache modes hold the same
  entries after the ring fills, and select the same negatives per anchor."""
  results = {}
  for store in ('features', 'images'):
    from configs import teacher  # pylint: disable=g-import-not-at-top

    config = _small(teacher.get_config('smoke'), lam=0.5, delta=-1.0)
    config.cache.store = store
    config.learning_rate = 0.0
    results[store] = run_steps(config, 2, 3)
  _, (*_, feats), m_feats = results['features']
  _, (*_, imgs), m_imgs = results['images']
  np.testing.assert_array_equal(feats.cache.labels, imgs.cache.labels)
  np.testing.assert_array_equal(feats.cache.valid, imgs.cache.valid)
  assert bool(np.all(feats.cache.valid))
  for a, b in zip(m_feats, m_imgs):
    assert a['neg_cache'] == b['neg_cache']
    assert a['neg_in_batch'] == b['neg_in_batch']
  assert m_feats[0]['neg_cache'] == 0.0 and m_feats[2]['neg_cache'] > 0.0
  # Features: unit-norm key embeddings; images: uint8 augmented key views.
  np.testing.assert_allclose(
    np.linalg.norm(feats.cache.items, axis=-1), 1.0, rtol=1e-5
  )
  # The ring after 3 pushes into 2 slots: slot 0 holds step 2, slot 1 step 1.
  config = _small(smoke_config)
  dataset = datasets.load(spec.data_request(config.dataset))
  mesh = parallel.make_mesh(1)
  source = resident.ResidentSource.of(dataset)
  batches = _batches(config, source, mesh, num_views=2)
  views_b = [np.asarray(next(batches).images[1]) for _ in range(3)]
  np.testing.assert_array_equal(imgs.cache.items[0], views_b[2])
  np.testing.assert_array_equal(imgs.cache.items[1], views_b[1])


def test_bfloat16_compute_keeps_float32_parameters(smoke_config):
  config = _small(smoke_config, lam=0.5, delta=-1.0)
  config.dtype = 'bfloat16'
  _, (*_, state), metrics = run_steps(config, 2, 2)
  assert all(x.dtype == np.float32 for x in jax.tree.leaves(state.params))
  assert all(
    x.dtype == np.float32
    for x in jax.tree.leaves(state.opt_state)
    if np.issubdtype(x.dtype, np.floating)
  )
  assert state.cache.items.dtype == np.float32
  _, _, metrics32 = run_steps(_small(smoke_config, lam=0.5, delta=-1.0), 2, 2)
  for m, m32 in zip(metrics, metrics32):
    assert np.isfinite(m['loss'])
    np.testing.assert_allclose(m['ce'], m32['ce'], rtol=0.05)
