"""The one contract every distillation method keeps (distillers/__init__.py).

A method's module declares one `Method`: its own config.distill settings
and the shared ones it reads (distillers/settings.py), what the step must
collect for it (`Reads`), its loss, and, where it has them, its static
options, its trainable parts' `init` and its pair `check`.
`distillers.build` binds a Method to the options of one config into a
`Distiller`, which is all the student's stage and step see: the ConfigDict
stops there, and the methods receive plain Python values.

Every loss has the one signature

  loss(batch: Batch, hp: Hyper, **options)
      -> (loss [], parts {name: []}, new buffers)

`Batch` (distillers/outputs.py) holding the two networks' Outputs, the
labels [b], the all-gather and the method's `Trainable` state; a method
without trainable parts ignores `batch.trainable` and hands back its
buffers unchanged (None).
"""

from collections.abc import Callable, Mapping
import dataclasses
import functools
from typing import Any

import jax

from icckd_jax.distillers.outputs import Batch
from icckd_jax.distillers.outputs import Outputs
from icckd_jax.distillers.outputs import Trainable
from icckd_jax.distillers.settings import Setting
from icckd_jax.objective import losses

# The traced scalars of `student_step.hyperparameters` (and 'epoch').
Hyper = dict[str, jax.Array]
# What a loss returns: (loss [], parts {name: []}, new buffers).
Result = tuple[jax.Array, dict, Any]
# (batch, hp, **options) -> Result
LossFn = Callable[..., Result]
# (key, student, teacher, train_labels [N], teacher_params, **options)
#   -> (params, buffers)
InitFn = Callable[..., tuple[Any, Any]]
# (student, teacher: Outputs of shapes) -> what keeps the pair apart, or None
CheckFn = Callable[[Outputs, Outputs], str | None]
# (batch, hp) -> [] the one term of a `one_term` method.
TermFn = Callable[[Batch, Hyper], jax.Array]


@dataclasses.dataclass(frozen=True)
class Reads:
  """What a method reads beyond each network's logits and pooled features.

  stages: `Outputs.stages` and `.preact_stages` (the models are applied with
    'intermediates' mutable; a method without them compiles as if they did
    not exist);
  epoch: hp['epoch'], the 1-based epoch of the step (a warm-up);
  strong_view: a second, strongly augmented view of each example
    (input_pipeline/rand_augment.py), both networks applied to it
    (`Batch.student_strong`, `.teacher_strong`).
  """

  stages: bool = False
  epoch: bool = False
  strong_view: bool = False


def no_options(distill: Mapping[str, Any]) -> dict:
  """The static options of a method that has none."""
  del distill
  return {}


def standardize_option(distill: Mapping[str, Any]) -> dict:
  """The option of a method that compares standardised logits when
  config.distill.standardize_logits is set."""
  return {'standardize': bool(distill.get('standardize_logits', False))}


def no_init(key, student, teacher, train_labels, teacher_params):
  """(None, None): a method without parameters or buffers."""
  del key, student, teacher, train_labels, teacher_params
  return None, None


def no_check(student: Outputs, teacher: Outputs) -> None:
  """Any pair that traces: the method says nothing of its own."""
  del student, teacher


@dataclasses.dataclass(frozen=True)
class Method:
  """What a method's module declares (its `METHOD`).

  shared: the names of the `settings.SHARED` it reads.
  own: its own settings {name: Setting}, config.distill.<name> each (a name
    no other method declares: by custom, prefixed with the method's).
  The fields it reads, `fields`, are both; the others are not part of the
  student's identity (runs/config_schema.py).
  loss: its `LossFn`.
  reads: what the step collects for it.
  options: config.distill as a plain mapping -> the static keyword
    arguments of `loss` and `init`.
  init: a trainable method's parameters and buffers (`InitFn`): it owns
    params['distiller'] of the student's state and takes the batch's example
    indices; None for a method without trainable parts.
  check: what keeps it from serving a pair of networks, said in its own
    terms before anything traces (stages/distill_pair.py).
  task_weight: the traced setting w whose w · parts['ce'] is the loss's
    task term (the rest is the distillation term): DOT takes their
    gradients apart (training/dot.py).
  """

  shared: tuple[str, ...]
  loss: LossFn
  own: Mapping[str, Setting] = dataclasses.field(default_factory=dict)
  reads: Reads = Reads()
  options: Callable[[Mapping[str, Any]], dict] = no_options
  init: InitFn | None = None
  check: CheckFn = no_check
  task_weight: str = 'ce_weight'

  @property
  def fields(self) -> tuple[str, ...]:
    """The config.distill fields it reads: the shared ones, then its own."""
    return (*self.shared, *self.own)


