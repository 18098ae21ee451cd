"""What several test modules share, and what only the tests call: a tiny
teacher's command line, a workdir's files, a run's records without their
timings, a checkpoint's state, a sweep's records by run, two runs that ended
alike, a signal sent after a run's last epoch, a free port, launch.py in
processes of its own (one run, one killed after its first checkpoint, or
several --multihost processes, one killed with its supervised child), what processes left in /dev/shm, an idx file,
a converted image folder, and the package functions no package module uses
(the evaluation transform of one image, a study's shared threshold, a
teacher's config and variables)."""

import gzip
import os
import pathlib
import signal
import socket
import struct
import subprocess
import sys
import time
from typing import Any, Sequence

import jax
import numpy as np
from PIL import Image

from conftest import COLLECTIVE_PATIENCE, QUICK_COMPILE, ROOT
from icckd_jax import parallel
from icckd_jax.data import images
from icckd_jax.experiments import ablation_metrics
from icckd_jax.experiments.sweep import run_store
from icckd_jax.input_pipeline import imagenet_preprocess
from icckd_jax.runs.spec import TeacherSource
from icckd_jax.stages import teacher_source
from icckd_jax.training import checkpoint
from icckd_jax.training import loop as loop_lib
from icckd_jax.training import metric_writer

TINY = ('--config.dataset.num_train=64', '--config.dataset.num_test=64')
# A cross-entropy teacher (the cheapest step to compile), 2 steps per epoch.
TEACHER = (
  '--config=configs/teacher.py:smoke',
  *TINY,
  '--config.icc.lam=0',
  '--config.num_devices=1',
)

SMOKE = ('--config=configs/teacher.py:smoke',)
# The trained fixture's run: a cross-entropy teacher (the cheapest step to
# compile), 2 steps per epoch, 2 epochs, one device.
TRAINED = (
  *SMOKE,
  '--config.dataset.num_train=64',
  '--config.icc.lam=0',
  '--config.num_devices=1',
)


def snapshot(path: pathlib.Path) -> dict[str, bytes] | None:
  """Every file under `path` with its contents; None if `path` is absent."""
  if not path.exists():
    return None
  return {
    str(p.relative_to(path)): p.read_bytes()
    for p in sorted(path.rglob('*'))
    if p.is_file()
  }


# A record's wall-clock fields: all else a resumed run reproduces exactly.
TIMING_KEYS = {'step_time', 'images_per_second', 'epoch_time'}


def strip_timing(records: list[dict]) -> list[dict]:
  return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in records]


def run_numbers(workdir):
  """Everything each run under `workdir` logged, less wall-clock timings,
  keyed by the run's store path (its config)."""
  numbers = {}
  for kind in (run_store.TEACHERS, run_store.STUDENTS):
    for key in sorted(os.listdir(workdir / kind)):
      records = metric_writer.read_records(str(workdir / kind / key))
      numbers[f'{kind}/{key}'] = [
        r for r in strip_timing(records) if r['kind'] in ('train', 'epoch')
      ]
  return numbers


def records_without_timings(workdir, kind=None) -> list[dict]:
  """WORKDIR/metrics.jsonl's records (of `kind`) with their wall-clock
  fields dropped: everything a resumed run must reproduce exactly."""
  return strip_timing(metric_writer.read_records(str(workdir), kind))


def restore_state(workdir, which='last'):
  """(state on the host, meta) of WORKDIR's `which` checkpoint."""
  ckpts = checkpoint.Checkpoints(str(workdir), read_only=True)
  state, meta = ckpts.restore(None, which=which, mesh=parallel.make_mesh(1))
  ckpts.close()
  return jax.device_get(state), meta


def assert_same_run(workdir_a, workdir_b) -> None:
  """WORKDIR_A and WORKDIR_B ended alike: their last checkpoints' states bit
  for bit, their metas, and their records but for the wall-clock fields."""
  state_a, meta_a = restore_state(workdir_a)
  state_b, meta_b = restore_state(workdir_b)
  jax.tree.map(np.testing.assert_array_equal, state_a, state_b)
  assert meta_a == meta_b
  assert records_without_timings(workdir_a) == records_without_timings(
    workdir_b
  )


def signal_after_last_epoch(monkeypatch, stage_dir: str, signum: int):
  """Sends `signum` to this process once the run in a workdir ending with
  `stage_dir` has ended its last epoch: after the loop's last stop check."""
  end_epoch = loop_lib.end_epoch

  def then_signal(r, at, tally, evaluate_fn, test_split, epoch, epoch_time):
    end_epoch(r, at, tally, evaluate_fn, test_split, epoch, epoch_time)
    last = epoch + 1 == r.spec.recipe.num_epochs
    if r.workdir.endswith(stage_dir) and last:
      os.kill(os.getpid(), signum)

  monkeypatch.setattr(loop_lib, 'end_epoch', then_signal)


