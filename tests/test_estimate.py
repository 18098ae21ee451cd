"""The sweep's ETA: projected work left, shared by workers, corrected by how
fast the finished stages actually went."""

from icckd_jax.experiments.sweep import eta
from icckd_jax.training import estimate


class FakeClock:
  def __init__(self):
    self.now = 0.0

  def __call__(self):
    return self.now


def test_sweep_eta_counts_what_is_left_and_corrects_for_speed(monkeypatch):
  clock = FakeClock()
  monkeypatch.setattr(eta.time, 'perf_counter', clock)
  sweep = eta.SweepClock({'t1': 100.0, 's1': 20.0, 't2': 100.0}, 2)
  assert sweep.total_seconds() == 110.0
  assert sweep.eta_seconds() == 110.0

  sweep.start_stage('t1')
  sweep.stage_progress(0.5)
  assert sweep.eta_seconds() == (50 + 20 + 100) / 2
  clock.now = 200.0  # The stage took twice its projection.
  sweep.end_stage()
  assert sweep.speed_ratio() == 2.0
  assert sweep.eta_seconds() == (20 + 100) * 2.0 / 2

  # Another worker finished t2: only s1 is left. A stage left to another
  # worker does not count towards this one's speed.
  sweep.set_remaining(['s1'])
  sweep.start_stage('s1')
  clock.now = 1000.0
  sweep.end_stage(counted=False)
  assert sweep.speed_ratio() == 2.0
  assert sweep.eta_seconds() == 20 * 2.0 / 2


def test_duration():
  assert [estimate.duration(s) for s in (42, 185, 3720, -3)] == [
    '42s',
    '3m05s',
    '1h02m',
    '0s',
  ]


def test_the_sweep_clock_as_a_hook_follows_its_stage_and_shows_its_eta():
  """A hook of the stage's loop: the stage resumed after 4 of 20 steps is
  half done after 12, and every progress line ends with the sweep's ETA."""
  sweep = eta.SweepClock({'t1': 100.0, 's1': 20.0}, 1)
  sweep.start_stage('t1')
  sweep.on_start(4, 20)
  sweep.on_step(12, {'loss': 0.0})
  assert sweep.eta_seconds() == 50 + 20
  assert sweep.note() == ' | sweep ETA 1m10s'
