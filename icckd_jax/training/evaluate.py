"""Evaluation on a whole split: every example counted exactly once (docs/method.md §5, §7.5)."""

from collections.abc import Iterable

import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec as P
import numpy as np

from icckd_jax import parallel
from icckd_jax.input_pipeline import augment
from icckd_jax.input_pipeline.source import EvalBatch
from icckd_jax.objective import losses

DATA = parallel.DATA


def _sums_fn(model, mean, std, dtype, reference):
  """fn(variables, batch: EvalBatch of b examples, reference_variables) ->
  the masked sums of one batch, over every device."""

  def sums_of(variables, batch: EvalBatch, reference_variables):
    images, labels = batch.images, batch.labels
    images = augment.normalize(images, mean, std, dtype)
    logits, _ = model.apply(variables, images, train=False)
    top5 = lax.top_k(logits, min(5, logits.shape[-1]))[1]
    w = batch.mask.astype(jnp.float32)
    sums = {
      'top1': jnp.sum(w * (jnp.argmax(logits, -1) == labels)),
      'top5': jnp.sum(w * jnp.any(top5 == labels[:, None], -1)),
      'loss': jnp.sum(w * losses.cross_entropy(logits, labels)),
      'count': jnp.sum(w),
    }
    if reference is not None:
      reference_logits, _ = reference.apply(
        reference_variables, images, train=False
      )
      sums['agreement'] = jnp.sum(
        w * (jnp.argmax(logits, -1) == jnp.argmax(reference_logits, -1))
      )
    return lax.psum(sums, DATA)

  return sums_of


def make_eval_fn(
  model: nn.Module,
  mesh: Mesh,
  *,
  mean,
  std,
  dtype,
  reference: nn.Module | None = None,
):
  """Builds evaluate(variables, batches[, reference_variables]) -> metrics.

  Metrics: 'top1', 'top5', 'loss', 'count', and with a `reference` model (a
  student's teacher) 'agreement', the fraction of examples on which both
  predict the same class. `variables` are the model's {'params',
  'batch_stats'}, replicated; `batches` are a split's `EvalBatch`es
  (`InputSource.eval_batches`), whose padding is masked out of every sum.
  Inputs are normalised with `mean`, `std` ([C], [0, 255] units) and run in
  `dtype`.
  """
  step = jax.jit(
    parallel.shard_map(
      _sums_fn(model, mean, std, dtype, reference),
      mesh,
      in_specs=(P(), P(DATA), P()),
      out_specs=P(),
    )
  )

  def evaluate(
    variables, batches: Iterable[EvalBatch], reference_variables=None
  ) -> dict[str, float]:
    totals = None
    for batch in batches:
      sums = step(variables, batch, reference_variables)
      totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
    totals = jax.tree.map(lambda x: float(np.asarray(x)), totals)
    count = totals.pop('count')
    return {**{k: v / count for k, v in totals.items()}, 'count': int(count)}

  return evaluate
