"""Top-k selection of beam candidates (arXiv 2410.08146, Sec. 4, App. C)."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def rank_candidates(scores: jax.Array, k: int, valid: jax.Array | None = None) -> jax.Array:
  """Indices of the k highest scores, best first; ties go to the lower index.

  Deterministic tie-breaking keeps beam search reproducible when candidates share a
  score (e.g. identical steps from two parents). NaN scores rank like -inf, and
  -0.0 ties with 0.0 (a plain sort of -scores would put 0.0 first).

  Args:
    scores: [N] candidate scores, e.g. `effective_reward(q_pi, adv_mu, alpha)`.
    k: number to keep (static under jit; 0 <= k <= N).
    valid: optional [N] bool; invalid candidates rank like -inf (after every
      valid finite score; still ordered by index among themselves).

  Returns:
    [k] int32 indices into scores.
  """
  scores = jnp.asarray(scores)
  keys = jnp.where(jnp.isnan(scores), -jnp.inf, scores)
  keys = jnp.where(keys == 0, 0.0, keys)  # canonicalize -0.0 so it ties with 0.0
  if valid is not None:
    keys = jnp.where(jnp.asarray(valid, bool), keys, -jnp.inf)
  # A stable ascending sort of -keys is a descending sort with lower index first on ties.
  return jnp.argsort(-keys, stable=True)[:k].astype(jnp.int32)
