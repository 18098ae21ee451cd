"""icckd_jax: knowledge distillation with an intra-class contrastive teacher, in JAX."""
