"""What a conversion (`convert.py`) writes, listed before any pixel is read.

`list_source(config.dataset)` walks and sorts a source into a `Listing`:
its classes, and per split (label, source, name) of each record in record
order. Sources: `imagenet` (ROOT/train/<wnid>/*.JPEG; ROOT/val/<wnid>/* or
a flat ROOT/val/ labelled by ROOT/LOC_val_solution.csv or the devkit's
ground truth; val becomes the `test` split), `image_folder`
(train/<class>/*, test/<class>/*: the files' bytes, as they are), and every
other set the project reads (`datasets.load`'s arrays). Every listing is
checked here, so a bad source is refused before anything is written.
"""

from __future__ import annotations

import codecs
import csv
import dataclasses
import io
import json
import os
import pathlib
from typing import Any, Sequence

import ml_collections
import numpy as np

from icckd_jax.data import array_cache
from icckd_jax.data import classes as classes_lib
from icckd_jax.data import datasets
from icckd_jax.data import image_folder
from icckd_jax.errors import UserError, one_line

IMAGENET_VAL_CSV = 'LOC_val_solution.csv'
DEVKIT_DATA = 'ILSVRC2012_devkit_t12/data'
DEVKIT_GROUND_TRUTH = 'ILSVRC2012_validation_ground_truth.txt'
IMAGENET_LAYOUT = (
  'expected ROOT/train/<wnid>/*.JPEG and ROOT/val/<wnid>/*.JPEG, or a flat '
  f'ROOT/val/ with ROOT/{IMAGENET_VAL_CSV} or ROOT/{DEVKIT_DATA}/ (meta.mat '
  f'and {DEVKIT_GROUND_TRUTH})'
)


@dataclasses.dataclass(frozen=True)
class Listing:
  """What a conversion writes, before any pixel is read.

  `items[split]`: (label, source, name) per record in record order; a
  source is a file's path or bytes, or a [H, W, C] uint8 array (stored as
  PNG). `name`: the file's name for error messages.
  """

  classes: tuple[str, ...]
  items: dict[str, list[tuple[int, Any, str]]]
  identity: dict[str, Any]


def _entries(folder: pathlib.Path) -> list[pathlib.Path]:
  """The visible entries of `folder`, sorted; a broken symbolic link among
  them is refused (it would be left out without a word)."""
  entries = sorted(
    p for p in folder.iterdir() if not image_folder.is_hidden((p.name,))
  )
  for p in entries:
    image_folder.check_link(p)
  return entries


def _image_files(folder: pathlib.Path) -> list[pathlib.Path]:
  return [p for p in _entries(folder) if p.is_file()]


def _class_folders(split_dir: pathlib.Path) -> list[pathlib.Path]:
  """The class folders of `split_dir`; one whose name is not UTF-8 is
  refused: class names are written to info.json as text, and a teacher's
  classes are matched by them."""
  folders = [p for p in _entries(split_dir) if p.is_dir()]
  for folder in folders:
    try:
      folder.name.encode('utf-8')
    except UnicodeEncodeError:
      shown = os.fsencode(folder.name).decode('utf-8', 'backslashreplace')
      raise UserError(
        f'the class folder {split_dir}/{shown}/ has a name that is not '
        'UTF-8; rename it (class names are stored as text)'
      ) from None
  return folders


def _class_tree(
  where: str, split_dir: pathlib.Path, classes: Sequence[str] | None
) -> tuple[list[str], list[tuple[int, Any, str]]]:
  """(classes, items) of split_dir/<class>/*; with `classes` given, the
  folders must name only those."""
  folders = _class_folders(split_dir)
  names = [f.name for f in folders]
  if classes is None:
    classes = names
  index = {c: i for i, c in enumerate(classes)}
  unknown = [n for n in names if n not in index]
  if unknown:
    raise UserError(
      f'{where}: {split_dir.name}/{unknown[0]}/ is not one of the '
      f'{len(classes)} training classes'
    )
  items = []
  for folder in folders:
    files = _image_files(folder)
    if not files:
      raise UserError(
        f'{where}: the class folder {split_dir.name}/{folder.name}/ holds no '
        'image; add its images or remove it'
      )
    items += [
      (index[folder.name], str(f), f'{split_dir.name}/{folder.name}/{f.name}')
      for f in files
    ]
  return list(classes), items


