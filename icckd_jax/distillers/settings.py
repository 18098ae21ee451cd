"""What a method declares of its config: one `Setting` per config.distill
field, and the settings several methods share (`SHARED`).

A method's module declares its own settings (`contract.Method.own`) and
names the shared ones it reads (`contract.Method.shared`); everything else
is derived from the registry (distillers/__init__.py): the config's
defaults (configs/student.py), each field's role and range
(runs/config_schema.py) and the student's typed part (runs/spec.py's
`Distillation`). The config stays flat: a setting `name` is the field
config.distill.<name>, so the saved configs and the keys that name runs and
compiled steps are what they were when the fields were spelled out.
"""

from collections.abc import Callable
import dataclasses
from typing import Any

# (predicate, what would be valid) of a numeric value: the range a setting
# declares, checked by runs/validate.py (whose other fields use the same).
Rule = tuple[Callable[[Any], bool], str]


def at_least(low: int) -> Rule:
  """An integer (not a bool) >= low."""
  return (
    lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= low,
    f'an integer >= {low}',
  )


POSITIVE: Rule = (lambda v: v > 0, 'a finite number > 0')
NON_NEGATIVE: Rule = (lambda v: v >= 0, 'a finite number >= 0')
FRACTION: Rule = (lambda v: 0 <= v < 1, 'a number in [0, 1)')
ANY: Rule = (lambda v: True, 'a finite number')
# `Setting.added_default` of a setting that runs have always had.
ABSENT = object()


@dataclasses.dataclass(frozen=True)
class Setting:
  """One config.distill field.

  default: its value in configs/student.py: the published CIFAR-100 recipe
    of the method that declares it (resnet32x4 -> resnet8x4).
  source: what it is and where the default comes from (docs/distillers.md).
  traced: the student step takes it as a traced scalar (hp[name]), so one
    compilation serves every value; else it shapes the program (a static
    option, `Method.options`) and a new value compiles another step.
  rule: the values it may take, if a number.
  added_default: the value that describes how runs saved before the
    setting existed behaved: such a run resumes only with that value, and
    a config without the field reads it.
  """

  default: Any
  source: str
  traced: bool = True
  rule: Rule = NON_NEGATIVE
  added_default: Any = ABSENT


def weight(default: float, source: str) -> Setting:
  """A traced weight >= 0: the most common setting."""
  return Setting(float(default), source)


def static(default: Any, source: str, rule: Rule = ANY, **kwargs) -> Setting:
  """A setting that shapes the compiled step (a width, a switch)."""
  return Setting(default, source, traced=False, rule=rule, **kwargs)


# The settings more than one method reads, declared once. The rest are
# each method's own (its module's `METHOD.own`).
SHARED: dict[str, Setting] = {
  'temperature': Setting(
    4.0,
    'T of kd, kd_rkd, dkd, dist and mlkd (mdistiller '
    "CFG.KD.TEMPERATURE, CFG.DKD.T; DIST's dist_t4)",
    rule=POSITIVE,
  ),
  'gamma': weight(0.1, "γ, kd's CE weight (CFG.KD.LOSS.CE_WEIGHT); kd_rkd's"),
  'alpha': weight(0.9, "α, kd's KL weight (CFG.KD.LOSS.KD_WEIGHT); kd_rkd's"),
  'beta': weight(1.0, 'β, the RKD weight of rkd and kd_rkd (CFG.RKD)'),
  'w_dist': weight(25.0, "RKD's distance weight (CFG.RKD.DISTANCE_WEIGHT)"),
  'w_angle': weight(50.0, "RKD's angle weight (CFG.RKD.ANGLE_WEIGHT)"),
  'ce_weight': weight(
    1.0,
    "the CE weight of every method but kd and kd_rkd (their recipes' "
    'LOSS.CE_WEIGHT)',
  ),
  'standardize_logits': static(
    False,
    'logit standardisation before T (Sun et al., CVPR 2024), for kd, dkd, '
    'dist, ctkd and mlkd; runs saved before it did not standardise',
    added_default=False,
  ),
}
