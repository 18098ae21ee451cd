r"""The KD benchmark's ImageNet table: one config argument per row.

mdistiller's ImageNet recipes (its configs/imagenet/<pair>/<method>.yaml,
docs/distillers.md "ImageNet"), with torchvision's published weights as
teachers: ResNet34 -> ResNet18 and ResNet50 -> MobileNetV1.

  r34_r18, r50_mv1      KD: global batch 512, SGD lr 0.2, momentum 0.9,
                        weight decay 1e-4, 100 epochs, x0.1 at 30/60/90,
                        T = 1, CE / KD weights 0.5 / 0.5 (kd.yaml)
  <pair>_dkd            DKD: α 1, β 0.5 (r34_r18) / 2 (r50_mv1), T 1,
                        1 warm-up epoch (dkd.yaml)
  <pair>_at             AT: w 1000, p 2 (at.yaml: mdistiller's defaults)
  <pair>_ofd            OFD: w 1e-4, batch 128, lr 0.05 (r50_mv1/ofd.yaml;
                        mdistiller has no r34_r18 OFD recipe: this one)
  <pair>_crd            CRD: w 0.8, 16384 negatives, τ 0.07, batch 256,
                        lr 0.1 (crd.yaml)
  <pair>_reviewkd       ReviewKD: w 1 (r34_r18) / 8 (r50_mv1), 1 warm-up
                        epoch, pre-ReLU student maps, fusion width cap 512
                        / 256, batch 256, lr 0.1 (reviewkd.yaml)
  <pair>_wttm           WTTM (Zheng & Yang; 72.19 / 73.09 published, run
                        with torchdistill, whose config the authors did not
                        release): γ 0.2, β 4, CE 1 (the CIFAR-100
                        defaults of icckd_jax/distillers/wttm.py), on KD's
                        solver
  <pair>_dot            KD+DOT (Zhao et al.; 71.72 / 73.09 published): the
                        pair's KD row trained with DOT, Δ 0.09
                        (optimizer='dot', dot_delta; dot.yaml)
  <pair>_mlkd           MLKD (Jin et al.): T 1, CE / KD weights 0.5 / 0.5 on
                        a weak and a RandAugment view, lr 0.1 (r34_r18) /
                        0.2 (Jin-Ying/Multi-Level-Logit-Distillation,
                        configs/imagenet/r34_r18/kd_ours.yaml; its other
                        pair is ResNet50 -> MobileNetV2, r50_mv2/kd_ours.yaml,
                        whose recipe r50_mv1 takes); no published figure
                        for these pairs in its README
  icc_r34               an imagenet_resnet34 teacher trained with the
                        intra-class objective (λ, δ, τ and the cache of
                        configs/teacher.py) at the KD recipe
  smoke                 r34_r18's KD on CPU in seconds: a converted set
                        of 64x64 images declaring 1,000 classes (set
                        dataset.path), a torchvision ResNet18 `.pth` as the
                        teacher (set its path)

Every row computes in bfloat16 and streams ImageNet as an ArrayRecord set
(dataset.name='array_record', docs/data.md) with ImageNet's recipe,
dataset.augment='resized_crop' at dataset.image_size=224: RandomResizedCrop
(scale 0.08-1) + flip for training, torchvision's resize 256 + centre crop
224 for evaluation (icckd_jax/input_pipeline/imagenet_preprocess.py), students and
teachers normalised with torchvision's mean and std
(dataset.normalization='imagenet'). The teachers are torchvision's files.

From ImageNet's folder (ROOT/train/<wnid>/*.JPEG, ROOT/val/) to the table:

  # 1. convert once to shards (docs/data.md, "Data sets larger than memory")
  python launch.py --config=configs/convert.py --config.dataset.name=imagenet \
      --config.dataset.path=path/to/imagenet \
      --config.output_dir=path/to/imagenet-ar
  # 2. the teachers, and their own top-1 on val (73.31 / 76.16 there)
  wget https://download.pytorch.org/models/resnet34-333f7ec4.pth
  wget https://download.pytorch.org/models/resnet50-19c8e357.pth
  python launch.py --config=configs/eval.py --config.pth=resnet34-333f7ec4.pth \
      --config.model=imagenet_resnet34 --config.dataset.name=array_record \
      --config.dataset.path=path/to/imagenet-ar --config.dataset.image_size=224
  # 3. each row: r34_r18 / r50_mv1 (KD) or <pair>_<method>, with the
  #    pair's teacher; e.g. DKD for ResNet34 -> ResNet18
  python launch.py --config=configs/imagenet.py:r34_r18_dkd \
      --workdir=workdirs/imagenet/r34_r18_dkd \
      --config.dataset.path=path/to/imagenet-ar \
      --config.teacher.pth=resnet34-333f7ec4.pth
  # ResNet50 -> MobileNetV1 with KD
  python launch.py --config=configs/imagenet.py:r50_mv1 \
      --workdir=workdirs/imagenet/r50_mv1 \
      --config.dataset.path=path/to/imagenet-ar \
      --config.teacher.pth=resnet50-19c8e357.pth
  # 4. the intra-class teacher, then a student of it (teacher.workdir)
  python launch.py --config=configs/imagenet.py:icc_r34 \
      --workdir=workdirs/imagenet/icc_r34 \
      --config.dataset.path=path/to/imagenet-ar
  python launch.py --config=configs/imagenet.py:r34_r18 \
      --workdir=workdirs/imagenet/icc_r34_r18 \
      --config.dataset.path=path/to/imagenet-ar \
      --config.teacher.workdir=workdirs/imagenet/icc_r34
  # smoke (tests/test_imagenet_config.py runs it on a generated set)
  python launch.py --config=configs/imagenet.py:smoke --workdir=/tmp/in_smoke \
      --config.dataset.path=path/to/shards --config.teacher.pth=path/to/resnet18.pth
"""

