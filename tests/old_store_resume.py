"""Resumes a run store in a process of its own, for test_old_runs.py: at
XLA's default optimisation level, which the old code's store was computed
at and the suite's processes turn down (conftest.QUICK_COMPILE).

  python tests/old_store_resume.py STORE

Runs make_store_d8b658b's sweep over STORE, then prints, as one JSON line,
the [workdir, step] each run restored to resume from.
"""

import json
import sys

from absl import flags

from icckd_jax import main as icckd_main
from icckd_jax.training import checkpoint
import make_store_d8b658b


def resume(store: str) -> list[tuple[str, int]]:
  """The sweep over `store`: the (workdir, step) of each resumed run."""
  resumed = []
  restore = checkpoint.Checkpoints.restore_newest_intact

  def spy(self, abstract_state=None, *args, **kwargs):
    # A run resuming passes its state's shapes; a student reading its
    # teacher passes none.
    result = restore(self, abstract_state, *args, **kwargs)
    if abstract_state is not None and result is not None:
      resumed.append((str(self.workdir), int(result[1]['step'])))
    return result

  checkpoint.Checkpoints.restore_newest_intact = spy
  icckd_main.run(make_store_d8b658b.config(), store)
  return resumed


if __name__ == '__main__':
  flags.FLAGS.mark_as_parsed()
  print(json.dumps(resume(sys.argv[1])))
