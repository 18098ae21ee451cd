"""The distillation methods, by name (mdistiller style).

Each method is one module with one function of the same signature:

  loss(student, teacher, labels, hp, gather) -> (loss, parts)

where `student` and `teacher` are `Outputs` of the local batch shard (the
teacher's already under stop_gradient), `labels` [b], `hp` the dict of traced
scalars from `hyperparameters` (plus 'epoch' for a method that needs it),
and `gather` all-gathers a [b, ...] array to the global [B, ...] batch (for
methods relating examples to each other). The per-device loss must be such
that pmean-ed gradients are those of the global loss.

Each module also declares the config.distill fields it reads (`FIELDS`: the
others are not part of the student's identity) and what the step must
collect for it:

  NEEDS_STAGES  the stage maps in `Outputs.stages` / `.preact_stages`
                (the models are applied with 'intermediates' mutable; a
                method without them compiles exactly as before);
  NEEDS_EPOCH   hp['epoch'], the 1-based epoch of the step (DKD's warm-up);
  STANDARDIZES  accepts config.distill.standardize_logits (its `loss` then
                takes standardize=True).

A TRAINABLE method (fitnet, vid, ofd, reviewkd, crd) owns parameters that
train with the student and may keep non-trainable buffers (a memory bank,
BatchNorm statistics); its module also defines

  options(config.distill) -> dict   static keyword arguments of the two:
  init(key, student, teacher, train_labels, teacher_params, **options)
      -> (params, buffers)
  loss(student, teacher, labels, hp, gather, trainable, **options)
      -> (loss, parts, new_buffers)

`init` gets the run's seed's key (to fold its own streams from), the two
networks' Outputs as jax.ShapeDtypeStruct, the training split's labels
[N] and the teacher's parameters (read only: OFD's margins come from its
BatchNorm); the buffers may be None (vid). `trainable` is an
`outputs.Trainable` (the parameters to differentiate, the buffers, the
batch's example indices, the step). The
params live in the student's state as params['distiller'] (same optimiser,
gradients pmean-ed like the model's), the buffers as state.cache (the
teacher's negative cache field, None for every other student); both
are checkpointed with it. The other methods are untouched by this, and
their step compiles as before.

A method that pairs stages may define `check(student, teacher) -> str |
None` (Outputs of shapes): what keeps it from serving that pair, said in
its own terms, before anything traces (stages/distill_pair.py).

Its docstring gives its published CIFAR-100 recipe, which the defaults of
configs/student.py hold, and the code it was read from (docs/distillers.md
lists them). Adding a method is one new module and one line below.
"""

from collections.abc import Callable
import functools
from typing import NamedTuple

import ml_collections

from icckd_jax.distillers import at
from icckd_jax.distillers import crd
from icckd_jax.distillers import dist
from icckd_jax.distillers import dkd
from icckd_jax.distillers import fitnet
from icckd_jax.distillers import kd
from icckd_jax.distillers import kd_rkd
from icckd_jax.distillers import kdsvd
from icckd_jax.distillers import nst
from icckd_jax.distillers import ofd
from icckd_jax.distillers import pkt
from icckd_jax.distillers import reviewkd
from icckd_jax.distillers import rkd
from icckd_jax.distillers import sp
from icckd_jax.distillers import vid
from icckd_jax.distillers.outputs import Outputs
from icckd_jax.distillers.outputs import Trainable
from icckd_jax.errors import UserError
from icckd_jax.objective.distillation import at_loss
from icckd_jax.objective.distillation import dist_loss
from icckd_jax.objective.distillation import dkd_loss
from icckd_jax.objective.distillation import nst_loss
from icckd_jax.objective.distillation import pkt_loss
from icckd_jax.objective.distillation import sp_loss
from icckd_jax.objective.distillation import standardize_logits

_MODULES = {
  'kd': kd,
  'kd_rkd': kd_rkd,
  'dkd': dkd,
  'dist': dist,
  'at': at,
  'nst': nst,
  'pkt': pkt,
  'sp': sp,
  'rkd': rkd,
  'fitnet': fitnet,
  'crd': crd,
  'vid': vid,
  'ofd': ofd,
  'reviewkd': reviewkd,
  'kdsvd': kdsvd,
}

DISTILLERS: dict[str, Callable] = {
  name: module.loss for name, module in _MODULES.items()
}

# The methods that accept config.distill.standardize_logits.
STANDARDIZING = tuple(
  name for name, module in _MODULES.items() if module.STANDARDIZES
)

__all__ = [
  'DISTILLERS',
  'Distiller',
  'Outputs',
  'STANDARDIZING',
  'Trainable',
  'build',
  'fields',
  'get',
  'pair_mismatch',
  'trainable',
  # The losses of published methods, for the distillers that combine them.
  'at_loss',
  'dist_loss',
  'dkd_loss',
  'nst_loss',
  'pkt_loss',
  'sp_loss',
  'standardize_logits',
]


class Distiller(NamedTuple):
  """A method as the student step uses it."""

  loss: Callable  # (student, teacher, labels, hp, gather) -> (loss, parts)
  needs_stages: bool  # collect Outputs.stages / .preact_stages
  needs_epoch: bool  # put the 1-based epoch in hp['epoch']
  # A TRAINABLE method's init(key, student, teacher, train_labels,
  # teacher_params) -> (params, buffers), its options applied; None for the others, whose
  # `loss` then returns (loss, parts) only.
  init: Callable | None = None


def trainable(name: str) -> bool:
  """Whether method `name` owns parameters or buffers (the modules
  written before the interface do not declare TRAINABLE)."""
  return getattr(_MODULES.get(name), 'TRAINABLE', False)


def fields(name: str) -> tuple[str, ...]:
  """The config.distill fields method `name` reads (all, if unknown)."""
  module = _MODULES.get(name)
  return module.FIELDS if module else ()


def pair_mismatch(name: str, student: Outputs, teacher: Outputs) -> str | None:
  """What keeps method `name` from pairing these networks (Outputs of
  shapes), in the method's own terms where its module says (`check`), or
  None."""
  check = getattr(_MODULES.get(name), 'check', None)
  return check(student, teacher) if check else None


def get(name: str) -> Callable:
  if name not in DISTILLERS:
    raise UserError(
      f'config.distill.method={name!r} is unknown; choose one '
      f'of: {", ".join(DISTILLERS)}'
    )
  return DISTILLERS[name]


def build(distill: ml_collections.ConfigDict) -> Distiller:
  """The method config.distill chooses, with its static options applied.

  Raises:
    UserError: an unknown method, or standardize_logits set for a method
      that does not accept it.
  """
  loss = get(distill.method)
  module = _MODULES[distill.method]
  if distill.get('standardize_logits', False):
    if not module.STANDARDIZES:
      raise UserError(
        'config.distill.standardize_logits=True applies to '
        f'{", ".join(STANDARDIZING)} only, not '
        f'config.distill.method={distill.method!r}'
      )
    loss = functools.partial(module.loss, standardize=True)
  if trainable(distill.method):
    options = module.options(distill)
    return Distiller(
      functools.partial(module.loss, **options),
      module.NEEDS_STAGES,
      module.NEEDS_EPOCH,
      functools.partial(module.init, **options),
    )
  return Distiller(loss, module.NEEDS_STAGES, module.NEEDS_EPOCH)
