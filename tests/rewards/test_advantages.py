"""Step advantages with the question-only baseline and effective rewards."""

import jax
import jax.numpy as jnp
import numpy as np

from pavjax import rewards


def test_step_advantages_hand_example():
  # Padded steps hold garbage (9, 7) to show it never leaks into real advantages.
  q_steps = jnp.array([[0.5, 0.8, 1.0, 9.0],
                       [0.2, 0.0, 7.0, 7.0],
                       [0.6, 9.0, 9.0, 9.0]])
  q_question = jnp.array([0.3, 0.4, 0.6])
  mask = jnp.array([[1, 1, 1, 0],
                    [1, 1, 0, 0],
                    [1, 0, 0, 0]], bool)
  adv = jax.jit(rewards.step_advantages)(q_steps, q_question, mask)
  np.testing.assert_allclose(adv, [[0.2, 0.3, 0.2, 0.0],
                                   [-0.2, -0.2, 0.0, 0.0],
                                   [0.0, 0.0, 0.0, 0.0]], atol=1e-6)
  # Per response, real advantages telescope to q_last - q_question.
  np.testing.assert_allclose(adv.sum(1), [1.0 - 0.3, 0.0 - 0.4, 0.0], atol=1e-6)


def test_bok_step_advantages_from_one_q_model():
  q_steps = jnp.array([[0.1, 0.2]])
  adv = rewards.step_advantages(rewards.bok_q(q_steps, 2), rewards.bok_q(jnp.array([0.1]), 2),
                                jnp.ones((1, 2), bool))
  np.testing.assert_allclose(adv, [[0.0, 0.36 - 0.19]], atol=1e-6)


def test_effective_reward_and_negative_control():
  q_pi = jnp.array([0.5, 0.2, 0.9])
  adv_mu = jnp.array([0.1, -0.2, 0.3])
  q_mu = jnp.array([0.6, 0.3, 0.8])
  mask = jnp.array([True, True, False])
  np.testing.assert_allclose(rewards.effective_reward(q_pi, adv_mu, 0.5), [0.55, 0.1, 1.05],
                             atol=1e-6)
  np.testing.assert_allclose(rewards.effective_reward(q_pi, adv_mu, 0.5, mask), [0.55, 0.1, 0.0],
                             atol=1e-6)
  np.testing.assert_allclose(rewards.q_bonus_reward(q_pi, q_mu, 0.5, mask), [0.8, 0.35, 0.0],
                             atol=1e-6)
  np.testing.assert_allclose(rewards.effective_reward(q_pi, adv_mu, 0.0), q_pi)
