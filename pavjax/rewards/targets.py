"""Monte-Carlo value targets and the Best-of-K prover transform.

ArXiv 2410.08146, Sec. 3; Sec. 4.2, App. D.

`Q_hat` of a prefix is the mean outcome of `n_mc` completions sampled from the
base policy after it. Counts travel with the estimate so that losses can weight
prefixes by how much data they rest on and diagnostics can put error bars on
them. Everything here is elementwise `jnp` maths: any leading shape, jit-friendly.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


class MCTarget(NamedTuple):
  """A Monte-Carlo estimate of Q together with the number of rollouts behind it.

  A NamedTuple is a pytree, so it passes through `jax.jit` and `jax.device_get`
  unchanged.

  Attributes:
    q: [..] float, mean outcome of the completions (0 where there are none).
    counts: [..] the number of completions, as given.
  """

  q: jax.Array
  counts: jax.Array


def mc_q(successes: jax.Array, counts: jax.Array) -> MCTarget:
  """Q_hat = successes / counts, elementwise.

  Args:
    successes: [..] number (or summed reward in [0, 1]) of correct completions.
    counts: [..] number of completions; 0 means "no data".

  Returns:
    `MCTarget(q, counts)`. Where `counts == 0`, `q` is 0 rather than NaN so a
    masked-out entry cannot poison a weighted loss (weight it by `counts > 0`).
  """
  successes = jnp.asarray(successes, jnp.result_type(float))
  counts = jnp.asarray(counts)
  has_data = counts > 0
  # Divide by a safe count: a 0/0 in the unselected branch of `where` would
  # still give NaN gradients.
  safe = jnp.where(has_data, counts, 1).astype(successes.dtype)
  return MCTarget(q=jnp.where(has_data, successes / safe, 0.0), counts=counts)


def binomial_std(q: jax.Array, counts: jax.Array) -> jax.Array:
  """Standard error sqrt(q (1 - q) / n) of a Monte-Carlo mean of n Bernoulli outcomes.

  Args:
    q: [..] estimated (or true) success probability.
    counts: [..] number of rollouts n.

  Returns:
    [..] standard error. With no rollouts (n = 0) nothing is known, so this
    returns 0.5, the largest standard deviation a single Bernoulli can have,
    instead of an infinity that would turn `0 * std` into NaN downstream.
  """
  q = jnp.asarray(q, jnp.result_type(float))
  counts = jnp.asarray(counts)
  safe = jnp.where(counts > 0, counts, 1).astype(q.dtype)
  var = jnp.clip(q * (1.0 - q), 0.0, None) / safe
  return jnp.where(counts > 0, jnp.sqrt(var), 0.5)


def wilson_interval(successes: jax.Array, counts: jax.Array,
                    z: float = 1.96) -> tuple[jax.Array, jax.Array]:
  """Wilson score interval for a binomial proportion.

  Preferred over the normal interval `q +- z * binomial_std` for MC targets: with
  n_mc = 20 rollouts many prefixes have Q_hat = 0 or 1, where the normal
  interval collapses to a point and the Wilson one does not.

  Args:
    successes: [..] number of correct completions.
    counts: [..] number of completions (0 gives the vacuous interval [0, 1]).
    z: normal quantile (1.96 for 95%).

  Returns:
    (low, high), each [..], inside [0, 1].
  """
  successes = jnp.asarray(successes, jnp.result_type(float))
  counts = jnp.asarray(counts)
  n = jnp.where(counts > 0, counts, 1).astype(successes.dtype)
  p = successes / n
  z2 = z * z
  denom = 1.0 + z2 / n
  centre = (p + z2 / (2.0 * n)) / denom
  half = z * jnp.sqrt(jnp.clip(p * (1.0 - p), 0.0, None) / n + z2 / (4.0 * n * n)) / denom
  low = jnp.where(counts > 0, jnp.clip(centre - half, 0.0, 1.0), 0.0)
  high = jnp.where(counts > 0, jnp.clip(centre + half, 0.0, 1.0), 1.0)
  return low, high


def bok_q(q: jax.Array, k: int | jax.Array) -> jax.Array:
  """Q of the Best-of-K prover BoK(pi): 1 - (1 - Q^pi)^K (arXiv 2410.08146, Sec. 3).

  BoK(pi) samples K continuations from pi and keeps a correct one if any, so it
  fails only if all K fail. One model of Q^pi therefore gives A^{BoK} by
  differencing consecutive prefixes (`step_advantages(bok_q(q_steps, k),
  bok_q(q_question, k), mask)`); no second verifier is needed.

  Computed as `-expm1(k * log1p(-q))` while the result is below 1/2, which keeps
  full relative precision for small q (where `1 - (1 - q)**k` cancels
  catastrophically) - the regime Q^pi = O(1/K) in which the paper says BoK
  provers help most. Above 1/2 it uses `1 - exp(.)`: no cancellation there, and
  jax differentiates expm1 as `expm1(z) + 1`, which would round the tiny
  gradient near q = 1 to 0.

  Args:
    q: [..] success probability of pi, in [0, 1].
    k: number of samples (python int or an array broadcastable against q).
      k = 1 returns q (up to a few ulps); k = 0 returns 0.

  Returns:
    [..] success probability of BoK(pi), same float dtype as q.
  """
  q = jnp.asarray(q, jnp.result_type(float))
  # `where`, not `clip`: clip splits the gradient in half at q = 0 exactly.
  q = jnp.where(q < 0.0, 0.0, q)
  k = jnp.asarray(k, q.dtype)
  certain = q >= 1.0
  # log1p(-1) = -inf: keep it out of the computed branch so gradients stay finite.
  q_safe = jnp.where(certain, 0.0, q)
  log_fail = k * jnp.log1p(-q_safe)  # log P(all K fail)
  out = jnp.where(log_fail > -np.log(2.0), -jnp.expm1(log_fail), 1.0 - jnp.exp(log_fail))
  return jnp.where(certain, jnp.where(k > 0, 1.0, 0.0), out)
