"""DIST, "Knowledge Distillation from A Stronger Teacher" (Huang et al.,
NeurIPS 2022).

  L = w_ce · CE(s, y) + T² · (β · inter(s, t) + γ · intra(s, t))

the second term `objective.student_losses.dist_loss`: one minus the Pearson
correlation of the softened predictions, per example across classes
(inter) and per class across the batch (intra).

Recipe (CIFAR-100): w_ce = 1, β = γ = 2, T = 4. Source: hunto/DIST_KD's
classification code (hunto/image_classification_sota),
configs/strategies/distill/dist_cifar.yaml (`kd: dist_t4`, ori_loss_weight
1, kd_loss_weight 2) and lib/models/losses/kd_loss.py (`dist_t4` is
DIST(beta=1, gamma=1, tau=4), its loss multiplied by kd_loss_weight): so
β = γ = 2 here. That recipe also trains with its own schedule (SGD, lr
0.05, 240 epochs, batch 64); configs/student.py keeps ours. mdistiller
has no DIST. Config: `ce_weight`, `dist_beta`, `dist_gamma`,
`temperature`.

The intra-class relation correlates examples across the batch, so the
logits are all-gathered and DIST is evaluated over the global batch (its
gradient reaches each shard through the all-gather's transpose), which
keeps the loss independent of the device count.

With config.distill.standardize_logits, DIST compares standardised logits
(CE keeps the raw ones). The logit-standardisation authors publish no
DIST recipe (their code covers KD, DKD, MLKD and CTKD), so its weights
stay as above unless set.
"""

from icckd_jax.distillers import contract
from icckd_jax.distillers import kd
from icckd_jax.distillers import settings
from icckd_jax.distillers.outputs import Batch
from icckd_jax.objective import student_losses


def loss(
  batch: Batch, hp: contract.Hyper, *, standardize: bool = False
) -> contract.Result:
  """Over the global batch: the logits are all-gathered first."""
  s, t = kd.soft_targets(batch.student, batch.teacher, standardize)
  dist = student_losses.dist_loss(
    batch.gather(s),
    batch.gather(t),
    hp['dist_beta'],
    hp['dist_gamma'],
    hp['temperature'],
  )
  # β and γ weigh the term already (and x · 1 is x, to the bit).
  return contract.weighted(
    batch, hp, 'dist', dist, 1.0, batch.trainable.buffers
  )


METHOD = contract.Method(
  shared=('temperature', 'ce_weight', 'standardize_logits'),
  own={
    'dist_beta': settings.weight(
      2.0, "β, the inter-class term's weight (dist_cifar.yaml: 1 · 2)"
    ),
    'dist_gamma': settings.weight(
      2.0, "γ, the intra-class term's weight (dist_cifar.yaml: 1 · 2)"
    ),
  },
  loss=loss,
  options=contract.standardize_option,
)
