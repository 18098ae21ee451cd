"""A sweep's settings: named overrides of a base pipeline config, and the
seeds each runs.

A setting is a string 'NAME: field=value, field=value' (fields dotted from
the pipeline config, values Python literals, tuples among them), e.g.
'delta=0.2: teacher.icc.delta=0.2' or
'kd@20: student.num_epochs=20, student.lr_decay_epochs=(12, 15)'.
"""

import ast
import dataclasses
import os
from typing import Any

import ml_collections

from icckd_jax.errors import UserError

DELTA_FIELD = 'teacher.icc.delta'


@dataclasses.dataclass(frozen=True)
class Setting:
  name: str
  overrides: dict[str, Any]


def parse_setting(text: str) -> Setting:
  """'NAME: a.b=1, c=0.5' -> Setting('NAME', {'a.b': 1, 'c': 0.5})."""
  name, _, rest = text.partition(':')
  name = name.strip()
  # The name is a directory under the sweep's workdir: it must stay there.
  if (
    not name
    or name in (os.curdir, os.pardir)
    or any(sep in name for sep in ('/', '\\', '\0'))
  ):
    raise UserError(
      f'config.settings entry {text!r} needs a name before ":" that is a '
      "directory name of its own (not '.' or '..', without '/' or '\\')"
    )
  overrides = {}
  for item in filter(None, (part.strip() for part in _items(rest))):
    field, eq, value = item.partition('=')
    if not eq:
      raise UserError(
        f'config.settings entry {text!r}: {item!r} is not field=value'
      )
    try:
      overrides[field.strip()] = ast.literal_eval(value.strip())
    except (ValueError, SyntaxError):
      overrides[field.strip()] = value.strip()
  return Setting(name, overrides)


def _items(text: str) -> list[str]:
  """`text` split at the commas outside brackets: 'a=1, b=(2, 3)' ->
  ['a=1', ' b=(2, 3)'] (a tuple's commas are part of its value)."""
  items, depth, start = [], 0, 0
  for i, char in enumerate(text):
    depth += (char in '([{') - (char in ')]}')
    if char == ',' and depth == 0:
      items.append(text[start:i])
      start = i + 1
  return items + [text[start:]]


def apply_overrides(
  base: ml_collections.ConfigDict, overrides: dict[str, Any]
) -> ml_collections.ConfigDict:
  """A copy of `base` with dotted `overrides` set; unknown fields are errors.

  ConfigDict applies each dotted field itself (`update_from_flattened_dict`),
  on a locked copy so that a field it lacks is refused rather than added.
  A subscript ('seeds[0]') is not part of the settings' syntax: it names no
  field."""
  config = ml_collections.ConfigDict(base.to_dict())
  config.lock()
  for field, value in overrides.items():
    try:
      if '[' in field:
        raise KeyError(field)
      config.update_from_flattened_dict({field: value})
    except (KeyError, AttributeError):
      raise UserError(
        f'config.settings: {field!r} is not a field of the pipeline config'
      ) from None
    except TypeError as e:
      raise UserError(f'config.settings: {field}={value!r}: {e}') from None
  config.unlock()
  return config


def seeds_of(config: ml_collections.ConfigDict | dict, name: str) -> tuple:
  """The seeds of setting `name`: `primary_seeds` for the settings named in
  `primary_settings` (a study's pre-registered comparison, which needs more
  seeds), `seeds` for the others."""
  if name in (config.get('primary_settings') or ()):
    return tuple(config['primary_seeds'])
  return tuple(config['seeds'])


def delta_settings(settings: list[Setting]) -> dict[str, float]:
  """{name: δ} of the settings that change δ alone, to a value in [0, 1)
  (a gate that some anchors pass and some do not): the points of a trend
  across δ."""
  return {
    s.name: float(s.overrides[DELTA_FIELD])
    for s in settings
    if set(s.overrides) == {DELTA_FIELD} and 0 <= s.overrides[DELTA_FIELD] < 1
  }
