r"""The teacher: cross-entropy + λ · intra-class contrastive loss (docs/method.md §3, §5).

The defaults are the CIFAR-100 benchmark recipe with resnet32x4:

  python launch.py --config=configs/teacher.py --workdir=workdirs/teacher

A config argument shrinks it (big_vision style):

  # a tiny model for a few steps on the synthetic set, offline, < 1 min on CPU
  python launch.py --config=configs/teacher.py:smoke --workdir=/tmp/smoke
  # 3 epochs of resnet8 on real data, minutes on 2 CPU cores
  python launch.py --config=configs/teacher.py:fashion_cpu --workdir=/tmp/fm
  python launch.py --config=configs/teacher.py:cifar10_cpu --workdir=/tmp/c10 \
      --config.dataset.path=path/to/cifar10-folder.tar.gz
  # Tiny-ImageNet (64x64, 200 classes): downloaded on first use
  python launch.py --config=configs/teacher.py --workdir=workdirs/tin \
      --config.dataset.name=tiny_imagenet --config.crop_padding=8
  # the plain cross-entropy teacher
  python launch.py --config=configs/teacher.py --config.icc.lam=0 --workdir=...

Values marked "reconstruction" are our choices: the paper does not publish
them (docs/method.md §2). A user who has them can set them on the command line.
"""

