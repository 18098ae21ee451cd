"""What a network hands to a distillation loss, and all a loss receives
beside its traced hyperparameters and static options (`Batch`)."""

from collections.abc import Callable
import dataclasses
from typing import Any, NamedTuple

import jax


class Outputs(NamedTuple):
  """One network's outputs on the local batch shard.

  `stages` and `preact_stages` are filled only for a method that reads
  them (`contract.Reads.stages`; else they stay empty, and the step never
  asks the model for them): each stage's output map and the same map before its
  last ReLU, NHWC [b, H_k, W_k, C_k] in the compute dtype, the first stage
  first and the last stage last (mdistiller's `feats["feats"][1:]` and
  `feats["preact_feats"][1:]`; see `models.stages`).
  """

  logits: jax.Array  # [b, classes]
  features: jax.Array  # [b, D] pooled penultimate features
  stages: tuple[jax.Array, ...] = ()
  preact_stages: tuple[jax.Array, ...] = ()


def _require_stages(student: Outputs, teacher: Outputs) -> None:
  if not student.stages or not teacher.stages:
    raise ValueError(
      'the distiller needs stage maps; declare Reads(stages=True) in its METHOD'
    )


def stage_pairs(
  student: Outputs, teacher: Outputs
) -> list[tuple[jax.Array, jax.Array]]:
  """(student map, teacher map) of each stage, paired by position.

  As mdistiller's `zip(g_s, g_t)`: when one network has more stages, its
  last ones are left out (every teacher-student pair of the benchmark has
  equal counts). Spatial sizes and channel counts may differ; the losses
  pool and reduce over channels themselves.

  Raises:
    ValueError: no stages were collected (the method's METHOD must declare
      Reads(stages=True)).
  """
  _require_stages(student, teacher)
  return list(zip(student.stages, teacher.stages))


def summed_over_stages(
  pair_loss: Callable[[jax.Array, jax.Array], jax.Array],
  student: Outputs,
  teacher: Outputs,
) -> jax.Array:
  """[] Σ_k pair_loss(student map k, teacher map k) over `stage_pairs`.
  Raises ValueError as `stage_pairs`."""
  return sum(pair_loss(s, t) for s, t in stage_pairs(student, teacher))


def last_stages(
  student: Outputs, teacher: Outputs
) -> tuple[jax.Array, jax.Array]:
  """Each network's last stage map (mdistiller's `feats["feats"][-1]`),
  whatever the stage counts. Raises ValueError as `stage_pairs`."""
  _require_stages(student, teacher)
  return student.stages[-1], teacher.stages[-1]


class Trainable(NamedTuple):
  """A method's own state, on every device (`Batch.trainable`). A method
  without trainable parts gets None for the first three."""

  params: Any  # params['distiller'] of the train state (differentiated)
  buffers: Any  # state.distiller_buffers: its non-trainable state (replicated)
  indices: jax.Array | None  # [b] int32: each local example's split index
  step: jax.Array  # [] int32: optimiser steps taken before this one


@dataclasses.dataclass(frozen=True)
class Batch:
  """What every method's loss receives for one device's shard of the batch
  (distillers/contract.py), beside hp and its static options.

  student, teacher: the two networks' `Outputs` on the shard, b examples
    (the teacher's already under stop_gradient);
  labels: [b] int32, the shard's classes;
  gather: all-gathers a [b, ...] array to the global [B, ...] batch, for a
    method relating examples to each other (the identity on one device);
  trainable: the method's `Trainable` state;
  student_strong, teacher_strong: the two networks' `Outputs` on the
    shard's strong view, for a method that reads it
    (`contract.Reads.strong_view`; else None).

  Not a pytree (gather is a function): it is built inside the traced step,
  never passed through a jax transformation's arguments.
  """

  student: Outputs
  teacher: Outputs
  labels: jax.Array
  gather: Callable[[jax.Array], jax.Array]
  trainable: Trainable
  student_strong: Outputs | None = None
  teacher_strong: Outputs | None = None
