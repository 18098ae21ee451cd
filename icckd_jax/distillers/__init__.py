"""The distillation methods, by name (mdistiller style).

Each method is one module declaring one `contract.Method` (its `METHOD`):

  shared   the names of the settings it reads that several methods share
           (`settings.SHARED`: temperature, the CE and KD weights, ...);
  own      its own settings, {name: settings.Setting}: each one's default
           (its published recipe), whether it is traced or shapes the step,
           its range and the source of the default. Each is the config
           field config.distill.<name>; configs/student.py's defaults,
           runs/config_schema.py's declarations and runs/spec.py's
           `Distillation` are derived from them (`defaults`,
           `declarations`), never spelled out again;
  reads    what the step collects for it beyond the two networks' logits
           and pooled features: the stage maps (`Outputs.stages`,
           `.preact_stages`) and/or the 1-based epoch (hp['epoch']);
  options  config.distill (a plain mapping) -> its static keyword
           arguments (CRD's bank width, ReviewKD's fusion cap, the
           logit-standardisation switch of kd, dkd, dist, ctkd, mlkd);
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

Each module's docstring gives its published CIFAR-100 recipe, which its
settings' defaults hold, and the code it was read from (docs/distillers.md
lists them). Adding a method costs two package files: its module and one
`register` line below (a method registered at run time, by a user's own
module calling `register`, costs none).
"""

from typing import Any, Protocol

from icckd_jax.distillers import at
from icckd_jax.distillers import contract
from icckd_jax.distillers import crd
from icckd_jax.distillers import ctkd
from icckd_jax.distillers import dist
from icckd_jax.distillers import dkd
from icckd_jax.distillers import fitnet
from icckd_jax.distillers import kd
from icckd_jax.distillers import kd_rkd
from icckd_jax.distillers import kdsvd
from icckd_jax.distillers import mlkd
from icckd_jax.distillers import nst
from icckd_jax.distillers import ofd
from icckd_jax.distillers import pkt
from icckd_jax.distillers import reviewkd
from icckd_jax.distillers import rkd
from icckd_jax.distillers import settings
from icckd_jax.distillers import sp
from icckd_jax.distillers import vid
from icckd_jax.distillers import wttm
from icckd_jax.distillers.contract import Batch
from icckd_jax.distillers.contract import Distiller
from icckd_jax.distillers.contract import Method
from icckd_jax.distillers.contract import Reads
from icckd_jax.distillers.outputs import Outputs
from icckd_jax.distillers.outputs import Trainable
from icckd_jax.distillers.settings import Setting
from icckd_jax.errors import UserError

# The registry: name -> Method, in the order the config lists them.
DISTILLERS: dict[str, Method] = {}

__all__ = [
  'Batch',
  'DISTILLERS',
  'Distiller',
  'Method',
  'Outputs',
  'Reads',
  'Setting',
  'Trainable',
  'build',
  'declarations',
  'defaults',
  'fields',
  'get',
  'register',
  'traced',
]


def declarations() -> dict[str, Setting]:
  """{name: Setting} of every config.distill field but `method`: the shared
  ones, then each registered method's own, as registered now."""
  declared = dict(settings.SHARED)
  for method in DISTILLERS.values():
    declared.update(method.own)
  return declared


def defaults() -> dict[str, Any]:
  """{name: default} of every config.distill field but `method`."""
  return {name: s.default for name, s in declarations().items()}


def register(name: str, method: Method) -> Method:
  """Adds `method` as config.distill.method=`name` (at import, or later by
  a user's module), and returns it.

  Raises:
    ValueError: the name is taken, a shared setting it names does not
      exist, or one of its own settings is declared already.
  """
  if name in DISTILLERS:
    raise ValueError(f'a distiller named {name!r} is registered already')
  unknown = set(method.shared) - set(settings.SHARED)
  if unknown:
    raise ValueError(f'{name}: no shared settings {sorted(unknown)}')
  taken = set(method.own) & (set(declarations()) | {'method'})
  if taken:
    raise ValueError(f'{name}: settings {sorted(taken)} are declared already')
  DISTILLERS[name] = method
  return method


register('kd', kd.METHOD)
register('kd_rkd', kd_rkd.METHOD)
register('dkd', dkd.METHOD)
register('dist', dist.METHOD)
register('at', at.METHOD)
register('nst', nst.METHOD)
register('pkt', pkt.METHOD)
register('sp', sp.METHOD)
register('rkd', rkd.METHOD)
register('kdsvd', kdsvd.METHOD)
register('fitnet', fitnet.METHOD)
register('vid', vid.METHOD)
register('ofd', ofd.METHOD)
register('reviewkd', reviewkd.METHOD)
register('crd', crd.METHOD)
register('wttm', wttm.METHOD)
register('ctkd', ctkd.METHOD)
register('mlkd', mlkd.METHOD)


def fields(name: str) -> tuple[str, ...]:
  """The config.distill fields method `name` reads (none, if unknown)."""
  method = DISTILLERS.get(name)
  return method.fields if method else ()


def traced(name: str) -> tuple[str, ...]:
  """The fields method `name` reads that its step takes as traced scalars
  (hp[field]); none, if unknown."""
  declared = declarations()
  return tuple(f for f in fields(name) if declared[f].traced)


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


class Section(Protocol):
  """What `build` reads: config.distill, or the student's
  `spec.Distillation`: the method's name and every field's plain value."""

  method: str

  def to_dict(self) -> dict[str, Any]: ...


def build(distill: Section) -> Distiller:
  """The method config.distill chooses, bound to its static options.

  Raises:
    UserError: an unknown method, or a shared setting that shapes the step
      (standardize_logits) set for a method that does not read it.
  """
  method = get(distill.method)
  values = distill.to_dict()
  for name, shared in settings.SHARED.items():
    value = values.get(name, shared.default)
    if shared.traced or value == shared.default or name in method.shared:
      continue
    readers = [m for m, d in DISTILLERS.items() if name in d.shared]
    raise UserError(
      f'config.distill.{name}={value!r} applies to '
      f'{", ".join(readers)} only, not '
      f'config.distill.method={distill.method!r}'
    )
  return contract.bind(distill.method, method, values)
