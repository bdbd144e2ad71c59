"""The optimizer registry: SGD steps scale with the gradient, AdamW's do not."""

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from pavjax import training


def _optim(name, lr=0.1, weight_decay=0.0):
  c = ml_collections.ConfigDict(dict(name=name, lr=lr, warmup_steps=0, end_lr_frac=1.0,
                                     weight_decay=weight_decay, b1=0.9, b2=0.95,
                                     grad_clip=0.0))
  return training.make_optimizer(c, num_steps=10)


def _first_update(tx, grad):
  params = {"w": jnp.array([1.0, -2.0, 3.0])}
  updates, _ = tx.update({"w": grad}, tx.init(params), params)
  return np.asarray(updates["w"])


def test_sgd_step_is_minus_lr_times_gradient():
  grad = jnp.array([0.5, -4.0, 1e-3])
  np.testing.assert_allclose(_first_update(_optim("sgd", lr=0.1), grad),
                             [-0.05, 0.4, -1e-4], rtol=1e-6)


def test_sgd_weight_decay_is_decoupled():
  # update = -lr * (grad + wd * param)
  np.testing.assert_allclose(
      _first_update(_optim("sgd", lr=0.1, weight_decay=0.5), jnp.zeros(3)),
      [-0.05, 0.1, -0.15], rtol=1e-6)


@pytest.mark.parametrize("scale", [1e-3, 1.0, 1e3])
def test_adamw_first_step_ignores_gradient_scale_sgd_does_not(scale):
  # Adam's first step is lr * sign(g) (up to eps) whatever the gradient's size;
  # SGD's is proportional to it.
  grad = jnp.array([0.5, -4.0, 2.0]) * scale
  np.testing.assert_allclose(_first_update(_optim("adamw"), grad), [-0.1, 0.1, -0.1],
                             rtol=1e-4)
  np.testing.assert_allclose(_first_update(_optim("sgd"), grad), -0.1 * np.asarray(grad),
                             rtol=1e-6)
