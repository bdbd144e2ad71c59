"""Theorem 3.1 quantities and the closed-form NPG step on exact tabular examples."""

import jax
import jax.numpy as jnp
import numpy as np

from pavjax import rewards
from pavjax.rewards import theory as theory_lib
from pavjax.tasks import planted

# One state, three actions (hand example).
PI = jnp.array([[0.5, 0.25, 0.25]])
MU = jnp.array([[0.25, 0.25, 0.5]])
Q_MU = jnp.array([[0.8, 0.4, 0.0]])
Q_PI = jnp.array([[0.6, 0.2, 0.2]])


def test_hand_one_state_distinguishability_and_alignment():
  # V^mu = E_mu[Q^mu] = 0.3, so A^mu = [0.5, 0.1, -0.3].
  np.testing.assert_allclose(rewards.tabular_advantages(Q_MU, policy=MU), [[0.5, 0.1, -0.3]],
                             atol=1e-6)
  # E_pi[A^mu] = 0.2, E_pi[(A^mu)^2] = 0.15: variance 0.11.
  np.testing.assert_allclose(rewards.distinguishability(PI, Q_MU, mu=MU), 0.11, rtol=1e-5)
  # V^pi = 0.4, A^pi = [0.2, -0.2, -0.2]: 0.5*0.5*0.2 + 0.25*0.1*(-0.2) + 0.25*(-0.3)*(-0.2).
  np.testing.assert_allclose(rewards.alignment(PI, Q_MU, Q_PI, mu=MU), 0.06, rtol=1e-5)
  # The choice of V^mu cancels in both quantities (see pavjax/rewards/theory.py).
  for kwargs in ({}, {"v_mu": jnp.array([12.3])}):
    np.testing.assert_allclose(rewards.distinguishability(PI, Q_MU, **kwargs), 0.11, rtol=1e-5)
    np.testing.assert_allclose(rewards.alignment(PI, Q_MU, Q_PI, **kwargs), 0.06, rtol=1e-5)


def test_mu_equals_pi_and_npg_improves():
  adv_pi = rewards.tabular_advantages(Q_PI, policy=PI)
  second_moment = float(jnp.sum(PI * adv_pi ** 2))
  np.testing.assert_allclose(second_moment, 0.04, rtol=1e-5)
  np.testing.assert_allclose(rewards.alignment(PI, Q_PI, Q_PI, mu=PI), second_moment, rtol=1e-5)
  np.testing.assert_allclose(rewards.distinguishability(PI, Q_PI), second_moment, rtol=1e-5)
  new = rewards.npg_update(PI, Q_PI, adv_pi, 1.0, 1.0)
  want = np.asarray(PI) * np.exp(np.asarray(Q_PI + adv_pi))
  np.testing.assert_allclose(new, want / want.sum(), rtol=1e-6)
  assert float(rewards.policy_value(new, Q_PI)[0]) > float(rewards.policy_value(PI, Q_PI)[0])
  # Zero-probability actions stay at zero.
  sparse = rewards.npg_update(jnp.array([[0.0, 1.0]]), jnp.array([[1.0, 0.0]]),
                              jnp.zeros((1, 2)), 5.0, 1.0)
  np.testing.assert_array_equal(sparse, [[0.0, 1.0]])


def test_npg_first_order_gain_is_variance_plus_alpha_alignment():
  # d/dg E_{pi_g}[Q^pi] at g = 0 is Cov_pi(Q^pi, Q^pi + alpha A^mu)
  # = Var_pi[Q^pi] + alpha * alignment: the exact small-step form of Theorem 3.1.
  alpha, g = 2.0, 1e-2
  adv_mu = rewards.tabular_advantages(Q_MU, policy=MU)
  value = lambda lr: float(rewards.policy_value(
      rewards.npg_update(PI, Q_PI, adv_mu, lr, alpha), Q_PI)[0])
  slope = (value(g) - value(-g)) / (2 * g)
  np.testing.assert_allclose(slope, 0.04 + alpha * 0.06, rtol=2e-3)


