"""What a network hands to a distillation loss."""

from typing import NamedTuple

import jax


class Outputs(NamedTuple):
  logits: jax.Array    # [b, classes]
  features: jax.Array  # [b, D] pooled penultimate features
