r"""Regenerates a sweep's report (results.csv, summary.md, plots) from its
finished runs:

  python launch.py --config=configs/report.py --config.workdir=workdirs/margin
"""

import ml_collections
from ml_collections import config_dict


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.mode = 'report'
  c.workdir = config_dict.placeholder(str)  # the sweep's workdir
  return c