import ml_collections
from ml_collections import config_dict


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.mode = 'teacher'
  c.workdir = config_dict.placeholder(str)  # or --workdir
  c.seed = 0
  c.model = 'resnet32x4'

  c.dataset = ml_collections.ConfigDict()
  # cifar100, cifar10, tiny_imagenet, fashion_mnist, image_folder, synthetic
  # or another TFDS name; see the README's "Data sets".
  c.dataset.name = 'cifar100'
  # Downloads and decoded-array cache; None: $ICCKD_DATA_DIR, else
  # ~/.cache/icckd_jax. For other TFDS names also TFDS's data_dir.
  c.dataset.data_dir = config_dict.placeholder(str)
  # A local copy (offline): the official archive or the folder it extracts
  # to; for image_folder a train/<class>/*, test/<class>/* folder or .tar.gz.
  c.dataset.path = config_dict.placeholder(str)
  c.dataset.label_kind = 'fine'  # cifar100: 'fine' (100) or 'coarse' (20)
  c.dataset.num_train = 512  # synthetic only
  c.dataset.num_test = 256
  c.dataset.num_classes = 10
  # synthetic; and the side variable-size TFDS sets are resized to.
  c.dataset.image_size = 32
  c.dataset.seed = 0
  c.dataset.train_subset = 0  # 0: whole split; n: a fixed random n
  c.dataset.test_subset = 0

  # How images reach the devices (docs/data.md, "Data sets larger than
  # memory"): 'resident' holds the decoded splits on every device; 'stream'
  # reads the shards of configs/convert.py (dataset.name='array_record') as
  # the run goes; 'auto' streams a converted set whose images have several
  # sizes or whose decoded train split takes more than a quarter of a
  # device's memory. Images of several sizes train at dataset.image_size.
  # A streamed set's augmentation (input_pipeline/host_augment.py): 'crop' pads
  # (crop_padding), crops and flips images of one size, evaluated as they
  # are; 'resized_crop' is ImageNet's RandomResizedCrop (scale 0.08-1) to
  # dataset.image_size and flip, evaluated resized to 256/224 of the size
  # and centre-cropped (torchvision's); 'auto': 'crop' when every image has
  # one size, else 'resized_crop'.
  c.dataset.augment = 'auto'
  # The inputs' normalisation: 'measured', the train split's per-channel
  # mean and std; 'imagenet', torchvision's 0.485 0.456 0.406 / 0.229 0.224
  # 0.225 (what ImageNet models are trained with).
  c.dataset.normalization = 'measured'
  c.input = ml_collections.ConfigDict()
  c.input.mode = 'auto'
  c.input.workers = 2  # Grain's decode processes when streaming; 0: a thread
  # A streamed 'resized_crop' set's decode (docs/data.md): 'torchvision'
  # decodes down to the crops' boxes and gives torchvision's pixels; 'exact'
  # (streamed runs of older versions) resizes each box within the whole
  # decoded image; 'fast' decodes JPEGs at a reduced
  # DCT scale that keeps each crop at least the training size (simplejpeg)
  # and resizes the crops, and only the evaluation crop's box, with OpenCV
  # (bilinear), needing pip install 'icckd_jax[fast]'; 'auto' is
  # 'torchvision' for a new run, what a resumed run started with.
  c.input.decode = 'auto'

  # The recipe of the CIFAR-100 KD benchmark (docs/method.md §5).
  c.num_epochs = 240
  c.batch_size = 64  # global, over all devices
  c.eval_batch_size = 500
  # Test-split evaluation every this many epochs, and always at the last
  # (the headline). Larger values save time on small models.
  c.eval_every_epochs = 1
  c.learning_rate = 0.05
  c.lr_decay_epochs = (150, 180, 210)
  c.lr_decay_rate = 0.1
  c.momentum = 0.9
  c.weight_decay = 5e-4
  # 'sgd', or a student's 'dot' (DOT: the task and distillation gradients
  # keep momenta momentum -/+ dot_delta, training/dot.py; mdistiller's
  # CIFAR-100 delta; docs/distillers.md).
  c.optimizer = 'sgd'
  c.dot_delta = 0.075
  # Pixels of zero padding before the random crop: 4 at 32x32, as in the
  # recipe; scale it with the image (8 for Tiny-ImageNet's 64x64).
  c.crop_padding = 4
  c.flip = True
  c.dtype = 'float32'  # compute dtype: 'float32' or 'bfloat16'
  c.num_devices = 0  # 0: every visible device

  # The intra-class contrastive objective (docs/method.md §3). lam = 0 is the plain
  # cross-entropy teacher and never computes the second view.
  c.icc = ml_collections.ConfigDict()
  c.icc.lam = 0.1  # reconstruction: weight λ of L_intra
  c.icc.tau = 0.1  # reconstruction: InfoNCE temperature τ
  c.icc.delta = 0.4  # reconstruction: margin threshold δ of the gate
  c.icc.margin_kind = 'prob'  # reconstruction: 'prob' or 'logit' margins
  c.icc.head = 'none'  # reconstruction: 'none' (z = f) or 'mlp' projection g
  c.icc.head_dim = 128  # output width of the 'mlp' head
  # Anchors without any same-class negative (l_i = 0): 'exclude' leaves them
  # out of the gated mean, so removing the cache does not also shrink the
  # term's weight; 'count' keeps them in its denominator (docs/method.md §3).
  c.icc.empty_anchors = 'exclude'

  # The pipeline cache of same-class negatives (docs/method.md §3).
  c.cache = ml_collections.ConfigDict()
  c.cache.size = 16  # reconstruction: K past batches; 0 removes the cache
  c.cache.store = 'features'  # 'features' (stale, cheap) or 'images' (fresh)

  c.log_every_steps = 100
  # Every epoch: bounds what a hard kill (SIGKILL, OOM, node failure) loses to
  # one epoch for about 2% of the run time (README, "Resume"); SIGTERM and
  # Ctrl-C save at the next step whatever this is.
  c.checkpoint_every_epochs = 1
  c.keep_checkpoints = 2
  # On several processes, steps between two checks that no process was
  # signalled (a collective): a SIGTERM stops every process within this many
  # steps, at the same step. One check took 1.6 ms between two CPU processes
  # (gloo): 50 keeps it under 1% of a 7.6 ms step (resnet32x4, batch 64, on
  # an H100) and stops within half a second there.
  c.preemption_check_every_steps = 50
  # JAX's persistent compilation cache: a rerun, a resume or another stage
  # reuses the compiled steps. '' turns it off.
  c.compilation_cache = '~/.cache/icckd_jax/xla'

  if arg == 'smoke':
    c.model = 'resnet8'
    c.dataset.name = 'synthetic'
    c.dataset.num_train = 256
    c.dataset.num_test = 128
    c.num_epochs = 2
    c.batch_size = 32
    c.eval_batch_size = 64
    c.lr_decay_epochs = (1,)
    c.cache.size = 4
    c.log_every_steps = 4
  elif arg in ('cifar10_cpu', 'fashion_cpu'):
    # Sized for 2 CPU cores: resnet8, 3 epochs over 10,000 real images.
    c.model = 'resnet8'
    if arg == 'cifar10_cpu':
      # A train/<class>/*, test/<class>/* tree: --config.dataset.path=...
      c.dataset.name = 'image_folder'
    else:
      c.dataset.name = 'fashion_mnist'
    c.dataset.train_subset = 10000
    c.num_epochs = 3
    c.lr_decay_epochs = (2,)
    c.log_every_steps = 50
  elif arg:
    raise ValueError(
      f'unknown config argument {arg!r}; valid: smoke, cifar10_cpu, fashion_cpu'
    )
  return c
