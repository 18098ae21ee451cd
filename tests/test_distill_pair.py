"""Whether a distiller can serve a (teacher, student) pair
(stages/distill_pair.py): a pair it cannot serve is refused before anything
compiles, one line naming the method, both models and the mismatch; on
unusual pairs (other families, stage counts, sizes and widths) every method
traces or refuses so.
"""

import jax
import jax.numpy as jnp
import ml_collections
import pytest

from configs import student as student_config
from icckd_jax import distillers
from icckd_jax import models
from icckd_jax import parallel
from icckd_jax.data import datasets
from icckd_jax.errors import UserError
from icckd_jax.input_pipeline.source import Batch
from icckd_jax.runs import spec
from icckd_jax.stages import student
from icckd_jax.training import checkpoint


def _build(method: str, teacher_name: str, student_name: str):
  """build_student for `method` from an untrained `teacher_name` (the
  pairing depends on shapes alone), and the preflight's lowering of its
  step (tracing, not compiling: shapes are all that can fail here)."""
  config = student_config.get_config('smoke')
  config.model, config.distill.method = student_name, method
  config.distill.update(crd_negatives=16, crd_dim=8)
  config.dataset.update(num_train=64, num_test=64)
  dataset = datasets.load(spec.data_request(config.dataset))
  mesh = parallel.make_mesh(1)
  teacher_model = models.create_model(teacher_name, dataset.num_classes)
  variables = teacher_model.init(
    jax.random.key(0),
    jnp.zeros((1, *dataset.train_images.shape[1:])),
    train=False,
  )
  setup = student.build_student(
    spec.from_config(config),
    dataset,
    mesh,
    ml_collections.ConfigDict({'model': teacher_name}),
    parallel.put_replicated(variables, mesh),
  )
  state = checkpoint.abstract_like(jax.eval_shape(setup.init_state), mesh)
  images = jax.ShapeDtypeStruct(
    (1, config.batch_size, *dataset.train_images.shape[1:]), jnp.uint8
  )
  labels = jax.ShapeDtypeStruct((config.batch_size,), jnp.int32)
  batch = Batch(images, labels, labels if setup.with_indices else None)
  setup.train_step.lower(state, batch, setup.step_args)


@pytest.mark.parametrize(
  'method,mismatch',
  [
    ('reviewkd', 'stage 1 is 32x32 in the student but 16x16 in the teacher'),
    ('kdsvd', 'stage 1 has 16 channels in the student but 128'),
    ('ofd', 'needs a ResNet teacher'),
  ],
)
def test_a_distiller_refuses_a_pair_it_cannot_serve_before_compiling(
  method, mismatch
):
  """vgg8 teacher, resnet8 student: reviewkd (which died in the preflight
  compile with a broadcasting TypeError), kdsvd and ofd refuse with one
  line naming the method, both models and the mismatch."""
  with pytest.raises(UserError) as refused:
    _build(method, 'vgg8', 'resnet8')
  line = str(refused.value)
  assert '\n' not in line
  assert f"config.distill.method='{method}'" in line
  assert 'teacher vgg8' in line and 'student resnet8' in line
  assert mismatch in line


PAIRS = [
  ('vgg8', 'resnet8'),
  ('resnet8', 'vgg8'),
  ('wrn_16_1', 'ShuffleV1'),
  ('MobileNetV2', 'resnet8'),
  ('resnet8', 'MobileNetV2'),
  ('ResNet50', 'resnet8'),
  ('resnet8x4', 'ShuffleV2'),
]


@pytest.mark.slow
@pytest.mark.parametrize('teacher_name,student_name', PAIRS)
@pytest.mark.parametrize('method', sorted(distillers.DISTILLERS))
def test_every_distiller_serves_or_refuses_an_unusual_pair(
  method, teacher_name, student_name
):
  """Every method on every unusual pair: its step traces, or it refuses
  with one line naming it and both models; nothing else escapes."""
  try:
    _build(method, teacher_name, student_name)
  except UserError as e:
    line = str(e)
    assert '\n' not in line
    assert f"config.distill.method='{method}'" in line
    assert f'teacher {teacher_name}' in line
    assert f'student {student_name}' in line
