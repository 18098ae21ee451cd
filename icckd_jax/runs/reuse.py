"""Objects built once and shared by the runs of one process.

A process that runs many runs (a worker of many stages) trains teachers
and students that differ only in traced values (δ, λ, τ, the distillation
weights, the teacher's weights) or not at all in what is compiled. Handing
them one `Reuse` lets them share the loaded data set and the jitted steps,
so XLA compiles each distinct step once. A single run passes none and
builds everything itself. (What a run's loop calls beside its steps, an
ETA of all runs for one, is handed to the run itself: training/hooks.py.)
"""

import collections
import json
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import ml_collections

T = TypeVar('T')


class Reuse:
  """A keyed store of built objects, counting how many of each kind it built."""

  def __init__(self):
    self._items: dict[tuple[str, str], Any] = {}
    self.builds: collections.Counter[str] = collections.Counter()

  def get(self, kind: str, key: str, build: Callable[[], T]) -> T:
    if (kind, key) not in self._items:
      self._items[kind, key] = build()
      self.builds[kind] += 1
    return self._items[kind, key]


def get(reuse: Reuse | None, kind: str, key: str, build: Callable[[], T]) -> T:
  """`reuse.get(...)`, or simply `build()` without a store."""
  return build() if reuse is None else reuse.get(kind, key, build)


def config_key(
  config: ml_collections.ConfigDict,
  ignore: Iterable[str] = (),
  drop_if_empty: Iterable[str] = (),
) -> str:
  """A canonical string of `config` without the dotted fields in `ignore`,
  and without the top-level sections of `drop_if_empty` that this leaves
  empty."""
  tree = json.loads(config.to_json_best_effort())
  for path in ignore:
    parts = path.split('.')
    node = tree
    for part in parts[:-1]:
      node = node.get(part, {})
    node.pop(parts[-1], None)
  for section in drop_if_empty:
    if tree.get(section) == {}:
      del tree[section]
  return json.dumps(tree, sort_keys=True)