def _list_imagenet(path: str) -> Listing:
  where = f'dataset.path={path!r}'
  root = pathlib.Path(path).expanduser()
  train, val = root / 'train', root / 'val'
  if not train.is_dir() or not val.is_dir():
    raise UserError(f'{where}: {IMAGENET_LAYOUT}')
  classes, train_items = _class_tree(where, train, None)
  if not classes:
    raise UserError(f'{where}: train/ holds no class folder; {IMAGENET_LAYOUT}')
  classes_lib.check(where, classes)
  if _class_folders(val):
    loose = _image_files(val)
    if loose:
      # Half sorted (a sorting script stopped midway): the loose images
      # would be left out of the test split without a word.
      raise UserError(
        f'{where}: val/ holds class folders and {len(loose)} loose images '
        f'(val/{loose[0].name}, ...); sort every image into val/<wnid>/ or '
        'none (a flat val/ is labelled by '
        f'{IMAGENET_VAL_CSV} or the devkit)'
      )
    _, test_items = _class_tree(where, val, classes)
  else:
    test_items = _imagenet_flat_val(where, root, classes)
  return Listing(
    tuple(classes),
    {'train': train_items, 'test': test_items},
    {'name': 'imagenet', **array_cache.folder_key(root)},
  )


def _imagenet_flat_val(
  where: str, root: pathlib.Path, classes: list[str]
) -> list[tuple[int, Any, str]]:
  """The flat val/ folder, labelled by ROOT/LOC_val_solution.csv or else by
  the devkit's ground truth."""
  solution = root / IMAGENET_VAL_CSV
  devkit = root / DEVKIT_DATA
  if solution.is_file():
    wnids = _solution_wnids(solution)
  elif (devkit / DEVKIT_GROUND_TRUTH).is_file():
    solution = devkit / DEVKIT_GROUND_TRUTH
    wnids = _devkit_wnids(devkit)
  else:
    raise UserError(
      f'{where}: val/ is flat but neither {IMAGENET_VAL_CSV} nor '
      f'{DEVKIT_DATA}/{DEVKIT_GROUND_TRUTH} is there; {IMAGENET_LAYOUT}'
    )
  index = {c: i for i, c in enumerate(classes)}
  for image_id, wnid in wnids.items():
    if wnid not in index:
      raise UserError(
        f'{solution} labels {image_id} with {wnid!r}, which is not one of '
        f'the {len(classes)} training classes (train/<wnid>/)'
      )
  items = []
  for file in _image_files(root / 'val'):
    image_id = file.name.split('.')[0]
    if image_id not in wnids:
      raise UserError(f'{solution} has no label for val/{file.name}')
    items.append((index[wnids[image_id]], str(file), f'val/{file.name}'))
  if not items:
    raise UserError(f'{where}: val/ holds no image; {IMAGENET_LAYOUT}')
  return items


def _solution_wnids(solution: pathlib.Path) -> dict[str, str]:
  """{ImageId: wnid} of LOC_val_solution.csv (ImageId, then boxes whose
  first word is the wnid)."""
  wnids = {}
  for row in csv.DictReader(io.StringIO(_utf8_text(solution), newline='')):
    try:
      wnids[row['ImageId']] = row['PredictionString'].split()[0]
    except (KeyError, IndexError, AttributeError):
      raise UserError(
        f'{solution}: expected the columns ImageId,PredictionString '
        '(the wnid first) on every row'
      ) from None
  return wnids


# Byte-order marks of the encodings a spreadsheet may save text in; UTF-32's
# first: they begin with UTF-16's.
_BOMS = {
  codecs.BOM_UTF32_LE: 'UTF-32',
  codecs.BOM_UTF32_BE: 'UTF-32',
  codecs.BOM_UTF16_LE: 'UTF-16',
  codecs.BOM_UTF16_BE: 'UTF-16',
}


def _utf8_text(path: pathlib.Path) -> str:
  """The text of `path`, UTF-8 with or without a byte-order mark (Excel's
  "CSV UTF-8" writes one); UTF-16 or -32 (Excel's "Unicode text"), or
  bytes that are not UTF-8, are refused naming the encoding."""
  data = path.read_bytes()
  encoding = next((e for bom, e in _BOMS.items() if data.startswith(bom)), None)
  if encoding is None and b'\0' in data:
    # No text holds NUL: UTF-16 without its mark (ASCII's every other byte).
    encoding = 'UTF-16 (no byte-order mark)'
  try:
    if encoding is None:
      return data.decode('utf-8-sig')
  except UnicodeDecodeError as e:
    encoding = f'not UTF-8 (byte {e.start})'
  raise UserError(
    f'{path} is {encoding} text; save it as UTF-8 (Excel: "CSV UTF-8")'
  )


