"""A stage config as typed, frozen parts, built once at the edge.

`from_config(config)` turns a validated teacher or student ConfigDict into a
`RunSpec`: the training recipe, the data, the objective (a teacher's), the
teacher source and distillation (a student's), and the bookkeeping of where
and how visibly the run is written. Each function below the stages takes the
part it reads (or plain arguments), so what it depends on is in its
signature. The ConfigDict itself stays only where it is written or compared
verbatim: config.json and the checkpoints' copy (`RunSpec.saved`), the key
that shares compiled steps (`RunSpec.compiled`), the resume checks
(runs/validate.py) and the store that names runs by their config.

Every field `config_schema.fields()` declares lands in exactly one part (its
section says which: `dataset.*` in `DataRequest`, `icc.*` in `Objective`, ...;
the top-level ones in `Recipe` or `Bookkeeping`, by role; `distill.*` in
`Distillation`, the method's own settings in its `own`).
"""

from __future__ import annotations

from collections.abc import Mapping
import dataclasses
from typing import Any

import ml_collections

from icckd_jax import distillers
from icckd_jax.data.datasets import DataRequest
from icckd_jax.distillers import settings
from icckd_jax.runs import compat
from icckd_jax.runs import config_schema
from icckd_jax.runs import reuse as reuse_lib
from icckd_jax.runs import validate


@dataclasses.dataclass(frozen=True)
class Recipe:
  """How the network is trained: what a run computes, top-level fields.

  `lr_decay_epochs` holds the epochs at whose start the learning rate is
  multiplied by `lr_decay_rate`; `crop_padding` and `flip` are the random
  crop's zero padding and the horizontal flip of the augmentation;
  `optimizer` is 'sgd' or a student's 'dot', whose momenta are
  momentum ∓ `dot_delta` (training/dot.py).
  """

  model: str
  num_epochs: int
  batch_size: int
  learning_rate: float
  lr_decay_rate: float
  lr_decay_epochs: tuple[int, ...]
  momentum: float
  weight_decay: float
  crop_padding: int
  flip: bool
  dtype: str
  seed: int
  # Runs saved before these fields existed trained with SGD.
  optimizer: str = 'sgd'
  dot_delta: float = 0.075


@dataclasses.dataclass(frozen=True)
class Bookkeeping:
  """Where and how visibly a run is written, and how and how often it is
  evaluated: never the numbers it computes (config_schema roles
  'bookkeeping' and 'evaluation')."""

  log_every_steps: int
  checkpoint_every_epochs: int
  keep_checkpoints: int
  preemption_check_every_steps: int
  eval_batch_size: int
  eval_every_epochs: int
  mode: str = 'teacher'
  workdir: str | None = None
  compilation_cache: str | None = None
  num_devices: int | None = None


@dataclasses.dataclass(frozen=True)
class Inputs:
  """Which input path feeds the run (input_pipeline/inputs.py): 'auto',
  'resident' or 'stream'; Grain's decode processes when streaming; how a
  streamed 'resized_crop' decodes ('auto', 'torchvision', 'exact', 'fast':
  input_pipeline/stream.py)."""

  mode: str = 'auto'
  workers: int = 0
  decode: str = 'auto'


@dataclasses.dataclass(frozen=True)
class Objective:
  """A teacher's gated intra-class loss (docs/method.md §3): weight λ
  (`lam`; 0: cross-entropy alone), temperature τ, gate δ, how the margin
  is measured, the projection head and what an anchor-less batch counts."""

  lam: float
  tau: float
  delta: float
  margin_kind: str
  head: str
  head_dim: int
  empty_anchors: str


@dataclasses.dataclass(frozen=True)
class Cache:
  """A teacher's cross-batch cache: its size in examples (0: none) and
  whether it stores 'features' or 'images'."""

  size: int
  store: str


@dataclasses.dataclass(frozen=True)
class TeacherSource:
  """Where a student's teacher comes from: a teacher run of this project
  (`workdir`, its `checkpoint`) or a PyTorch `.pth` file of architecture
  `model`; `allow_unfinished` lets a teacher short of its epochs serve."""

  workdir: str | None = None
  checkpoint: str | None = None
  pth: str | None = None
  model: str | None = None
  allow_unfinished: bool = False


