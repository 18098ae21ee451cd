"""The distillation methods, by name (mdistiller style).

Each method is one module with one function of the same signature:

  loss(student, teacher, labels, hp, gather) -> (loss, parts)

where `student` and `teacher` are `Outputs` of the local batch shard (the
teacher's already under stop_gradient), `labels` [b], `hp` the dict of traced
scalars from `hyperparameters`, and `gather` all-gathers a [b, ...] array to
the global [B, ...] batch (for methods relating examples to each other). The
per-device loss must be such that pmean-ed gradients are those of the global
loss. Adding a method (DKD, CRD, ...) is one new module and one line below.
"""

from collections.abc import Callable

from icckd_jax.distillers import kd
from icckd_jax.distillers import kd_rkd
from icckd_jax.distillers.outputs import Outputs
from icckd_jax.errors import UserError
from icckd_jax.objective.distillation import at_loss
from icckd_jax.objective.distillation import dist_loss
from icckd_jax.objective.distillation import dkd_loss
from icckd_jax.objective.distillation import nst_loss
from icckd_jax.objective.distillation import pkt_loss
from icckd_jax.objective.distillation import sp_loss
from icckd_jax.objective.distillation import standardize_logits

DISTILLERS: dict[str, Callable] = {
    'kd': kd.loss,
    'kd_rkd': kd_rkd.loss,
}

__all__ = [
    'DISTILLERS', 'Outputs', 'get',
    # The losses of published methods, for the distillers that combine them.
    'at_loss', 'dist_loss', 'dkd_loss', 'nst_loss', 'pkt_loss', 'sp_loss',
    'standardize_logits',
]


def get(name: str) -> Callable:
  if name not in DISTILLERS:
    raise UserError(f'config.distill.method={name!r} is unknown; choose one '
                    f'of: {", ".join(DISTILLERS)}')
  return DISTILLERS[name]
