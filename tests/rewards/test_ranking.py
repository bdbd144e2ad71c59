"""Top-k candidate ranking, including the paper's Fig. 2a example."""

import jax
import jax.numpy as jnp
import numpy as np

from pavjax import rewards


def test_fig2a_q_versus_advantage_ranking():
  # Candidates a1,1 a1,2 a1,3 (parent V = 0.6) then a2,1 a2,2 a2,3 (parent V = 0.3).
  q = jnp.array([0.55, 0.50, 0.70, 0.50, 0.35, 0.25])
  parent = jnp.array([0, 0, 0, 1, 1, 1])
  v_parent = jnp.array([0.6, 0.3])
  # Top-2 by Q keeps a1,3 and a1,1: both children of the promising parent, one of them
  # a step that lost value (A = -0.05).
  np.testing.assert_array_equal(rewards.rank_candidates(q, 2), [2, 0])
  # Top-2 by advantage keeps a2,1 (A = +0.2) and a1,3 (A = +0.1).
  adv = q - v_parent[parent]
  np.testing.assert_array_equal(rewards.rank_candidates(adv, 2), [3, 2])
  # The same through the effective reward with a large alpha.
  score = rewards.effective_reward(q, adv, 10.0)
  np.testing.assert_array_equal(rewards.rank_candidates(score, 2), [3, 2])


def test_rank_candidates_ties_nan_and_valid():
  top = jax.jit(rewards.rank_candidates, static_argnums=1)
  scores = jnp.array([0.5, 0.7, 0.7, 0.1, 0.7])
  np.testing.assert_array_equal(top(scores, 3), [1, 2, 4])
  np.testing.assert_array_equal(top(scores, 5), [1, 2, 4, 0, 3])
  # NaN ranks last; -0.0 ties with 0.0 (lower index first).
  np.testing.assert_array_equal(top(jnp.array([jnp.nan, -0.0, 0.0, -1.0]), 4), [1, 2, 3, 0])
  valid = jnp.array([True, False, True, True, True])
  np.testing.assert_array_equal(rewards.rank_candidates(scores, 3, valid), [2, 4, 0])
  assert top(scores, 0).shape == (0,)