def test_state_weights():
  pi = jnp.concatenate([PI, jnp.array([[0.5, 0.5, 0.0]])])
  q_mu = jnp.concatenate([Q_MU, jnp.array([[1.0, 0.0, 0.3]])])
  # Second state: Var_pi = 0.25. Weights 3:1 favour the hand state (0.11).
  got = rewards.distinguishability(pi, q_mu, state_weights=jnp.array([3.0, 1.0]))
  np.testing.assert_allclose(got, (3 * 0.11 + 0.25) / 4, rtol=1e-5)


def test_bok_prover_raises_distinguishability_when_q_pi_is_small():
  # Base policy pi = mu_10 of the planted task; its exact Q (DP) is ~0.03-0.19 per action.
  prover = planted.ProceduralProver((3, 6, 0, 3, 5), 15, gamma=10.0, length=10)
  prefixes = [(), (3,), (3, 6)]
  pi = jnp.asarray(np.stack([prover.probs(p) for p in prefixes]))  # [3, 15]
  q_np = np.stack([prover.q_table(p) for p in prefixes])  # [3, 15]
  q_pi = jnp.asarray(q_np)
  assert q_np.max() < 0.2
  exact = np.mean([np.sum(p * (q - np.sum(p * q)) ** 2) for p, q in zip(np.asarray(pi), q_np)])
  np.testing.assert_allclose(rewards.distinguishability(pi, q_pi), exact, rtol=1e-5)

  ks = (1, 2, 4, 8, 16, 32)

  @jax.jit
  def theory(k):
    q_bok = rewards.bok_q(q_pi, k)
    return rewards.distinguishability(pi, q_bok), rewards.alignment(pi, q_bok, q_pi)

  dist_k, align_k = jax.vmap(theory)(jnp.array(ks))
  dist = dict(zip(ks, np.asarray(dist_k).tolist()))
  align = dict(zip(ks, np.asarray(align_k).tolist()))
  assert dist[1] < dist[2] < dist[4] < dist[8]
  for k in dist:
    # d/dq bok_q >= K (1 - q_max)^(K-1), so the variance grows at least that squared (~K^2) ...
    assert dist[k] >= k ** 2 * (1 - q_np.max()) ** (2 * (k - 1)) * dist[1] * (1 - 1e-5)
    # ... while alignment (a covariance with Q^pi) at most grows K-fold and stays positive.
    assert 0 < align[k] <= k * align[1] * (1 + 1e-5)
  # A prover that is too strong (Q^{BoK} -> 1 for every action) stops telling actions apart.
  assert dist[32] < dist[16]


def test_npg_on_a_two_level_tree_matches_the_predicted_first_order_gain():
  """Root state 0 picks child state 1 or 2; each child picks one of 3 leaves (reward table).

  The NPG step updates every state at once. By the performance-difference lemma
  the first-order gain of V(root) is sum_s d^pi(s) * (E_pi[(A^pi)^2] + alpha *
  E_pi[A^mu A^pi]): the theorem's terms, weighted by the occupancy d^pi.
  """
  leaf = np.array([[0.9, 0.1, 0.4], [0.2, 0.6, 0.0]])  # reward of (child, action)
  pi = jnp.array([[0.3, 0.7, 0.0], [0.2, 0.5, 0.3], [0.6, 0.1, 0.3]])
  mu = jnp.array([[0.5, 0.5, 0.0], [0.6, 0.2, 0.2], [0.1, 0.8, 0.1]])

  def q_table(policy):
    q_children = jnp.asarray(leaf)  # [2, 3]
    v_children = jnp.sum(policy[1:] * q_children, 1)
    q_root = jnp.array([v_children[0], v_children[1], 0.0])
    return jnp.concatenate([q_root[None], q_children])  # [3 states, 3 actions]

  q_pi, q_mu = q_table(pi), q_table(mu)
  adv_mu = rewards.tabular_advantages(q_mu, policy=mu)
  occupancy = jnp.array([1.0, pi[0, 0], pi[0, 1]])  # d^pi: root, then its children
  alpha = 1.5

  def root_value(lr):
    new = rewards.npg_update(pi, q_pi, adv_mu, lr, alpha)
    return float(rewards.policy_value(new, q_table(new))[0])

  g = 1e-3
  slope = (root_value(g) - root_value(-g)) / (2 * g)
  mass = float(occupancy.sum())
  second_moment = rewards.alignment(pi, q_pi, q_pi, mu=pi, state_weights=occupancy)
  align = rewards.alignment(pi, q_mu, q_pi, mu=mu, state_weights=occupancy)
  np.testing.assert_allclose(slope, mass * (float(second_moment) + alpha * float(align)),
                             rtol=1e-3)
  # Distinguishability of the same prover is a separate, non-negative term.
  assert float(rewards.distinguishability(pi, q_mu, mu=mu, state_weights=occupancy)) > 0
  # The same numbers as occupancy sums, and the first-order gain in closed form.
  dist_sum, align_sum = theory_lib.occupancy_terms(pi, q_mu, q_pi, occupancy, mu=mu)
  np.testing.assert_allclose(align_sum, mass * float(align), rtol=1e-5)
  np.testing.assert_allclose(
      dist_sum, mass * float(rewards.distinguishability(pi, q_mu, mu=mu,
                                                        state_weights=occupancy)), rtol=1e-5)
  np.testing.assert_allclose(theory_lib.occupancy_terms(pi, q_pi, q_pi, occupancy, mu=pi)[1],
                             mass * float(second_moment), rtol=1e-5)
  for lr in (1.0, 0.5):
    first_order = theory_lib.npg_first_order_gain(pi, q_pi, adv_mu, lr, alpha, occupancy)
    np.testing.assert_allclose(first_order, lr * slope, rtol=1e-3)
    np.testing.assert_allclose(
        first_order, lr * mass * (float(second_moment) + alpha * float(align)), rtol=1e-5)


