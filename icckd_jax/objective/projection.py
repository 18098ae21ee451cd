"""The optional projection head g of docs/method.md §3: z = normalize(g(f(x)))
(normalize: `losses.l2_normalize`)."""

import flax.linen as nn
import jax
import jax.numpy as jnp

HEADS = ('none', 'mlp')


class MLPHead(nn.Module):
  """Linear -> ReLU -> Linear, the SimCLR-style head. [B, D] -> [B, dim]."""

  dim: int = 128
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, features: jax.Array) -> jax.Array:
    x = nn.Dense(features.shape[-1], dtype=self.dtype)(features)
    x = nn.relu(x)
    return nn.Dense(self.dim, dtype=self.dtype)(x).astype(jnp.float32)
