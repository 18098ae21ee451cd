"""One declaration per config field: its role and the values it may take.

Everything that treats fields differently is derived from `fields()`: the
range and choice checks (`validate.check_config`), which fields a stored run
may be resumed with changed (`resumable`), which fields the run store's key
leaves out (`bookkeeping`), and which the compiled step does not depend on
(`not_compiled`). A field not declared here is an `identity` field that must
be a finite number if it is one.

The stages' own fields are declared below (`_FIELDS`); config.distill's are
the settings the distillers declare (distillers/settings.py, each method's
module), read from the registry on each call, so that a method registered
at run time is validated, keyed and resumed like the others.

Roles:
  identity     what a run computes and compiles: another value, another run.
  traced       what a run computes, passed to the compiled step as a value:
               another run, but one compilation serves every value.
  schedule     how long a run goes (num_epochs): another run, but a stored
               one may be resumed with more or fewer epochs.
  evaluation   how and how often evaluation and the devices run, never the
               numbers computed: may change when a run resumes.
  bookkeeping  where and how visibly a run is written, never what it is.

A stage also ignores the fields it does not use (`unused`): a
cross-entropy teacher (λ = 0) has no gate, projection head or cache, so
their fields are neither part of its identity nor checked on resume.

How runs saved before a field existed read it is runs/compat.py's.
"""

import dataclasses
import jax.numpy as jnp
import ml_collections

from icckd_jax import distillers
from icckd_jax.distillers import settings
from icckd_jax.distillers.settings import ANY
from icckd_jax.distillers.settings import FRACTION
from icckd_jax.distillers.settings import NON_NEGATIVE
from icckd_jax.distillers.settings import POSITIVE
from icckd_jax.input_pipeline import inputs
from icckd_jax.input_pipeline import stream
from icckd_jax.objective import losses
from icckd_jax.objective import projection

# Compute dtypes by name.
DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}

ROLES = ('identity', 'traced', 'schedule', 'evaluation', 'bookkeeping')

# (predicate, what would be valid) of a numeric field: the distillers'
# settings declare theirs with the same rules (distillers/settings.py).
Rule = settings.Rule
_int_at_least = settings.at_least

# The optimisers by name (training/optim.py).
OPTIMIZERS = ('sgd', 'dot')


@dataclasses.dataclass(frozen=True)
class Field:
  """A config field's role, and its valid range (numbers) or choices."""

  role: str = 'identity'
  rule: Rule = ANY
  choices: tuple[str, ...] | None = None

  def __post_init__(self):
    if self.role not in ROLES:
      raise ValueError(f'unknown role {self.role!r}')