def _devkit_wnids(devkit: pathlib.Path) -> dict[str, str]:
  """{ILSVRC2012_val_%08d: wnid} of the devkit: line i of the ground truth
  holds the ILSVRC2012_ID of val image i, meta.mat maps IDs to wnids."""
  import scipy.io  # pylint: disable=g-import-not-at-top  # only here: slow

  meta = devkit / 'meta.mat'
  try:
    synsets = scipy.io.loadmat(meta)['synsets'].ravel()
  except Exception as e:  # pylint: disable=broad-except
    # An empty or truncated file fails in many ways (scipy's MatReadError,
    # which is no ValueError, an IndexError, zlib's error): each is this.
    raise UserError(
      f'{meta} cannot be read ({one_line(e)}): it is empty, truncated or '
      "not the devkit's; replace it with ILSVRC2012_devkit_t12's"
    ) from None
  try:
    by_id = {
      int(np.ravel(s['ILSVRC2012_ID'])[0]): str(np.ravel(s['WNID'])[0])
      for s in synsets
    }
    ids = (devkit / DEVKIT_GROUND_TRUTH).read_text().split()
    return {
      f'ILSVRC2012_val_{i + 1:08d}': by_id[int(x)] for i, x in enumerate(ids)
    }
  except (OSError, ValueError, KeyError, IndexError) as e:
    raise UserError(
      f'{devkit}: cannot read meta.mat and {DEVKIT_GROUND_TRUTH} '
      f'({one_line(e)})'
    ) from None


def _list_image_folder(path: str | None) -> Listing:
  if not path:
    raise UserError(
      "dataset.path is not set; dataset.name='image_folder' needs a folder "
      f'({image_folder.LAYOUT})'
    )
  where = f'dataset.path={path!r}'
  root = pathlib.Path(path).expanduser()
  if not root.is_dir():
    raise UserError(
      f'{where} is not a folder; convert a train/<class>/*, '
      'test/<class>/* folder (extract an archive first)'
    )
  if not (root / 'train').is_dir():
    tops = _class_folders(root)
    if len(tops) == 1 and (tops[0] / 'train').is_dir():
      root = tops[0]
  if not (root / 'train').is_dir() or not (root / 'test').is_dir():
    raise UserError(f'{where}: {image_folder.LAYOUT}')
  classes, train_items = _class_tree(where, root / 'train', None)
  if not classes:
    raise UserError(f'{where}: train/ holds no class folder')
  classes_lib.check(where, classes)
  _, test_items = _class_tree(where, root / 'test', classes)
  return Listing(
    tuple(classes),
    {'train': train_items, 'test': test_items},
    {'name': 'image_folder', **array_cache.folder_key(root)},
  )


def _list_arrays(config: ml_collections.ConfigDict) -> Listing:
  """A set the project decodes itself: its (memory-mapped) arrays."""
  ds = datasets.load(datasets.DataRequest.from_fields(config.to_dict()))
  items = {}
  for split, (images, labels) in {
    'train': (ds.train_images, ds.train_labels),
    'test': (ds.test_images, ds.test_labels),
  }.items():
    items[split] = [
      (int(labels[i]), images[i], f'{split} image {i}')
      for i in range(len(labels))
    ]
  return Listing(
    tuple(str(i) for i in range(ds.num_classes)),
    items,
    {'name': config.name, 'config': json.loads(config.to_json_best_effort())},
  )


def list_source(config: ml_collections.ConfigDict) -> Listing:
  """The listing of `config` (the `dataset` sub-config); reads no pixel of
  file-based sources."""
  name = config.get('name')
  if name == 'imagenet':
    if not config.get('path'):
      raise UserError(
        "dataset.path is not set; dataset.name='imagenet' needs ImageNet's "
        f'root ({IMAGENET_LAYOUT})'
      )
    root = pathlib.Path(config.path).expanduser()
    if not root.is_dir():
      raise UserError(f'dataset.path={config.path!r} is not a folder')
    return _list_imagenet(config.path)
  if name == 'image_folder':
    return _list_image_folder(config.get('path'))
  if name == 'array_record':
    raise UserError(
      "dataset.name='array_record' is converted already; train from it"
    )
  return _list_arrays(config)
