"""Monte-Carlo targets, error bars and the Best-of-K transform."""

import jax
import jax.numpy as jnp
import numpy as np

from pavjax import rewards
from pavjax.tasks import planted


def test_mc_q_hand_values_and_counts_kept():
  out = jax.jit(rewards.mc_q)(jnp.array([3, 0, 5, 0]), jnp.array([4, 0, 5, 20]))
  np.testing.assert_allclose(out.q, [0.75, 0.0, 1.0, 0.0])
  np.testing.assert_array_equal(out.counts, [4, 0, 5, 20])
  grad = jax.grad(lambda s: rewards.mc_q(s, jnp.array([4.0, 0.0])).q.sum())(jnp.array([1.0, 0.0]))
  np.testing.assert_allclose(grad, [0.25, 0.0])  # no NaN leaks from the 0/0 entry


def test_binomial_std_and_wilson_hand_values():
  np.testing.assert_allclose(rewards.binomial_std(jnp.array([0.75, 0.3]), jnp.array([4, 0])),
                             [np.sqrt(0.75 * 0.25 / 4), 0.5], rtol=1e-6)
  z2 = 1.96 ** 2
  # 0 of 20: centre == half-width == (z^2 / 2n) / (1 + z^2 / n).
  c = (z2 / 40) / (1 + z2 / 20)
  low, high = rewards.wilson_interval(jnp.array([0.0, 10.0, 0.0]), jnp.array([20, 20, 0]))
  np.testing.assert_allclose(low[0], 0.0, atol=1e-7)
  np.testing.assert_allclose(high[0], 2 * c, rtol=1e-5)
  half = 1.96 * np.sqrt(0.25 / 20 + z2 / 1600) / (1 + z2 / 20)
  np.testing.assert_allclose([low[1], high[1]], [0.5 - half, 0.5 + half], rtol=1e-5)
  np.testing.assert_array_equal([low[2], high[2]], [0.0, 1.0])


def test_mc_q_matches_planted_exact_value():
  prover = planted.ProceduralProver((3, 6, 0, 3, 5), 15, gamma=10.0, length=10)
  prefix = (3, 6)
  n = 4000
  outcomes = [planted.contains_planted(r, prover.planted, prover.eos, prover.length)
              for r in prover.sample(np.random.default_rng(0), n, prefix=prefix)]
  target = rewards.mc_q(jnp.array(sum(outcomes)), jnp.array(n))
  exact = prover.value(prefix)
  assert abs(float(target.q) - exact) <= 4 * float(rewards.binomial_std(exact, n))
  low, high = rewards.wilson_interval(jnp.array(sum(outcomes)), jnp.array(n), z=4.0)
  assert float(low) <= exact <= float(high)


def test_bok_q_closed_form_matches_simulation():
  rng = np.random.default_rng(0)
  n = 20000
  for q in (0.05, 0.3, 0.7):
    for k in (1, 2, 4, 8):
      sim = np.mean(np.any(rng.random((n, k)) < q, axis=1))
      exact = float(rewards.bok_q(q, k))
      np.testing.assert_allclose(exact, 1 - (1 - q) ** k, rtol=1e-5)
      assert abs(sim - exact) <= 4 * np.sqrt(exact * (1 - exact) / n) + 1e-12, (q, k)


def test_bok_q_identity_monotone_and_edges():
  q = jnp.array([0.0, 1e-3, 0.05, 0.3, 0.7, 0.999, 1.0])
  # k = 1 is the base policy itself (up to float rounding of expm1/log1p).
  np.testing.assert_allclose(rewards.bok_q(q, 1), q, rtol=1e-6, atol=0)
  ks = jnp.arange(1, 17)
  table = jax.jit(rewards.bok_q)(q[:, None], ks[None, :])  # [7, 16], k as an array
  steps = np.diff(np.asarray(table), axis=1)
  assert np.all(steps[1:4] > 0)  # strictly better with more samples ...
  assert np.all(steps >= 0)  # ... until (1 - q)^K underflows 1 in float32 (q >= 0.7)
  np.testing.assert_array_equal(table[0], 0.0)
  np.testing.assert_array_equal(table[-1], 1.0)
  np.testing.assert_array_equal(rewards.bok_q(q, 0), 0.0)
  # Small q keeps relative precision where 1 - (1 - q)**k is 0 in float32.
  np.testing.assert_allclose(rewards.bok_q(jnp.float32(1e-8), 3), 3e-8, rtol=1e-5)
  grads = jax.grad(lambda x: rewards.bok_q(x, 4).sum())(q)
  assert np.all(np.isfinite(grads))
  np.testing.assert_allclose(grads[:-1], 4 * (1 - q[:-1]) ** 3, rtol=1e-5)
