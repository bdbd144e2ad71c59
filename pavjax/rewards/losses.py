"""Verifier losses against Monte-Carlo targets, and the balanced batch sampler.

ArXiv 2410.08146, Sec. 4.2 and App. D.

The paper trains the Q^pi verifier with soft-label binary cross-entropy against
Q_hat, on batches balanced between Q_hat < 0.5 and Q_hat >= 0.5 (most seed
prefixes of a weak policy have Q_hat near 0, so unbalanced batches teach the
model to say 0). Losses are named pure functions in `Q_LOSSES` so a config picks
one by name.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np


def _weights(shape, dtype, mask, weights) -> jax.Array:
  w = jnp.ones(shape, dtype)
  if mask is not None:
    w = w * jnp.asarray(mask, dtype)
  if weights is not None:
    w = w * jnp.asarray(weights, dtype)
  return w


def _weighted_mean(values: jax.Array, w: jax.Array) -> jax.Array:
  total = jnp.sum(w)
  # An all-masked batch (e.g. a padded tail) gives exactly 0 with zero gradients,
  # not 0/0 = NaN that a NaN guard would stop the run on.
  return jnp.sum(values * w) / jnp.where(total > 0, total, 1.0)


def soft_bce_loss(logits: jax.Array, targets: jax.Array, mask: jax.Array | None = None,
                  weights: jax.Array | None = None) -> jax.Array:
  """Weighted mean of -(t log sigmoid(z) + (1 - t) log sigmoid(-z)).

  `log_sigmoid` keeps it finite for any finite logit (log(sigmoid(z)) would give
  log(0) = -inf at z = -100 in float32) and its gradient is sigmoid(z) - t.
  Note that with soft targets the minimum is the target's entropy, not 0.

  Args:
    logits: [..] verifier logits of Q.
    targets: [..] Q_hat in [0, 1].
    mask: optional [..] bool/0-1, which entries count.
    weights: optional [..] non-negative per-entry weights (e.g. MC counts).

  Returns:
    [] float loss; 0 if no entry has positive weight.
  """
  logits = jnp.asarray(logits)
  targets = jnp.asarray(targets, logits.dtype)
  per = -(targets * jax.nn.log_sigmoid(logits) + (1.0 - targets) * jax.nn.log_sigmoid(-logits))
  return _weighted_mean(per, _weights(logits.shape, logits.dtype, mask, weights))


def sigmoid_mse_loss(logits: jax.Array, targets: jax.Array, mask: jax.Array | None = None,
                     weights: jax.Array | None = None) -> jax.Array:
  """Weighted mean of (sigmoid(z) - t)^2, the squared-error alternative to `soft_bce_loss`.

  Args and returns as in `soft_bce_loss`.
  """
  logits = jnp.asarray(logits)
  targets = jnp.asarray(targets, logits.dtype)
  per = jnp.square(jax.nn.sigmoid(logits) - targets)
  return _weighted_mean(per, _weights(logits.shape, logits.dtype, mask, weights))


# config.verifier.loss -> loss function(logits, targets, mask=None, weights=None).
Q_LOSSES: dict[str, Callable[..., jax.Array]] = {
    "bce": soft_bce_loss,
    "mse": sigmoid_mse_loss,
}


def balanced_indices(rng: np.random.Generator, q_hat: np.ndarray, batch_size: int,
                     threshold: float = 0.5) -> np.ndarray:
  """Host-side indices of a batch half from Q_hat < threshold, half from Q_hat >= threshold.

  Each side is drawn without replacement when it holds enough entries and with
  replacement otherwise (a rare side is repeated rather than under-represented).
  For an odd batch the extra slot goes to a side picked by a fair coin. If one
  side is empty the whole batch comes from the other (graceful fallback, e.g. a
  policy that never succeeds on early data).

  Args:
    rng: numpy Generator (host-side randomness; not a jax key).
    q_hat: [N] Monte-Carlo targets.
    batch_size: number of indices to return.
    threshold: the split point (paper: 0.5).

  Returns:
    [batch_size] int64 indices into q_hat, in random order.

  Raises:
    ValueError: if q_hat is empty or batch_size is negative.
  """
  q_hat = np.asarray(q_hat).reshape(-1)
  if q_hat.size == 0:
    raise ValueError("balanced_indices needs at least one target")
  if batch_size < 0:
    raise ValueError(f"batch_size must be >= 0, got {batch_size}")
  low = np.flatnonzero(q_hat < threshold)
  high = np.flatnonzero(q_hat >= threshold)
  if low.size == 0 or high.size == 0:
    sizes = (batch_size, 0) if low.size else (0, batch_size)
  else:
    n_low = batch_size // 2 + (batch_size % 2) * int(rng.integers(2))
    sizes = (n_low, batch_size - n_low)
  parts = []
  for pool, n in zip((low, high), sizes):
    if n:
      parts.append(rng.choice(pool, size=n, replace=n > pool.size))
  out = np.concatenate(parts) if parts else np.zeros(0, np.int64)
  return rng.permutation(out).astype(np.int64)