def test_occupancy_terms_on_the_hand_state():
  # One state visited twice: twice the hand example's terms (0.11, 0.06).
  dist, align = theory_lib.occupancy_terms(PI, Q_MU, Q_PI, jnp.array([2.0]), mu=MU)
  np.testing.assert_allclose(dist, 0.22, rtol=1e-5)
  np.testing.assert_allclose(align, 0.12, rtol=1e-5)
  # A per-state constant in A^mu drops out of the first-order gain: 0.04 + 2 * 0.06.
  for adv_mu in (rewards.tabular_advantages(Q_MU, policy=MU), Q_MU):
    np.testing.assert_allclose(theory_lib.npg_first_order_gain(PI, Q_PI, adv_mu, 0.5, 2.0,
                                                               jnp.array([1.0])),
                               0.5 * (0.04 + 2 * 0.06), rtol=1e-5)


def test_sibling_terms_by_hand():
  # Parent 0: children A^mu = [0.3, -0.1, 0.1], A^pi = [0.2, 0.0, -0.2].
  # Parent 2: children A^mu = [0.5, -0.5], A^pi = [1.0, -1.0]. Parent 1 has no child.
  group = np.array([0, 2, 0, 0, 2])
  a_mu = np.array([0.3, 0.5, -0.1, 0.1, -0.5])
  a_pi = np.array([0.2, 1.0, 0.0, -0.2, -1.0])
  dist, align = theory_lib.sibling_terms(a_mu, a_pi, group, 3)
  var0 = np.var([0.3, -0.1, 0.1])  # population variance
  np.testing.assert_allclose(dist, (var0 + 0.25) / 2, rtol=1e-12)
  np.testing.assert_allclose(align, ((0.06 - 0.02) / 3 + 0.5) / 2, rtol=1e-12)
  # A raw (uncentred) mean: A^pi with a non-zero sample mean makes alignment exceed
  # distinguishability for mu = pi.
  shifted = np.array([0.3, 0.0, 0.1, 0.2, 0.0])
  d_self, a_self = theory_lib.sibling_terms(shifted, shifted, np.array([0, 1, 0, 0, 1]), 2)
  assert a_self > d_self
  nan_dist, nan_align = theory_lib.sibling_terms(np.zeros(0), np.zeros(0),
                                                 np.zeros(0, np.int64), 0)
  assert np.isnan(nan_dist) and np.isnan(nan_align)


def test_group_mean():
  got = theory_lib.group_mean(np.array([1.0, 2.0, 4.0]), np.array([1, 1, 3]), 4)
  np.testing.assert_array_equal(got, [0.0, 1.5, 0.0, 4.0])
