"""Soft-label BCE / MSE losses and the balanced batch sampler."""

import jax
import jax.numpy as jnp
import numpy as np

from pavjax import rewards


def test_soft_bce_hand_value():
  logits = jnp.array([0.0, np.log(3.0), 5.0])
  targets = jnp.array([0.25, 1.0, 0.0])
  weights = jnp.array([1.0, 2.0, 7.0])
  mask = jnp.array([True, True, False])
  # Entry 0: sigmoid(0) = 1/2 -> log 2. Entry 1: sigmoid(log 3) = 3/4 -> -log(3/4).
  want = (np.log(2.0) + 2 * -np.log(0.75)) / 3
  got = jax.jit(rewards.soft_bce_loss)(logits, targets, mask, weights)
  np.testing.assert_allclose(got, want, rtol=1e-6)
  # Gradient is w * (sigmoid(z) - t) / sum(w).
  grad = jax.grad(rewards.soft_bce_loss)(logits, targets, mask, weights)
  np.testing.assert_allclose(grad, [(0.5 - 0.25) / 3, 2 * (0.75 - 1.0) / 3, 0.0], rtol=1e-6)


def test_mse_hand_value_and_registry():
  logits = jnp.array([0.0, np.log(3.0)])
  targets = jnp.array([0.25, 1.0])
  np.testing.assert_allclose(rewards.Q_LOSSES["mse"](logits, targets), 0.0625, rtol=1e-6)
  assert rewards.Q_LOSSES["bce"] is rewards.soft_bce_loss


def test_losses_zero_mask_and_extreme_logits():
  logits = jnp.array([-1e4, 1e4, -100.0, 100.0])
  targets = jnp.array([1.0, 0.0, 0.3, 0.7])
  for loss in rewards.Q_LOSSES.values():
    # One compiled value-and-grad per loss keeps the test fast on 2 CPU cores.
    value_and_grad = jax.jit(jax.value_and_grad(loss))
    zero, zero_grad = value_and_grad(logits, targets, jnp.zeros(4))
    assert float(zero) == 0.0
    np.testing.assert_array_equal(zero_grad, 0.0)
    value, grad = value_and_grad(logits, targets, jnp.ones(4))
    assert np.isfinite(float(value))
    assert np.all(np.isfinite(grad))
  # At z = -1e4 with t = 1 the BCE is 1e4 (not inf), gradient sigmoid(z) - t = -1.
  np.testing.assert_allclose(rewards.soft_bce_loss(logits[:1], targets[:1]), 1e4, rtol=1e-6)
  np.testing.assert_allclose(jax.grad(rewards.soft_bce_loss)(logits[:1], targets[:1]), [-1.0])


def test_balanced_indices_proportions():
  rng = np.random.default_rng(0)
  q_hat = np.concatenate([np.zeros(90), np.linspace(0.5, 1.0, 10)])  # 0.5 counts as high
  idx = rewards.balanced_indices(rng, q_hat, 20)
  assert idx.shape == (20,) and idx.dtype == np.int64
  assert np.sum(q_hat[idx] >= 0.5) == 10
  assert len(set(idx.tolist())) == 20  # both sides large enough: no repeats
  # Odd batch: the extra slot goes to one side.
  idx = rewards.balanced_indices(rng, q_hat, 21)
  assert np.sum(q_hat[idx] >= 0.5) in (10, 11)
  # A rare side is repeated rather than under-represented.
  rare = np.array([0.9] + [0.1] * 50)
  idx = rewards.balanced_indices(rng, rare, 16)
  assert np.sum(idx == 0) == 8
  # One side empty: fall back to the other.
  idx = rewards.balanced_indices(rng, np.full(5, 0.2), 8)
  assert idx.shape == (8,) and set(idx.tolist()) <= set(range(5))
  idx = rewards.balanced_indices(rng, np.full(30, 0.8), 8)
  assert len(set(idx.tolist())) == 8
  assert rewards.balanced_indices(rng, q_hat, 0).shape == (0,)
