"""What the two ablation configs share: the base pipeline, seeds, scales."""

import ml_collections
from ml_collections import config_dict

from configs import pipeline

# The config arguments and the pipeline scale each one runs.
SCALES = {None: None, 'cpu': 'cifar10_cpu', 'gpu': None, 'smoke': 'smoke'}


def sweep_config(arg: str | None) -> ml_collections.ConfigDict:
  if arg not in SCALES:
    raise ValueError(f'unknown config argument {arg!r}; valid: cpu, gpu, smoke')
  c = ml_collections.ConfigDict()
  c.mode = 'sweep'
  c.workdir = config_dict.placeholder(str)
  c.base = pipeline.get_config(SCALES[arg])
  # Every worker's (the runs' own fields are not read).
  c.compilation_cache = c.base.compilation_cache
  # Processes sharing the sweep (spread over the visible GPUs when there are
  # several); more machines may run the same command on one shared workdir.
  c.workers = 1
  # Where teachers and students are trained, named by their config: two
  # sweeps given one store train a run they share once. Default: the workdir.
  c.store = config_dict.placeholder(str)
  c.estimate = True  # time each distinct step first and project the sweep
  c.seeds = (0, 1, 2)
  # Epochs to reach this train accuracy: one threshold for both sweeps,
  # which share runs.
  c.reach_train_accuracy = 0.3
  if arg == 'cpu':
    _cpu_converged(c)
  if arg == 'gpu':
    _gpu(c)
  if arg == 'smoke':
    # Timing steps would cost more than the smoke sweep's own training.
    c.estimate = False
    c.seeds = (0,)
    c.base.teacher.num_epochs = 3
    c.base.student.num_epochs = 2
  add_executor(c)
  return c


def add_executor(c: ml_collections.ConfigDict) -> None:
  """Where the sweep's workers run: here (`workers` processes), or as the
  tasks of a SLURM job array, submitted by the command that returns with
  its job id (docs/running.md; icckd_jax/experiments/sweep/slurm.py)."""
  c.executor = 'local'  # or 'slurm'
  c.slurm = ml_collections.ConfigDict()
  c.slurm.partition = config_dict.placeholder(str)  # SLURM's default if unset
  c.slurm.account = config_dict.placeholder(str)
  c.slurm.gpus_per_task = 0
  c.slurm.cpus_per_task = 4
  c.slurm.mem_gb = config_dict.placeholder(int)  # SLURM's default if unset
  c.slurm.time_min = 240  # each task's time limit
  # The task is signalled this long before its time limit, saves at the
  # next step and is requeued; longer than a step and a checkpoint's save.
  c.slurm.signal_delay_s = 120
  # Tasks of the array at most (also: at once); each is one worker.
  c.slurm.array_parallelism = 8
  # Requeues after a time limit (preemptions do not count) before a task
  # gives up.
  c.slurm.max_requeues = 10


def _cpu_converged(c: ml_collections.ConfigDict) -> None:
  """Real CIFAR-10 on 2 shared CPU cores, trained until test accuracy
  plateaus under the decayed learning rate.

  1,600 training images (a fixed subset), 1,000 test images, resnet8
  teacher and student, 8 epochs each (200 steps an epoch), the learning
  rate ×0.1 at epochs 4 and 6. Batch 8: with 10 classes an anchor has on
  average 0.7 same-class partners in its batch, the scarcity of CIFAR-100 at
  batch 64 (0.6) that the cache exists for. Learning rate 0.02 rather than
  the recipe's 0.05 for batch 64: a batch 8 times smaller has noisier
  gradients.
  """
  c.base.teacher.dataset.train_subset = 1600
  c.base.teacher.dataset.test_subset = 1000
  for stage in (c.base.teacher, c.base.student):
    stage.batch_size = 8
    stage.num_epochs = 8
    stage.lr_decay_epochs = (4, 6)
    stage.learning_rate = 0.02
    stage.log_every_steps = 100
    stage.checkpoint_every_epochs = 2
  c.workers = 2


def _gpu(c: ml_collections.ConfigDict) -> None:
  """Full CIFAR-10 on one GPU: resnet32x4 teachers, resnet8x4 students,
  bfloat16, 8 + 8 epochs (×0.1 at epochs 4 and 6), one seed, 4 workers
  sharing the GPU. README "Mixed precision and studies on a GPU" derives
  its expected time (about 7.5 minutes on one H100 for the δ sweep)."""
  c.base.teacher.dataset.name = 'image_folder'  # + dataset.path=...tar.gz
  for stage in (c.base.teacher, c.base.student):
    stage.dtype = 'bfloat16'
    stage.num_epochs = 8
    stage.lr_decay_epochs = (4, 6)
    stage.checkpoint_every_epochs = 4
    stage.log_every_steps = 200
  c.seeds = (0,)
  c.workers = 4
