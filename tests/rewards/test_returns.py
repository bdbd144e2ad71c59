"""Per-token returns of Eq. 5 versus the telescoping reward-to-go."""

import jax
import jax.numpy as jnp
import numpy as np

from pavjax import rewards


def test_token_rewards_hand_example():
  # Row 0: 2 prompt tokens, steps of 3, 1 and 2 tokens, 2 pad tokens.
  # Row 1: 1 prompt token, 2 steps (2 and 3 tokens), padding; its step 2 is padding.
  step_ids = jnp.array([[-1, -1, 0, 0, 0, 1, 2, 2, -1, -1],
                        [-1, 0, 0, 1, 1, 1, -1, -1, -1, -1]])
  step_adv = jnp.array([[0.2, -0.1, 0.5],
                        [0.3, -0.4, 0.0]])
  outcome = jnp.array([1.0, 0.0])
  out = jax.jit(rewards.token_rewards)(outcome, step_adv, step_ids, 2.0)
  np.testing.assert_allclose(out, [[0, 0, 1.4, 1.4, 1.4, 0.8, 2.0, 2.0, 0, 0],
                                   [0, 0.6, 0.6, -0.8, -0.8, -0.8, 0, 0, 0, 0]], atol=1e-6)
  # alpha = 0 is outcome-only RL: every response token gets Rex.
  out0 = rewards.token_rewards(outcome, step_adv, step_ids, 0.0)
  np.testing.assert_array_equal(out0, np.where(step_ids >= 0, outcome[:, None], 0.0))
  # Out-of-range ids are treated like padding.
  bad = rewards.token_rewards(outcome[:1], step_adv[:1], jnp.array([[0, 3, -1]]), 1.0)
  np.testing.assert_allclose(bad, [[1.2, 0.0, 0.0]], atol=1e-6)


def test_reward_to_go_telescopes_but_eq5_keeps_step_signal():
  # Two responses share the question and their first step, then take a good and a
  # bad second step, and both end correct (the last prefix's value is Rex = 1).
  q_steps = jnp.array([[0.5, 0.8, 1.0],
                       [0.5, 0.2, 1.0]])
  q_question = jnp.array([0.3, 0.3])
  outcome = jnp.array([1.0, 1.0])
  alpha = 2.0
  adv = rewards.step_advantages(q_steps, q_question, jnp.ones((2, 3), bool))
  # The alternative: dense step rewards alpha * A folded into an undiscounted
  # reward-to-go, Rex + alpha * sum_{j >= h} A_j ...
  to_go = outcome[:, None] + alpha * jnp.cumsum(adv[:, ::-1], axis=1)[:, ::-1]
  # ... telescopes to Rex + alpha * (Rex - V^mu(s_h)), V^mu(s_h) = value before step h,
  v_before = jnp.concatenate([q_question[:, None], q_steps[:, :-1]], axis=1)
  np.testing.assert_allclose(to_go, outcome[:, None] + alpha * (outcome[:, None] - v_before),
                             atol=1e-6)
  # so the good and the bad second step (same state before them) get the same weight:
  np.testing.assert_allclose(to_go[0, 1], to_go[1, 1], atol=1e-6)
  # Eq. 5 weights step h by Rex + its own alpha * A_h, and tells them apart.
  per_token = rewards.token_rewards(outcome, adv, jnp.array([[0, 1, 2]] * 2), alpha)
  np.testing.assert_allclose(per_token[:, 1], [1.0 + 2 * 0.3, 1.0 - 2 * 0.3], atol=1e-6)