@dataclasses.dataclass(frozen=True)
class Distillation:
  """A student's distillation (docs/distillers.md): the method, the values
  of the settings several methods share (`distillers.settings.SHARED`) and
  those of the method's own settings (its module's `METHOD.own`), as
  config.distill holds them flat."""

  method: str
  shared: Mapping[str, Any]
  own: Mapping[str, Any]

  @classmethod
  def from_section(cls, distill: Mapping[str, Any]) -> Distillation:
    """The part of a config.distill section (plain values): a setting the
    section lacks takes its added default (a run saved before it existed),
    and one without is missing. An unknown method is refused by
    `distillers.build`; it has no own settings here."""
    method = distillers.DISTILLERS.get(distill['method'])

    def values(names) -> dict[str, Any]:
      return {name: compat.distill_value(distill, name) for name in names}

    return cls(
      method=distill['method'],
      shared=values(settings.SHARED),
      own=values(method.own if method else ()),
    )

  @property
  def weights(self) -> dict[str, float]:
    """{name: value} of the settings the method reads that the student step
    takes as traced scalars: one compiled step serves every value."""
    values = self.to_dict()
    return {name: values[name] for name in distillers.traced(self.method)}

  def to_dict(self) -> dict[str, Any]:
    """{field: value}: config.distill's plain values that the distillers'
    registry binds a method's options from (`distillers.build`)."""
    return {'method': self.method, **self.shared, **self.own}


@dataclasses.dataclass(frozen=True)
class RunSpec:
  """A teacher or student stage config, as parts.

  Attributes:
    recipe, bookkeeping, data, inputs: every stage's.
    objective, cache: a teacher's (None for a student).
    teacher, distillation: a student's (None for a teacher).
    saved: the config as the plain JSON tree written with the run
      (config.json and every checkpoint's copy), verbatim.
    compiled: the canonical string of the fields a compiled step depends on
      (config_schema.not_compiled() left out): steps of equal keys are shared.
  """

  recipe: Recipe
  bookkeeping: Bookkeeping
  data: DataRequest
  inputs: Inputs
  saved: dict[str, Any]
  compiled: str
  objective: Objective | None = None
  cache: Cache | None = None
  teacher: TeacherSource | None = None
  distillation: Distillation | None = None

  def step_key(self, *extra: str) -> str:
    """The key of this run's compiled step, with `extra` (the step's other
    static inputs)."""
    return '|'.join((self.compiled, *extra))


# Each part, with the config section its fields are read from ('' the top
# level). Top-level fields are in Recipe or Bookkeeping.
PARTS = {
  Recipe: '',
  Bookkeeping: '',
  DataRequest: 'dataset',
  Inputs: 'input',
  Objective: 'icc',
  Cache: 'cache',
  TeacherSource: 'teacher',
  Distillation: 'distill',
}


def part(cls, section: ml_collections.ConfigDict | Mapping) -> Any:
  """`cls` from `section` (a config section): a field it lacks takes the part's
  default (a part without one needs it); keys no part reads are left out. A
  part that reads its section its own way says how (`from_section`)."""
  if isinstance(section, ml_collections.ConfigDict):
    section = section.to_dict()
  if hasattr(cls, 'from_section'):
    return cls.from_section(section)
  kwargs = {}
  for f in dataclasses.fields(cls):
    if f.name in section:
      kwargs[f.name] = section[f.name]
    elif (
      f.default is dataclasses.MISSING
      and f.default_factory is dataclasses.MISSING
    ):
      raise KeyError(f'config field {f.name!r} is missing')
  return cls(**kwargs)


def data_request(dataset: ml_collections.ConfigDict) -> DataRequest:
  """The `DataRequest` of a config's `dataset` section."""
  return DataRequest.from_fields(dataset.to_dict())


def from_config(config: ml_collections.ConfigDict) -> RunSpec:
  """The parts of the teacher or student stage `config` (checked already:
  `validate.check_config`)."""
  tree = config.to_dict()
  recipe = dict(tree)
  recipe['lr_decay_epochs'] = tuple(tree['lr_decay_epochs'])
  distill = tree.get('distill')
  return RunSpec(
    recipe=part(Recipe, recipe),
    bookkeeping=part(Bookkeeping, tree),
    data=DataRequest.from_fields(tree.get('dataset') or {}),
    inputs=part(Inputs, tree.get('input') or {}),
    saved=validate.config_as_dict(config),
    compiled=reuse_lib.config_key(
      config,
      config_schema.not_compiled() + compat.top_level_at_added_default(config),
    ),
    objective=part(Objective, tree['icc']) if 'icc' in tree else None,
    cache=part(Cache, tree['cache']) if 'cache' in tree else None,
    teacher=part(TeacherSource, tree['teacher']) if 'teacher' in tree else None,
    distillation=None if distill is None else part(Distillation, distill),
  )


def checked(config: ml_collections.ConfigDict, workdir: str | None) -> RunSpec:
  """`from_config(config)` after every check of the config alone and of the
  run already in `workdir` (raises a one-line UserError before anything is
  written)."""
  validate.check_config(config)
  validate.check_resumable(config, workdir)
  return from_config(config)