@dataclasses.dataclass(frozen=True)
class Distiller:
  """A method bound to one config's options, as the student's stage uses
  it: `loss` (batch, hp) and `init` (key, student, teacher, train_labels,
  teacher_params) take no options any more."""

  name: str
  loss: LossFn
  reads: Reads
  init: InitFn
  check: CheckFn
  # Owns params['distiller'] and state.distiller_buffers, and takes the
  # batch's example indices.
  trainable: bool
  task_weight: str = 'ce_weight'

  def task(self, parts: Mapping[str, jax.Array], hp: Hyper) -> jax.Array:
    """[] the loss's task term w · CE (`Method.task_weight`), from the
    parts its loss returned."""
    return hp[self.task_weight] * parts['ce']


def bind(name: str, method: Method, distill: Mapping[str, Any]) -> Distiller:
  """`method` with the static options `distill` (plain values) sets."""
  options = method.options(distill)
  init = no_init
  if method.init is not None:
    init = functools.partial(method.init, **options)
  return Distiller(
    name=name,
    loss=functools.partial(method.loss, **options),
    reads=method.reads,
    init=init,
    check=method.check,
    trainable=method.init is not None,
    task_weight=method.task_weight,
  )


def cross_entropy(batch: Batch) -> jax.Array:
  """[] the student's mean cross-entropy on the local batch (a
  per-example term: the local mean is all a device needs)."""
  return losses.cross_entropy(batch.student.logits, batch.labels).mean()


def weighted(
  batch: Batch,
  hp: Hyper,
  name: str,
  term: jax.Array,
  weight: jax.Array,
  buffers: Any = None,
) -> Result:
  """(w_ce · CE + weight · term, {'ce': CE, name: term}, buffers), CE the
  batch's `cross_entropy` and w_ce hp['ce_weight']: the shape of most
  methods' loss."""
  ce = cross_entropy(batch)
  return hp['ce_weight'] * ce + weight * term, {'ce': ce, name: term}, buffers


def _one_term_loss(
  name: str, term: TermFn, weight: str, batch: Batch, hp: Hyper
) -> Result:
  return weighted(
    batch, hp, name, term(batch, hp), hp[weight], batch.trainable.buffers
  )


def one_term(
  name: str,
  term: TermFn,
  own: Mapping[str, Setting],
  *,
  shared: tuple[str, ...] = (),
  weight: str | None = None,
  reads: Reads = Reads(),
  check: CheckFn = no_check,
) -> Method:
  """The Method whose loss is w_ce · CE(s, y) + w · term, logged as
  {'ce', name}: `term(batch, hp)` [] of a method without trainable parts,
  w = hp[weight] (default f'{name}_weight'), its settings `own` and the
  shared 'ce_weight' (w_ce, which this loss always reads), then `shared`,
  any other shared settings it reads (`Method`)."""
  return Method(
    shared=('ce_weight', *shared),
    own=own,
    loss=functools.partial(
      _one_term_loss, name, term, weight or f'{name}_weight'
    ),
    reads=reads,
    check=check,
  )


__all__ = [
  'Batch',
  'CheckFn',
  'Distiller',
  'InitFn',
  'Hyper',
  'LossFn',
  'Method',
  'Outputs',
  'Reads',
  'Result',
  'TermFn',
  'Trainable',
  'bind',
  'cross_entropy',
  'no_check',
  'no_init',
  'no_options',
  'one_term',
  'standardize_option',
  'weighted',
]
