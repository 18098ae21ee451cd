"""The distillation methods, by name (mdistiller style).

Each method is one module declaring one `contract.Method` (its `METHOD`):

  fields   the config.distill fields it reads (the others are not part of
           the student's identity);
  reads    what the step collects for it beyond the two networks' logits
           and pooled features: the stage maps (`Outputs.stages`,
           `.preact_stages`) and/or the 1-based epoch (hp['epoch']);
  options  config.distill (a plain mapping) -> its static keyword
           arguments (CRD's bank width, ReviewKD's fusion cap, the
           logit-standardisation switch of kd, dkd and dist);
  init     (key, student, teacher, train_labels, teacher_params)
           -> (params, buffers), for a method with trainable parts
           (fitnet, vid, ofd, reviewkd, crd); absent for the others;
  check    (student, teacher) -> str | None: what keeps it from serving a
           pair of networks (Outputs of shapes), said in its own terms
           before anything traces (stages/distill_pair.py);
  loss     the one signature of every method,

    loss(batch, hp, **options) -> (loss, parts, new_buffers)

where `batch` is a `Batch` of the local batch shard: `student` and
`teacher`, the two networks' `Outputs` (the teacher's already under
stop_gradient), `labels` [b], `gather`, which all-gathers a [b, ...]
array to the global [B, ...] batch (for methods relating examples to each
other), and `trainable`, an `outputs.Trainable` (the method's parameters
to differentiate, its buffers, the batch's example indices, the step);
`hp` is the dict of traced scalars from `hyperparameters` (plus 'epoch'
when read). The per-device loss must be such that pmean-ed gradients are
those of the global loss. A method without trainable parts ignores
`batch.trainable` and returns its buffers (None) unchanged.

`init` gets the run's seed's key (to fold its own streams from), the two
networks' Outputs as jax.ShapeDtypeStruct, the training split's labels [N]
and the teacher's parameters (read only: OFD's margins come from its
BatchNorm); the buffers may be None (vid). The params live in the
student's state as params['distiller'] (same optimiser, gradients pmean-ed
like the model's), the buffers as state.distiller_buffers (runs/
train_state.py); both are checkpointed with it. The other methods add
nothing to the state, and their step compiles as before.

`build(config.distill)` (or the student's typed part of it,
runs/spec.py's `Distillation`) binds the chosen method to its options: a
`contract.Distiller`, all the student's stage and step see. The config
stops here; the methods receive plain values.

Each module's docstring gives its published CIFAR-100 recipe, which the
defaults of configs/student.py hold, and the code it was read from
(docs/distillers.md lists them). Adding a method is one new module and one
line below.
"""

from typing import Any, Protocol

from icckd_jax.distillers import at
from icckd_jax.distillers import contract
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
from icckd_jax.distillers.contract import Batch
from icckd_jax.distillers.contract import Distiller
from icckd_jax.distillers.contract import Method
from icckd_jax.distillers.contract import Reads
from icckd_jax.distillers.outputs import Outputs
from icckd_jax.distillers.outputs import Trainable
from icckd_jax.errors import UserError

DISTILLERS: dict[str, Method] = {
  'kd': kd.METHOD,
  'kd_rkd': kd_rkd.METHOD,
  'dkd': dkd.METHOD,
  'dist': dist.METHOD,
  'at': at.METHOD,
  'nst': nst.METHOD,
  'pkt': pkt.METHOD,
  'sp': sp.METHOD,
  'rkd': rkd.METHOD,
  'fitnet': fitnet.METHOD,
  'crd': crd.METHOD,
  'vid': vid.METHOD,
  'ofd': ofd.METHOD,
  'reviewkd': reviewkd.METHOD,
  'kdsvd': kdsvd.METHOD,
}

# The methods that accept config.distill.standardize_logits.
STANDARDIZING = tuple(
  name
  for name, method in DISTILLERS.items()
  if 'standardize_logits' in method.fields
)

__all__ = [
  'Batch',
  'DISTILLERS',
  'Distiller',
  'Method',
  'Outputs',
  'Reads',
  'STANDARDIZING',
  'Trainable',
  'build',
  'fields',
  'get',
]


def fields(name: str) -> tuple[str, ...]:
  """The config.distill fields method `name` reads (none, if unknown)."""
  method = DISTILLERS.get(name)
  return method.fields if method else ()


def get(name: str) -> Method:
  """The method called `name`.

  Raises:
    UserError: no method has that name.
  """
  if name not in DISTILLERS:
    raise UserError(
      f'config.distill.method={name!r} is unknown; choose one '
      f'of: {", ".join(DISTILLERS)}'
    )
  return DISTILLERS[name]


class Settings(Protocol):
  """What `build` reads: config.distill, or the student's
  `spec.Distillation`: the method's name and every field's plain value."""

  method: str

  def to_dict(self) -> dict[str, Any]: ...


def build(distill: Settings) -> Distiller:
  """The method config.distill chooses, bound to its static options.

  Raises:
    UserError: an unknown method, or standardize_logits set for a method
      that does not accept it.
  """
  method = get(distill.method)
  settings = distill.to_dict()
  if settings.get('standardize_logits', False):
    if distill.method not in STANDARDIZING:
      raise UserError(
        'config.distill.standardize_logits=True applies to '
        f'{", ".join(STANDARDIZING)} only, not '
        f'config.distill.method={distill.method!r}'
      )
  return contract.bind(distill.method, method, settings)
