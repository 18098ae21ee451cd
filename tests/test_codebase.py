"""Properties of the package's source that review would otherwise police."""

import ast
import hashlib
import os
import pathlib
import subprocess
import sys

import pytest

import house

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / 'icckd_jax'
MAX_FUNCTION_LINES = 60
MAX_CLASS_LINES = 150
MAX_MODULE_LINES = 450


def _functions(tree):
  for node in ast.walk(tree):
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
      yield node


def _imports_the_package(node) -> bool:
  if isinstance(node, ast.ImportFrom):
    return node.level > 0 or (node.module or '').startswith('icckd_jax')
  if isinstance(node, ast.Import):
    return any(a.name.startswith('icckd_jax') for a in node.names)
  return False


def _too_long(kinds, limit: int) -> list[str]:
  """'path:line name (n lines)' of each node of `kinds` in the package
  longer than `limit` lines."""
  return [
    f'{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name} '
    f'({node.end_lineno - node.lineno + 1} lines)'
    for path in sorted(PACKAGE.rglob('*.py'))
    for node in ast.walk(ast.parse(path.read_text()))
    if isinstance(node, kinds) and node.end_lineno - node.lineno + 1 > limit
  ]


def test_no_function_is_longer_than_60_lines():
  too_long = _too_long(
    (ast.FunctionDef, ast.AsyncFunctionDef), MAX_FUNCTION_LINES
  )
  assert not too_long, too_long


def test_no_class_is_longer_than_150_lines():
  too_long = _too_long(ast.ClassDef, MAX_CLASS_LINES)
  assert not too_long, too_long


def test_no_module_is_longer_than_450_lines():
  too_long = [
    f'{path.relative_to(PACKAGE.parent)} ({n} lines)'
    for path in sorted(PACKAGE.rglob('*.py'))
    if (n := len(path.read_text().splitlines())) > MAX_MODULE_LINES
  ]
  assert not too_long, too_long


def test_no_import_inside_a_function():
  """Imports inside functions hide cycles from the layer contracts."""
  hidden = [
    f'{path.relative_to(PACKAGE.parent)}:{inner.lineno} in {node.name}'
    for path in sorted(PACKAGE.rglob('*.py'))
    for node in _functions(ast.parse(path.read_text()))
    for inner in ast.walk(node)
    if _imports_the_package(inner)
  ]
  assert not hidden, hidden


def test_a_run_loads_neither_plotting_nor_statistics():
  """A run and a sweep worker import the report for its file names; matplotlib
  and scipy (about 1.6 s) load only when a report is written."""
  code = (
    'import sys, icckd_jax.main, icckd_jax.experiments.sweep.worker\n'
    'loaded = [m for m in ("matplotlib", "scipy") if m in sys.modules]\n'
    'assert not loaded, loaded\n'
    'from icckd_jax.experiments import statistics\n'
    'statistics.t_interval([1.0, 2.0])\n'
    'assert "scipy" in sys.modules\n'
  )
  result = subprocess.run(
    [sys.executable, '-c', code],
    cwd=PACKAGE.parent,
    env=dict(os.environ, JAX_PLATFORMS='cpu'),
    capture_output=True,
    text=True,
    check=False,
  )
  assert result.returncode == 0, result.stderr[-2000:]


def _identifiers(tree):
  """(line, name) of every name the code gives or uses: variables,
  attributes, parameters, keyword arguments, functions, classes, imports."""
  for node in ast.walk(tree):
    if isinstance(node, ast.Name):
      yield node.lineno, node.id
    elif isinstance(node, ast.Attribute):
      yield node.lineno, node.attr
    elif isinstance(node, ast.arg):
      yield node.lineno, node.arg
    elif isinstance(node, ast.keyword) and node.arg:
      yield node.lineno, node.arg
    elif isinstance(
      node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
    ):
      yield node.lineno, node.name
    elif isinstance(node, ast.alias):
      yield node.lineno, node.name
      if node.asname:
        yield node.lineno, node.asname
    elif isinstance(node, ast.ImportFrom) and node.module:
      yield node.lineno, node.module


def test_only_the_experiments_know_of_sweeps():
  """Training, stages and runs serve one run or several runs of a process
  alike: what a sweep adds (its clock, its files) lives in experiments/ and
  reaches them through generic parts (hooks, Reuse)."""
  outside = [
    path
    for path in sorted(PACKAGE.rglob('*.py'))
    if path.relative_to(PACKAGE).parts[0] != 'experiments'
    and path.relative_to(PACKAGE) != pathlib.Path('main.py')
  ]
  found = [
    f'{path.relative_to(PACKAGE.parent)}:{line} {name}'
    for path in outside
    for line, name in _identifiers(ast.parse(path.read_text()))
    if 'sweep' in name.lower()
  ]
  assert outside
  assert not found, found


def test_no_room_holds_more_than_16_percent_of_the_source():
  """A room (a top-level sub-package or module of the package, configs/,
  benchmarks/, launch.py) that outgrows a sixth of the project is a hall
  of several concepts: split it by purpose."""
  shares = house.room_shares()
  crowded = {
    room: f'{share:.1%}' for room, share in shares.items() if share > 0.16
  }
  assert not crowded, crowded
  assert set(shares) >= {
    'icckd_jax/runs',
    'icckd_jax/stages',
    'icckd_jax/training',
  }


def test_the_config_enters_at_most_20_modules():
  """The ConfigDict stops at the edge: `main.run`, the stages that turn it
  into typed parts (runs/spec.py), the sweep that stores and compares it,
  and the few places that write or compare it verbatim. Every function
  below takes a part or plain arguments, so what it reads is in its
  signature."""
  reached = house.config_walk()
  assert len(reached) <= 20, sorted(reached)


# What the shared test data holds (tests read it from ../shared/data): never
# committed, by content or by kind. The one archive tracked,
# tests/fixtures/store_d8b658b.tar.gz, is a run store of synthetic 8x8
# images the project wrote itself (tests/make_store_d8b658b.py).
_DATA_SUFFIXES = ('.pth', '.npz', '.jpeg', '.jpg', '.png', '.array_record')
_WRITTEN_BY_THE_PROJECT = ('docs/results/', 'tests/fixtures/store_d8b658b')


def test_no_shared_data_is_tracked():
  from conftest import SHARED_DATA  # pylint: disable=g-import-not-at-top

  listed = subprocess.run(
    ['git', 'ls-files', '-z'],
    cwd=PACKAGE.parent,
    capture_output=True,
    check=False,
  )
  if listed.returncode != 0:
    pytest.skip('not a git checkout')
  tracked = [p for p in listed.stdout.decode().split('\0') if p]
  by_kind = [
    p
    for p in tracked
    if p.lower().endswith(_DATA_SUFFIXES + ('.tar.gz', '.tgz', '.tar'))
    and not p.startswith(_WRITTEN_BY_THE_PROJECT)
  ]
  assert not by_kind, by_kind
  shared = {
    hashlib.sha256(f.read_bytes()).hexdigest(): f
    for f in SHARED_DATA.rglob('*')
    if f.is_file()
  }
  copies = [
    f'{p} = {shared[digest]}'
    for p in tracked
    if (PACKAGE.parent / p).is_file()
    and (
      digest := hashlib.sha256((PACKAGE.parent / p).read_bytes()).hexdigest()
    )
    in shared
  ]
  assert not copies, copies