import ml_collections

from configs import student as student_config
from configs import teacher as teacher_config

# (teacher, student) per pair of the table.
PAIRS = {
  'r34_r18': ('imagenet_resnet34', 'imagenet_resnet18'),
  'r50_mv1': ('imagenet_resnet50', 'imagenet_mobilenetv1'),
}
METHODS = ('kd', 'dkd', 'at', 'ofd', 'crd', 'reviewkd', 'wttm', 'mlkd')

# Each method's config.distill fields and solver changes per pair, from its
# yaml (fields the yaml leaves to mdistiller/engine/cfg.py keep the defaults
# that configs/student.py already has from the same file).
_RECIPES = {
  'kd': {
    'r34_r18': {'temperature': 1.0, 'gamma': 0.5, 'alpha': 0.5},
    'r50_mv1': {'temperature': 1.0, 'gamma': 0.5, 'alpha': 0.5},
  },
  'dkd': {
    pair: {
      'ce_weight': 1.0,
      'dkd_alpha': 1.0,
      'dkd_beta': beta,
      'temperature': 1.0,
      'dkd_warmup_epochs': 1.0,
    }
    for pair, beta in (('r34_r18', 0.5), ('r50_mv1', 2.0))
  },
  'at': {pair: {'ce_weight': 1.0, 'at_weight': 1000.0} for pair in PAIRS},
  'ofd': {pair: {'ce_weight': 1.0, 'ofd_weight': 1e-4} for pair in PAIRS},
  'crd': {
    pair: {
      'ce_weight': 1.0,
      'crd_weight': 0.8,
      'crd_negatives': 16384,
      'crd_dim': 128,
      'crd_temperature': 0.07,
      'crd_momentum': 0.5,
    }
    for pair in PAIRS
  },
  'reviewkd': {
    pair: {
      'ce_weight': 1.0,
      'reviewkd_weight': weight,
      'reviewkd_warmup_epochs': 1.0,
      'reviewkd_max_mid': max_mid,
      'reviewkd_student_preact': True,
    }
    for pair, weight, max_mid in (('r34_r18', 1.0, 512), ('r50_mv1', 8.0, 256))
  },
  # No published ImageNet recipe: the CIFAR-100 one, spelled out.
  'wttm': {
    pair: {'ce_weight': 1.0, 'wttm_power': 0.2, 'wttm_weight': 4.0}
    for pair in PAIRS
  },
  # kd_ours.yaml's KD section, on both views (the strong one RandAugment).
  'mlkd': {
    pair: {'temperature': 1.0, 'gamma': 0.5, 'alpha': 0.5} for pair in PAIRS
  },
}
# Rows of KD's recipe trained with another optimiser: the top-level fields
# their yaml's SOLVER changes (training/optim.py).
OPTIMIZERS = {'dot': {'optimizer': 'dot', 'dot_delta': 0.09}}
# (global batch, learning rate) where a yaml's SOLVER differs from kd.yaml's:
# by method, or by (method, pair) where the pairs' yamls differ.
_SOLVERS = {
  'ofd': (128, 0.05),
  'crd': (256, 0.1),
  'reviewkd': (256, 0.1),
  ('mlkd', 'r34_r18'): (512, 0.1),
}

