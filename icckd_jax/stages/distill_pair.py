"""Whether a distillation method can serve a (teacher, student) pair: the
stages it pairs (their count, spatial sizes, channels) and what its
connectors adapt, checked from the two networks' shapes before anything
compiles.

The check traces the method on abstract outputs (`jax.eval_shape`: no
compilation, no memory): a pair the method cannot serve fails there, and
becomes one line naming the method, both models and the mismatch, where it
would otherwise fail deep inside the compilation of the train step.
"""

import jax
import jax.numpy as jnp
import flax.linen as nn

from icckd_jax import distillers
from icckd_jax import parallel
from icckd_jax.errors import UserError, one_line
from icckd_jax.runs.spec import Distillation
from icckd_jax.stages import student_step

# The abstract batch the pair is traced on.
_BATCH = 2


def _stage_shapes(outputs: distillers.Outputs) -> str:
  """'HxWxC, ...' of each stage map, the first stage first."""
  return (
    ', '.join('x'.join(str(d) for d in m.shape[1:]) for m in outputs.stages)
    or 'none'
  )


def check_pair(
  distillation: Distillation,
  names: tuple[str, str],
  models: tuple[nn.Module, nn.Module],
  teacher_variables,
  distiller: distillers.Distiller,
  input_shape,
  train_labels,
) -> None:
  """Refuses, with one UserError, a pair `distillation.method` cannot
  serve.

  `names` and `models` are (student, teacher); `teacher_variables` the
  teacher's (concrete or abstract); `input_shape` [H, W, C];
  `train_labels` [N] (a memory bank's size).
  """
  if not distiller.reads.stages and not distiller.trainable:
    return  # Logits and pooled features only: any pair of the same classes.
  student, teacher = _output_shapes(
    models, teacher_variables, distiller, input_shape
  )
  student_name, teacher_name = names
  refusal = (
    f'config.distill.method={distillation.method!r} cannot distil teacher '
    f'{teacher_name} (stages {_stage_shapes(teacher)}) into student '
    f'{student_name} (stages {_stage_shapes(student)})'
  )
  mismatch = distiller.check(student, teacher)
  if mismatch:
    raise UserError(f'{refusal}: {mismatch}')
  try:
    _trace_loss(
      distiller,
      student_step.hyperparameters(distillation.weights),
      (student, teacher),
      teacher_variables['params'],
      train_labels,
    )
  except Exception as e:  # pylint: disable=broad-except
    # Any failure to trace the method on these shapes (a UserError of its
    # own, a broadcasting TypeError, a bad reshape) means this pair.
    raise UserError(f'{refusal}: {one_line(e)}') from None


def _output_shapes(
  models: tuple[nn.Module, nn.Module],
  teacher_variables,
  distiller: distillers.Distiller,
  input_shape,
) -> tuple[distillers.Outputs, distillers.Outputs]:
  """The (student, teacher) Outputs of a batch of 2, as shapes."""
  student_model, teacher_model = models
  x = jnp.zeros((_BATCH, *input_shape), jnp.float32)

  def outputs():
    student_variables = student_model.init(jax.random.key(0), x, train=False)
    return tuple(
      student_step.apply_model(
        model, variables, x, train=False, stages=distiller.reads.stages
      )[0]
      for model, variables in (
        (student_model, student_variables),
        (teacher_model, teacher_variables),
      )
    )

  return jax.eval_shape(outputs)


def _trace_loss(
  distiller: distillers.Distiller,
  hp: dict[str, jax.Array],
  outputs: tuple[distillers.Outputs, distillers.Outputs],
  teacher_params,
  train_labels,
) -> None:
  """Traces the method's init and loss on the (student, teacher) `outputs`
  (shapes), as the step would on one device; raises what tracing does."""

  def traced(student, teacher, teacher_params):
    labels = jnp.zeros((_BATCH,), jnp.int32)
    gather = lambda a: a  # Shapes only: one device's batch is the batch.
    abstract = jax.tree.map(
      lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), (student, teacher)
    )
    params, buffers = distiller.init(
      jax.random.key(0), *abstract, train_labels, teacher_params
    )
    trainable = distillers.Trainable(
      params, buffers, jnp.zeros_like(labels), jnp.int32(0)
    )
    batch = distillers.Batch(student, teacher, labels, gather, trainable)
    return distiller.loss(batch, {**hp, 'epoch': jnp.float32(1)})

  # The connectors' BatchNorm synchronises over the data axis, as in the
  # step: a vmap over one device binds it.
  on_one_device = jax.vmap(
    traced, in_axes=(0, 0, None), axis_name=parallel.DATA
  )
  batched = jax.tree.map(
    lambda a: jax.ShapeDtypeStruct((1, *a.shape), a.dtype), outputs
  )
  jax.eval_shape(on_one_device, *batched, teacher_params)
