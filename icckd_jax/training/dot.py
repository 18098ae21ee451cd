"""DOT, the distillation-oriented trainer (Zhao et al., ICCV 2023): SGD
whose task and distillation gradients keep momenta of their own.

With β the recipe's momentum, Δ `delta`, λ the weight decay and η_t the
learning rate of step t (0-based), a parameter p that both terms reach
(every parameter of the student model) is updated from its task gradient
g_task (of w_ce · CE) and its distillation gradient g_kd (of the rest of
the loss) as

  v_task ← (β − Δ) · v_task + g_task + λ · p
  v_kd   ← (β + Δ) · v_kd + g_kd
  p      ← p − η_t · (v_task + v_kd)

and a parameter only the distillation term reaches (a method's own,
params['distiller']) as SGD with momentum (β−Δ + β+Δ)/2 = β and decay
from the second step on (the first step's v_kd is g_kd, undecayed, as in
the published code):

  v_kd ← β · v_kd + g_kd + λ · p,  p ← p − η_t · v_kd.

Both momenta start at zero, so the first step's are the gradients, as
PyTorch's buffers start. This is mdistiller's `engine/dot.py`
(`DistillationOrientedTrainer`, megvii-research/mdistiller at a08d46f):
weight decay enters the task momentum only, and a parameter without a task
gradient takes the mean momentum with decay (docs/distillers.md, "DOT").
"""

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax


class DotState(NamedTuple):
  """count: [] int32 steps taken (the schedule's argument); task, kd: the
  two momenta, each a tree shaped as the parameters (zero at the start)."""

  count: jax.Array
  task: Any
  kd: Any


# params -> a tree of bools shaped as params: True where only the
# distillation term reaches a leaf.
DistillOnly = Callable[[Any], Any]


def dot(
  learning_rate: optax.ScalarOrSchedule,
  momentum: float,
  delta: float,
  weight_decay: float,
  distill_only: DistillOnly,
) -> optax.GradientTransformation:
  """The DOT update (module docstring) as an optax transformation.

  Its `update(grads, state, params)` takes grads = (g_task, g_kd), two
  trees shaped as `params`, and returns the updates −η_t · (v_task + v_kd)
  (−η_t · v_kd where `distill_only(params)` is True).
  """
  schedule = (
    learning_rate if callable(learning_rate) else (lambda _: learning_rate)
  )
  m_task, m_kd = momentum - delta, momentum + delta
  m_mean = (m_task + m_kd) / 2

  def init(params) -> DotState:
    zeros = lambda: jax.tree.map(jnp.zeros_like, params)
    return DotState(jnp.zeros([], jnp.int32), zeros(), zeros())

  def task(g, v, p, only_kd):
    return v if only_kd else m_task * v + (g + weight_decay * p)

  def kd(g, v, p, only_kd, first):
    if only_kd:
      # The published code decays these from the second step on only.
      decay = jnp.where(first, 0.0, weight_decay * p).astype(p.dtype)
      return m_mean * v + (g + decay)
    return m_kd * v + g

  def step(v_task, v_kd, only_kd, lr):
    return -lr * v_kd if only_kd else -lr * v_task - lr * v_kd

  def update(grads, state: DotState, params=None):
    if params is None:
      raise ValueError('dot needs the parameters (its weight decay)')
    g_task, g_kd = grads
    only_kd = distill_only(params)
    v_task = jax.tree.map(task, g_task, state.task, params, only_kd)
    first = state.count == 0
    v_kd = jax.tree.map(
      lambda g, v, p, o: kd(g, v, p, o, first), g_kd, state.kd, params, only_kd
    )
    lr = schedule(state.count)
    updates = jax.tree.map(
      lambda t, k, o: step(t, k, o, lr), v_task, v_kd, only_kd
    )
    return updates, DotState(optax.safe_increment(state.count), v_task, v_kd)

  return optax.GradientTransformation(init, update)


def model_and_distiller(params) -> Any:
  """`DistillOnly` of a student's params {'model', 'distiller'?}: the
  method's own parameters are reached by the distillation term alone."""
  return {
    name: jax.tree.map(lambda _, only=name == 'distiller': only, tree)
    for name, tree in params.items()
  }