ARGS = (
  *(p if m == 'kd' else f'{p}_{m}' for p in PAIRS for m in METHODS),
  *(f'{p}_{o}' for p in PAIRS for o in OPTIMIZERS),
  'icc_r34',
  'smoke',
)


def _recipe(c: ml_collections.ConfigDict) -> None:
  """The ImageNet solver of mdistiller's kd.yaml, data and precision."""
  c.dataset.name = 'array_record'
  # The streaming input's ImageNet recipe (input_pipeline/host_augment.py), whatever
  # the sizes of the converted images: RandomResizedCrop (scale 0.08-1,
  # ratio 3/4-4/3) to 224 and flip for training; torchvision's resize to
  # 256 and centre crop 224 for evaluation (input_pipeline/imagenet_preprocess.py).
  # crop_padding is not read by this recipe.
  c.dataset.augment = 'resized_crop'
  c.dataset.image_size = 224
  c.flip = True
  # torchvision's mean and std, as mdistiller's students and the teachers.
  c.dataset.normalization = 'imagenet'
  c.num_epochs = 100
  c.batch_size = 512
  c.eval_batch_size = 500  # 50,000 validation images: 100 batches
  c.learning_rate = 0.2
  c.lr_decay_epochs = (30, 60, 90)
  c.lr_decay_rate = 0.1
  c.momentum = 0.9
  c.weight_decay = 1e-4
  c.dtype = 'bfloat16'
  c.log_every_steps = 500
  c.checkpoint_every_epochs = 1


def _student(pair: str, method: str) -> ml_collections.ConfigDict:
  c = student_config.get_config()
  _recipe(c)
  c.teacher.model, c.model = PAIRS[pair]
  c.distill.method = method
  c.distill.update(_RECIPES[method][pair])
  solver = _SOLVERS.get((method, pair), _SOLVERS.get(method))
  if solver:
    c.batch_size, c.learning_rate = solver
  return c


def _icc_teacher() -> ml_collections.ConfigDict:
  c = teacher_config.get_config()
  _recipe(c)
  c.model = 'imagenet_resnet34'
  return c


def _smoke() -> ml_collections.ConfigDict:
  """r34_r18's KD, shrunk: the teacher is a torchvision ResNet18 file
  (the tests' fixture), the student a ResNet18, two steps on a converted
  set of 16 + 16 images declaring 1,000 classes (dataset.path), streamed
  with the ImageNet recipe at 64x64 (evaluation resized to 73, cropped)."""
  c = _student('r34_r18', 'kd')
  c.teacher.model = 'imagenet_resnet18'
  c.dataset.image_size = 64
  c.input.workers = 0  # decoding in a thread: no worker processes to start
  c.num_epochs = 1
  c.batch_size = 8
  c.eval_batch_size = 16
  c.lr_decay_epochs = ()
  c.dtype = 'float32'
  c.log_every_steps = 1
  c.num_devices = 1
  return c


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  if arg not in ARGS:
    raise ValueError(
      f'unknown config argument {arg!r}; valid: {", ".join(ARGS)}'
    )
  if arg == 'icc_r34':
    return _icc_teacher()
  if arg == 'smoke':
    return _smoke()
  pair = next(p for p in PAIRS if arg == p or arg.startswith(p + '_'))
  row = arg[len(pair) + 1 :] or 'kd'
  if row in OPTIMIZERS:
    c = _student(pair, 'kd')
    c.update(OPTIMIZERS[row])
    return c
  return _student(pair, row)