_FIELDS: dict[str, Field] = {
  'mode': Field('bookkeeping'),
  'workdir': Field('bookkeeping'),
  'log_every_steps': Field('bookkeeping', _int_at_least(1)),
  'checkpoint_every_epochs': Field('bookkeeping', _int_at_least(1)),
  # 0 would keep nothing to resume from.
  'keep_checkpoints': Field('bookkeeping', _int_at_least(1)),
  'compilation_cache': Field('bookkeeping'),
  'preemption_check_every_steps': Field('bookkeeping', _int_at_least(1)),
  'num_epochs': Field('schedule', _int_at_least(1)),
  'eval_batch_size': Field('evaluation', _int_at_least(1)),
  'eval_every_epochs': Field('evaluation', _int_at_least(1)),
  'num_devices': Field('evaluation', _int_at_least(0)),
  'seed': Field('traced', _int_at_least(0)),
  'batch_size': Field(rule=_int_at_least(1)),
  'learning_rate': Field(rule=POSITIVE),
  'lr_decay_rate': Field(rule=POSITIVE),
  'momentum': Field(rule=FRACTION),
  # 'dot' (a student's only: validate.check_optimizer) splits the task and
  # distillation momenta by dot_delta (training/dot.py).
  'optimizer': Field(choices=OPTIMIZERS),
  'dot_delta': Field(rule=NON_NEGATIVE),
  'weight_decay': Field(rule=NON_NEGATIVE),
  'crop_padding': Field(rule=_int_at_least(0)),
  'dtype': Field(choices=tuple(DTYPES)),
  'dataset.num_train': Field(rule=_int_at_least(1)),
  'dataset.num_test': Field(rule=_int_at_least(1)),
  'dataset.num_classes': Field(rule=_int_at_least(2)),
  'dataset.image_size': Field(rule=_int_at_least(1)),
  'dataset.channels': Field(rule=_int_at_least(1)),
  'dataset.seed': Field(rule=_int_at_least(0)),
  'dataset.train_subset': Field(rule=_int_at_least(0)),
  'dataset.test_subset': Field(rule=_int_at_least(0)),
  # Which path decides the augmentation's pixels. A field added after runs
  # were saved has its value for those runs in compat.ADDED_DEFAULTS.
  'input.mode': Field(choices=('auto', 'resident', 'stream')),
  # Which augmentation and evaluation transform a streamed set gets
  # (input_pipeline/host_augment.py).
  'dataset.augment': Field(choices=stream.AUGMENTS),
  # The statistics the inputs are normalised with.
  'dataset.normalization': Field(choices=inputs.NORMALIZATIONS),
  # How fast, never what: the batches do not depend on the worker count
  # (input_pipeline/stream.py).
  'input.workers': Field('bookkeeping', _int_at_least(0)),
  # A streamed ImageNet crop's decode, which decides its pixels; 'auto' is
  # what a resumed run started with (runs/data_identity.py).
  'input.decode': Field(choices=stream.DECODES),
  # λ = 0 also removes the second view, so it is traced only among λ > 0.
  'icc.lam': Field('traced', NON_NEGATIVE),
  'icc.tau': Field('traced', POSITIVE),
  # δ = -1 lets every anchor through, δ >= 1 none: any finite value is a
  # meaningful gate (docs/method.md §3).
  'icc.delta': Field('traced', ANY),
  'icc.margin_kind': Field(choices=losses.MARGIN_KINDS),
  'icc.head': Field(choices=projection.HEADS),
  'icc.head_dim': Field(rule=_int_at_least(1)),
  'icc.empty_anchors': Field(choices=losses.EMPTY_ANCHORS),
  'cache.size': Field(rule=_int_at_least(0)),
  'cache.store': Field(choices=('features', 'images')),
  # Any teacher of the same architecture: its weights are an argument.
  'teacher.workdir': Field('traced'),
  # Whether an unfinished teacher may be used: the fingerprint in
  # teacher_eval.json says which one was.
  'teacher.allow_unfinished': Field('bookkeeping'),
}


def _distill_fields() -> dict[str, Field]:
  """config.distill's declarations, from the registry as it is now."""
  declared = {'distill.method': Field(choices=tuple(distillers.DISTILLERS))}
  for name, setting in distillers.declarations().items():
    declared[f'distill.{name}'] = Field(
      'traced' if setting.traced else 'identity',
      setting.rule,
    )
  return declared


def fields() -> dict[str, Field]:
  """{dotted path: Field} of every declared field."""
  return {**_FIELDS, **_distill_fields()}


_UNDECLARED = Field()


def field(path: str) -> Field:
  """The declaration of the dotted `path` (an undeclared one: identity)."""
  return fields().get(path, _UNDECLARED)


def _with_role(*roles: str) -> tuple[str, ...]:
  return tuple(path for path, f in fields().items() if f.role in roles)


def bookkeeping() -> tuple[str, ...]:
  """Fields that are never part of what a run is (left out of its key)."""
  return _with_role('bookkeeping')


def resumable() -> tuple[str, ...]:
  """Fields a stored run may be resumed with changed."""
  return _with_role('bookkeeping', 'schedule', 'evaluation')


def not_compiled() -> tuple[str, ...]:
  """Fields the compiled train step does not depend on."""
  return _with_role('bookkeeping', 'schedule', 'traced')


def unused(config: ml_collections.ConfigDict | dict) -> tuple[str, ...]:
  """The fields of a stage config that its run does not read."""
  found = () if config.get('optimizer') == 'dot' else ('dot_delta',)
  icc = config.get('icc')
  if icc is not None and icc.get('lam') == 0:
    # The cross-entropy teacher: no gate, head or cache.
    return found + tuple(
      path
      for path in _FIELDS
      if path.startswith(('icc.', 'cache.')) and path != 'icc.lam'
    )
  distill = config.get('distill')
  if distill is not None:
    # A student: the weights of the other methods.
    read = distillers.fields(distill.get('method'))
    if read:
      return found + tuple(
        f'distill.{name}'
        for name in distillers.declarations()
        if name not in read
      )
  return found
