"""A data set's classes: a classifier needs at least two.

With one class every logit is the target's: the cross-entropy is 0 for
any network, accuracy is 100% without training, and methods that read the
non-target classes (DKD's NCKD, DIST's inter-class relation, ...) divide by
or index classes that do not exist. A one-class set is refused wherever a
set is opened (`datasets.load`, `array_record.read_info`) or converted,
as `dataset.num_classes` < 2 is for the synthetic set.
"""

from icckd_jax.errors import UserError

MINIMUM = 2


def check(where: str, names):
  """`names`, a set's class names (or their count), refused if fewer than
  `MINIMUM`; `where` names what holds them (a field, a file)."""
  count = names if isinstance(names, int) else len(names)
  if count < MINIMUM:
    shown = '' if isinstance(names, int) else f' ({", ".join(names)})'
    raise UserError(
      f'{where} holds {count} class{shown}; a classifier needs at least '
      f'{MINIMUM} classes: add a class (a train/<class>/ folder)'
    )
  return names
