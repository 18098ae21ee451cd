"""Each stage's output map, for the distillers that compare feature maps.

Every model records, in flax's 'intermediates' collection, the output map of
each of its stages and the same map before its last ReLU:

  intermediates = {'stages': (f_1, ..., f_N), 'preact_stages': (p_1, ..., p_N)}

f_k and p_k are NHWC [B, H_k, W_k, C_k] in the compute dtype, the first
stage first and the last stage last. They are mdistiller's
`feats["feats"][1:]` and `feats["preact_feats"][1:]` (the stem's map,
its `feats[0]`, is not recorded): the maps its AT, NST, SP, KDSVD, OFD and
ReviewKD distillers use. Which maps a family calls its stages is documented
in its module.

`Module.sow` stores nothing unless the caller makes 'intermediates' mutable
(`apply(..., mutable=['intermediates'])`), and `Module.init` leaves it out
by default, so recording changes neither the parameter tree nor a step that
does not ask for the maps.
"""

from typing import Any

import flax.linen as nn
import jax

COLLECTION = 'intermediates'


def record(module: nn.Module, stage: jax.Array, preact: jax.Array) -> None:
  """Appends one stage's output map and its pre-ReLU map, [B, H, W, C] each
  (called from the model's own `__call__`, stages in order)."""
  module.sow(COLLECTION, 'stages', stage)
  module.sow(COLLECTION, 'preact_stages', preact)


def record_preact(module: nn.Module, preact: jax.Array) -> None:
  """Appends a pre-ReLU map alone, for a family that computes it after the
  stage's output (WRN's is the next block's BatchNorm)."""
  module.sow(COLLECTION, 'preact_stages', preact)


def record_stage(module: nn.Module, stage: jax.Array) -> None:
  """Appends a stage's output map alone (see `record_preact`)."""
  module.sow(COLLECTION, 'stages', stage)


def collected(
  state: Any,
) -> tuple[tuple[jax.Array, ...], tuple[jax.Array, ...]]:
  """(stages, preact_stages) from the mutable state an `apply` with
  'intermediates' mutable returned; each a tuple of [B, H_k, W_k, C_k]."""
  maps = state[COLLECTION]
  return tuple(maps['stages']), tuple(maps['preact_stages'])
