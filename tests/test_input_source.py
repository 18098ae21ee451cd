"""icckd_jax.input_pipeline.source: one interface names the input source;
the path (resident or streamed) is chosen in inputs.load and asked nowhere
else; a batch's labels are labels, its example indices a field of their own."""

import ast
import dataclasses
import inspect
import pathlib

import jax
import numpy as np

from conftest import ROOT
from icckd_jax import parallel
from icckd_jax.data import datasets
from icckd_jax.input_pipeline import resident
from icckd_jax.input_pipeline import source as source_lib
from icckd_jax.input_pipeline import stream

PACKAGE = pathlib.Path(ROOT) / 'icckd_jax'
# The classes that tell the two paths apart.
PATH_CLASSES = {'Split', 'StreamSplit', 'ResidentSource', 'StreamSource'}
# The two paths' own modules, where their sources are defined.
PATH_MODULES = ('input_pipeline/resident.py', 'input_pipeline/stream.py')


def _modules():
  for path in sorted(PACKAGE.rglob('*.py')):
    rel = path.relative_to(PACKAGE).as_posix()
    yield rel, ast.parse(path.read_text(), filename=rel)


def _name(node) -> str:
  if isinstance(node, ast.Attribute):
    return node.attr
  return node.id if isinstance(node, ast.Name) else ''


def test_no_module_asks_which_input_path_a_run_is_on():
  asked = []
  for rel, tree in _modules():
    for node in ast.walk(tree):
      if (
        isinstance(node, ast.Call)
        and _name(node.func) == 'isinstance'
        and len(node.args) == 2
      ):
        kinds = node.args[1]
        names = {
          _name(k)
          for k in (kinds.elts if isinstance(kinds, ast.Tuple) else [kinds])
        }
        if names & PATH_CLASSES:
          asked.append(f'{rel}:{node.lineno}')
  assert not asked, asked


def test_no_input_is_typed_any():
  """A split, stream or source typed `Any` hides its type from the layer
  contract (it was `Dataset.stream`)."""
  untyped = []
  for rel, tree in _modules():
    for node in ast.walk(tree):
      target = annotation = None
      if isinstance(node, ast.AnnAssign):
        target, annotation = _name(node.target), node.annotation
      elif isinstance(node, ast.arg) and node.annotation is not None:
        target, annotation = node.arg, node.annotation
      if not target or not any(word in target for word in ('stream', 'split')):
        continue
      if any(_name(n) == 'Any' for n in ast.walk(annotation)):
        untyped.append(f'{rel}:{node.lineno} {target}')
  assert not untyped, untyped
  assert 'stream' not in {f.name for f in dataclasses.fields(datasets.Dataset)}


def _makes_a_source(call: ast.Call) -> bool:
  """ResidentSource(...), ResidentSource.of(...), StreamSource(...) or
  stream.source(...)."""
  func = call.func
  if _name(func) in ('ResidentSource', 'StreamSource'):
    return True
  owner = _name(func.value) if isinstance(func, ast.Attribute) else ''
  return (owner, _name(func)) in (
    ('ResidentSource', 'of'),
    ('stream', 'source'),
  )


def test_a_source_is_made_only_where_the_path_is_chosen():
  made = [
    f'{rel}:{node.lineno}'
    for rel, tree in _modules()
    if rel != 'input_pipeline/inputs.py'
    for node in ast.walk(tree)
    if isinstance(node, ast.Call) and _makes_a_source(node)
  ]
  # Each path's own module defines its source; only inputs.py makes one.
  assert not [m for m in made if not m.startswith(PATH_MODULES)], made


def test_both_paths_have_the_interface_s_methods_with_one_signature():
  for method in ('train_batches', 'eval_batches'):
    want = inspect.signature(getattr(source_lib.InputSource, method))
    for cls in (resident.ResidentSource, stream.StreamSource):
      assert inspect.signature(getattr(cls, method)) == want, (cls, method)
  assert isinstance(resident.ResidentSource.image_shape, property)
  assert isinstance(stream.StreamSource.image_shape, property)


def _synthetic() -> resident.ResidentSource:
  fields = {'name': 'synthetic', 'num_train': 24, 'num_test': 10,
            'image_size': 8, 'num_classes': 3, 'channels': 3, 'seed': 0}  # fmt: skip
  dataset = datasets.load(datasets.DataRequest.from_fields(fields))
  return resident.ResidentSource.of(dataset)


def test_labels_are_labels_and_indices_ride_in_their_own_field():
  data = _synthetic()
  mesh = parallel.make_mesh(2)
  feed = source_lib.TrainFeed(
    seed=1, batch_size=8, num_views=2, crop_padding=2, flip=True
  )
  plain = data.train_batches(mesh, feed, 0)
  indexed = data.train_batches(
    mesh, dataclasses.replace(feed, with_indices=True), 0
  )
  seen = []
  for _ in range(3):  # one epoch
    a, b = jax.device_get((next(plain), next(indexed)))
    assert a.indices is None
    assert b.labels.shape == b.indices.shape == (8,)
    np.testing.assert_array_equal(b.labels, data.train_labels[b.indices])
    # Asking for the indices changes nothing else.
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.labels, b.labels)
    seen.extend(b.indices.tolist())
  plain.close()
  indexed.close()
  assert sorted(seen) == list(range(24))


def test_eval_batches_cover_the_test_split_once_per_pass():
  data = _synthetic()
  batches = data.eval_batches(parallel.make_mesh(2), 4)
  for _ in range(2):  # evaluated twice: each pass starts over
    got = jax.device_get(list(batches))
    mask = np.concatenate([b.mask for b in got])
    assert len(got) == 3 and mask.sum() == 10 and not mask[10:].any()
    np.testing.assert_array_equal(
      np.concatenate([b.images for b in got])[:10], data.test_images
    )
    np.testing.assert_array_equal(
      np.concatenate([b.labels for b in got])[:10], data.test_labels
    )