def free_port() -> int:
  """A TCP port on localhost that nothing listens on now."""
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def subprocess_env(devices: int) -> dict[str, str]:
  """The environment of a launch.py subprocess on `devices` CPU devices."""
  return dict(
    os.environ,
    JAX_PLATFORMS='cpu',
    # At the suite's optimisation level, so that a run here and one in the
    # tests' own processes compile to the same code.
    XLA_FLAGS=(
      f'--xla_force_host_platform_device_count={devices} {COLLECTIVE_PATIENCE} '
      f'{QUICK_COMPILE}'
    ),
  )


def launch_process(*args: str, devices: int) -> subprocess.Popen:
  """launch.py with `args` in a process of its own on `devices` CPU
  devices; its stderr is kept for the failure message."""
  return subprocess.Popen(
    [sys.executable, str(ROOT / 'launch.py'), *args],
    cwd=ROOT,
    env=subprocess_env(devices),
    stdout=subprocess.DEVNULL,
    stderr=subprocess.PIPE,
    text=True,
  )


def kill_after_checkpoint(args, workdir, checkpoints):
  """Starts launch.py in a real process (on conftest's 4 emulated devices,
  like the in-process runs), SIGKILLs it as soon as checkpoint 1 appears in
  `checkpoints` (Orbax renames it into place once complete), and checks
  that the kill came before checkpoint 2: mid-run, not after the end."""
  proc = subprocess.Popen(
    [sys.executable, str(ROOT / 'launch.py'), *args, f'--workdir={workdir}'],
    cwd=ROOT,
    stdout=subprocess.DEVNULL,
    stderr=subprocess.DEVNULL,
  )
  deadline = time.time() + 300
  while not (checkpoints / '1').exists():
    assert proc.poll() is None and time.time() < deadline, 'no checkpoint 1'
    time.sleep(0.02)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert not (checkpoints / '2').exists(), (
    'the run finished before it could be killed: make its epochs longer'
  )


def start_processes(
  *args: str, count: int = 2, per_process: Sequence[Sequence[str]] = ()
) -> list[subprocess.Popen]:
  """`count` launch.py processes of one --multihost run on localhost, one
  CPU device each (`per_process`: each one's own further arguments)."""
  port = free_port()
  return [
    launch_process(
      *args,
      *(per_process[i] if per_process else ()),
      '--multihost',
      f'--coordinator_address=localhost:{port}',
      f'--num_processes={count}',
      f'--process_id={i}',
      devices=1,
    )
    for i in range(count)
  ]


def kill_with_children(proc: subprocess.Popen) -> None:
  """SIGKILLs `proc` and every process below it, as its host's failure
  would: a --multihost launch.py is a supervisor and the child that runs
  (icckd_jax/supervisor.py), which would otherwise get SIGTERM and save."""
  pending = [proc.pid]
  while pending:
    pid = pending.pop()
    try:
      children = pathlib.Path(f'/proc/{pid}/task/{pid}/children').read_text()
      os.kill(pid, signal.SIGKILL)
    except (FileNotFoundError, ProcessLookupError):
      continue
    pending.extend(int(child) for child in children.split())


def wait_for_success(procs: list[subprocess.Popen]) -> None:
  """Each of `procs` ends with exit code 0 (its stderr's end otherwise)."""
  for proc in procs:
    _, stderr = proc.communicate(timeout=540)
    assert proc.returncode == 0, stderr[-3000:]


def shared_memory_names() -> set[str]:
  """The names in /dev/shm (POSIX shared memory and semaphores)."""
  return set(os.listdir('/dev/shm'))


def left_in_shared_memory(before: set[str], patience_s: float = 60) -> set[str]:
  """What ended processes left in /dev/shm since `before` was listed: the
  new names that no live process maps and that are still there after
  `patience_s`. Segments of other processes come and go (a batch in flight
  is mapped by no one for a moment; a run's tracker unlinks the rest at its
  end), so only those that outlast the wait count."""
  deadline = time.time() + patience_s
  while True:
    left = shared_memory_names() - before
    for maps in pathlib.Path('/proc').glob('[0-9]*/maps'):
      try:
        text = maps.read_text()
      except OSError:  # the process ended, or is not ours to read
        continue
      left = {n for n in left if f'/dev/shm/{n}' not in text}
    if not left or time.time() > deadline:
      return left
    time.sleep(0.5)


def png_folder(root: pathlib.Path, classes: str, seed: int) -> pathlib.Path:
  """An image folder of one size: train/<class>/*.png (8 each),
  test/<class>/*.png (2 each), 8x8 RGB."""
  rng = np.random.default_rng(seed)
  for split, n in (('train', 8), ('test', 2)):
    for c in classes:
      for i in range(n):
        path = root / split / c / f'{i}.png'
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), np.uint8)).save(path)
  return root


