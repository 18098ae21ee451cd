r"""The student: distilled from a trained teacher (docs/method.md §4, §5).

Defaults: the CIFAR-100 benchmark recipe, resnet8x4 from a resnet32x4 teacher,
KD with T = 4, γ = 0.1, α = 0.9:

  python launch.py --config=configs/student.py --workdir=workdirs/student \
      --config.teacher.workdir=workdirs/teacher
  # "Ours+RKD": KD plus relational KD on penultimate features (β = 1)
  python launch.py --config=configs/student.py --workdir=workdirs/student_rkd \
      --config.teacher.workdir=workdirs/teacher --config.distill.method=kd_rkd
  # a published method with its CIFAR-100 recipe (docs/distillers.md): dkd,
  # dist, at, nst, pkt, sp or rkd
  python launch.py --config=configs/student.py --workdir=workdirs/student_dkd \
      --config.teacher.workdir=workdirs/teacher --config.distill.method=dkd
  # a few steps from a smoke teacher, offline, < 1 min on CPU
  python launch.py --config=configs/student.py:smoke --workdir=/tmp/smoke_s \
      --config.teacher.workdir=/tmp/smoke

The teacher's architecture comes from the config saved with its checkpoint;
the student's data set must be the one the teacher was trained on.

A published teacher of the CIFAR-100 KD benchmark (RepDistiller's PyTorch
`ckpt_epoch_240.pth`), imported without PyTorch; its input is normalised with
the benchmark's CIFAR-100 mean/std, the student's with the data set's own:

  python launch.py --config=configs/student.py --workdir=workdirs/kd_32x4_8x4 \
      --config.teacher.pth=path/to/resnet32x4_vanilla/ckpt_epoch_240.pth \
      --config.teacher.model=resnet32x4 --config.model=resnet8x4
"""

import ml_collections
from ml_collections import config_dict

from configs import teacher as teacher_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  # The same recipe, data sets and scales as the teacher's config.
  c = teacher_config.get_config(arg)
  del c['icc']
  del c['cache']
  c.mode = 'student'
  c.model = 'resnet8x4' if not arg else 'resnet8'

  c.teacher = ml_collections.ConfigDict()
  c.teacher.workdir = config_dict.placeholder(str)  # the teacher's run
  c.teacher.checkpoint = 'last'  # 'last' or 'best'
  # A teacher run short of its last epoch is refused unless this is set.
  c.teacher.allow_unfinished = False
  # Or a PyTorch checkpoint of the CIFAR-100 KD benchmark and its model name.
  c.teacher.pth = config_dict.placeholder(str)
  c.teacher.model = config_dict.placeholder(str)

  # The distillation method and its weights. Each method reads only its own
  # fields (and the shared temperature / ce_weight), whose defaults are its
  # published CIFAR-100 recipe for resnet32x4 -> resnet8x4, so choosing
  # --config.distill.method alone runs that recipe (docs/distillers.md; the
  # sources are cited in each icckd_jax/distillers/<method>.py).
  c.distill = ml_collections.ConfigDict()
  # kd, kd_rkd, dkd, dist, at, nst, pkt, sp, rkd, kdsvd, fitnet, vid, ofd,
  # reviewkd or crd.
  c.distill.method = 'kd'
  c.distill.temperature = 4.0  # T of kd, kd_rkd, dkd and dist
  # kd: L = γ·CE + α·T²·KL(t || s); kd_rkd adds β·RKD (mdistiller's KD).
  c.distill.gamma = 0.1
  c.distill.alpha = 0.9
  c.distill.beta = 1.0  # the RKD weight of kd_rkd and rkd
  c.distill.w_dist = 25.0  # RKD's distance and angle weights
  c.distill.w_angle = 50.0
  # The CE weight of every method but kd and kd_rkd (which use gamma).
  c.distill.ce_weight = 1.0
  # dkd: min(epoch / warm-up, 1)·(α·TCKD + β·NCKD) at T (mdistiller's DKD).
  c.distill.dkd_alpha = 1.0
  c.distill.dkd_beta = 8.0
  c.distill.dkd_warmup_epochs = 20.0
  # dist: T²·(β·inter + γ·intra) (DIST's CIFAR-100 recipe).
  c.distill.dist_beta = 2.0
  c.distill.dist_gamma = 2.0
  # Feature methods: the weight of each one's term (mdistiller's FEAT_WEIGHT).
  c.distill.at_weight = 1000.0
  c.distill.nst_weight = 50.0
  c.distill.pkt_weight = 30000.0
  c.distill.sp_weight = 3000.0
  c.distill.kdsvd_weight = 1.0
  # Trainable methods (their parameters train with the student): fitnet's
  # hint regressor, vid's regressors and variances, ofd's connectors,
  # reviewkd's fusion blocks, crd's embeddings and memory bank (mdistiller's
  # FitNet, VID, OFD, ReviewKD, CRD; docs/distillers.md gives the bank's
  # size).
  c.distill.fitnet_weight = 100.0
  c.distill.vid_weight = 1.0
  c.distill.ofd_weight = 0.001
  c.distill.reviewkd_weight = 5.0
  c.distill.reviewkd_warmup_epochs = 20.0
  c.distill.reviewkd_max_mid = 512  # the cap of the fusion width
  c.distill.reviewkd_student_preact = False  # fuse pre-ReLU student maps
  c.distill.crd_weight = 0.8
  c.distill.crd_temperature = 0.07
  c.distill.crd_momentum = 0.5
  c.distill.crd_dim = 128
  c.distill.crd_negatives = 16384
  # Logit standardisation (Sun et al., CVPR 2024) before the temperature, for
  # kd, dkd and dist; its authors' recipe also changes T and the weights
  # (icckd_jax/distillers/kd.py, dkd.py).
  c.distill.standardize_logits = False
  return c
