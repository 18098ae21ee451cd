"""A distiller written outside the package: one module's worth of code, one
traced weight with a default. tests/test_student.py registers it at run
time (`distillers.register('toy', METHOD)`) and trains a student with it
from the command line; nothing in icckd_jax/ names it.

  L = w_ce · CE(s, y) + toy_weight · mean((s - t)²), on the logits.
"""

import jax
import jax.numpy as jnp

from icckd_jax.distillers import contract
from icckd_jax.distillers import settings

DEFAULT_WEIGHT = 0.5


def logit_gap(batch: contract.Batch, hp: contract.Hyper) -> jax.Array:
  """[] the mean squared difference of the two networks' logits."""
  del hp
  return jnp.mean(jnp.square(batch.student.logits - batch.teacher.logits))


METHOD = contract.one_term(
  'toy',
  logit_gap,
  {'toy_weight': settings.weight(DEFAULT_WEIGHT, 'a test of the registry')},
)
