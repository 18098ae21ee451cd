r"""Regenerates a sweep's report (results.csv, epochs.csv, summary.md,
plots) from its finished runs, into the sweep's workdir or `output_dir`:

  python launch.py --config=configs/report.py --config.workdir=workdirs/study
  python launch.py --config=configs/report.py --config.workdir=workdirs/study \
      --config.output_dir=docs/results/regime_cpu
"""

import ml_collections
from ml_collections import config_dict


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.mode = 'report'
  c.workdir = config_dict.placeholder(str)  # the sweep's workdir
  c.output_dir = config_dict.placeholder(str)  # default: the workdir
  # More seed-paired comparisons, 'arm:control, ...', beside the sweep's own.
  c.comparisons = config_dict.placeholder(str)
  return c