def convert_folder(source: pathlib.Path, out: pathlib.Path) -> pathlib.Path:
  """The image folder `source` converted into `out` (configs/convert.py)."""
  from launch_in_process import run_launcher  # pylint: disable=g-import-not-at-top

  code, stderr = run_launcher(
    '--config=configs/convert.py',
    '--config.workers=1',
    '--config.dataset.name=image_folder',
    f'--config.dataset.path={source}',
    f'--config.output_dir={out}',
  )
  assert code == 0, stderr[-2000:]
  return out


def write_idx(path: pathlib.Path, array: np.ndarray) -> None:
  """`array` as an idx file (Fashion-MNIST's format), gzipped if `path`
  ends in .gz."""
  header = struct.pack('>BBBB', 0, 0, 0x08, array.ndim)
  header += struct.pack(f'>{array.ndim}i', *array.shape)
  opener = gzip.open if path.suffix == '.gz' else open
  with opener(path, 'wb') as f:
    f.write(header + array.astype(np.uint8).tobytes())


def load_teacher(source: TeacherSource, mesh):
  """(teacher config, its variables replicated on `mesh`): the teacher
  `source` names, without its fingerprint."""
  teacher = teacher_source.load_teacher_checked(source, mesh)
  return teacher.config, teacher.variables


def shared_threshold(
  runs_top1: Sequence[Sequence[float]], fraction: float = 0.9, window: int = 3
) -> float:
  """A fixed accuracy that every run of a sweep reaches: fraction * min_r
  best_moving_average(run_r, window), a fraction of the weakest run's
  smoothed best. Every run's moving average reaches its own best, so with
  fraction <= 1 and non-negative accuracies `epochs_to_reach` is never None
  for these runs. `runs_top1`: R >= 1 series of per-epoch test top-1."""
  if not runs_top1:
    raise ValueError('runs_top1 must hold at least one run.')
  return fraction * min(
    ablation_metrics.best_moving_average(r, window) for r in runs_top1
  )


def eval_image(
  source: Any,
  name: str = '',
  resize: int = imagenet_preprocess.RESIZE,
  crop: int = imagenet_preprocess.CROP,
) -> np.ndarray:
  """One encoded image (a path or bytes) through the evaluation transform,
  before `ToTensor`: [crop, crop, 3] uint8, RGB; UserError if Pillow
  cannot decode it."""
  where = name or (source if isinstance(source, str) else 'image bytes')
  decoded = images.decode('evaluation', where, source, rgb=True)
  return imagenet_preprocess.resize_center_crop(decoded, resize, crop)


def reference_decode(data: bytes) -> np.ndarray:
  """The streamed decode before the copy-free one (input37), kept as the
  reference its pixels must equal: Pillow, converted to RGB, an array."""
  import io  # pylint: disable=g-import-not-at-top

  from PIL import Image  # pylint: disable=g-import-not-at-top

  with Image.open(io.BytesIO(data)) as opened:
    return np.asarray(opened.convert('RGB'))


def _reference_box(h: int, w: int, rng: np.random.Generator):
  """RandomResizedCrop's box (scale 0.08-1, ratio 3/4-4/3) of an [h, w]
  image: (left, top, right, bottom)."""
  import math  # pylint: disable=g-import-not-at-top

  area, ratio = h * w, (3 / 4, 4 / 3)
  for _ in range(10):
    target = area * rng.uniform(0.08, 1.0)
    aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
    cw = int(round(math.sqrt(target * aspect)))
    ch = int(round(math.sqrt(target / aspect)))
    if 0 < cw <= w and 0 < ch <= h:
      top = int(rng.integers(0, h - ch + 1))
      left = int(rng.integers(0, w - cw + 1))
      return (left, top, left + cw, top + ch)
  aspect = w / h
  if aspect < ratio[0]:
    cw, ch = w, int(round(w / ratio[0]))
  elif aspect > ratio[1]:
    cw, ch = int(round(h * ratio[1])), h
  else:
    cw, ch = w, h
  top, left = (h - ch) // 2, (w - cw) // 2
  return (left, top, left + cw, top + ch)


def reference_resized_crop_flip(
  image: np.ndarray,
  rng: np.random.Generator,
  size: int,
  flip: bool,
  torchvision: bool = False,
) -> np.ndarray:
  """RandomResizedCrop and flip on [H, W, 3] uint8, as the streamed path
  made them before input37 (input.decode='exact': Pillow's resize of the
  box within the whole image), or with `torchvision` as torchvision makes
  them: the box's pixels cut out as an image of their own, then resized.
  The references the copy-free paths' pixels must equal, bit for bit."""
  from PIL import Image  # pylint: disable=g-import-not-at-top

  left, top, right, bottom = box = _reference_box(*image.shape[:2], rng)
  if torchvision:
    cut = Image.fromarray(np.ascontiguousarray(image[top:bottom, left:right]))
    out = np.asarray(cut.resize((size, size), Image.BILINEAR))
  else:
    out = np.asarray(
      Image.fromarray(image).resize((size, size), Image.BILINEAR, box=box)
    )
  if flip and rng.random() < 0.5:
    out = out[:, ::-1]
  return np.ascontiguousarray(out)
