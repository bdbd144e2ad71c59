"""Step advantages under a prover and the effective reward.

ArXiv 2410.08146, Sec. 3 and its Theorem 3.1.

Shapes: `B` is the batch of responses, `H` the step axis (padded to a bucket;
`step_mask` marks real steps). Step `h` (0-based here) is the paper's step
`h + 1`, so `q_steps[:, h]` is `Q^mu(s_{h+1}, a_{h+1})`, the prover's value of the
prefix that ends with step h.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def step_advantages(q_steps: jax.Array, q_question: jax.Array,
                    step_mask: jax.Array) -> jax.Array:
  """Progress of every step under a prover: A_h = q_h - q_{h-1}, with q_0 = Q(question).

  The first step's baseline is the prover's value of the question-only prefix
  (arXiv 2410.08146, Sec. 3): without it the first step would carry its full value,
  not its progress, and a PAV-RL policy would be paid for any first step.

  Args:
    q_steps: [B, H] prover value after each step (Q^mu of the prefix ending with
      step h), e.g. a verifier's prediction or `bok_q` of one.
    q_question: [B] prover value of the question alone.
    step_mask: [B, H] bool/0-1, real steps. It must be a *prefix* mask (steps
      0..n_b-1 real, the rest padding): step h is differenced against column
      h - 1, so a hole in the middle would make the next step's baseline a
      padding value.

  Returns:
    [B, H] advantages, 0 where `step_mask` is false (whatever `q_steps` holds there).
  """
  q_steps = jnp.asarray(q_steps)
  q_question = jnp.asarray(q_question, q_steps.dtype)
  prev = jnp.concatenate([q_question[:, None], q_steps[:, :-1]], axis=1)  # [B, H]
  return jnp.where(jnp.asarray(step_mask, bool), q_steps - prev, 0.0)


def effective_reward(q_pi: jax.Array, adv_mu: jax.Array, alpha: float | jax.Array,
                     mask: jax.Array | None = None) -> jax.Array:
  """Effective reward r_h = Q^pi(s_h, a_h) + alpha * A^mu(s_h, a_h) (arXiv 2410.08146, Sec. 3).

  Used to rank beam candidates (section 5). For RL only the `alpha * A^mu` part is
  a per-step reward; see `token_rewards` (Eq. 5).

  Args:
    q_pi: [..] base-policy value of each step (prefix).
    adv_mu: [..] prover advantage of each step.
    alpha: weight of the advantage (paper: 0.5 for search, 3-5 for RL).
    mask: optional [..] bool; masked entries are set to 0.

  Returns:
    [..] effective reward.
  """
  out = jnp.asarray(q_pi) + alpha * jnp.asarray(adv_mu)
  return out if mask is None else jnp.where(jnp.asarray(mask, bool), out, 0.0)


def q_bonus_reward(q_pi: jax.Array, q_mu: jax.Array, alpha: float | jax.Array,
                   mask: jax.Array | None = None) -> jax.Array:
  """The paper's negative control Q^pi + alpha * Q^mu (App. G): a *value*, not progress.

  Rewarding Q^mu instead of A^mu pays a step for where it stands, not for how
  far it moved, so RL learns to emit trivial high-value first steps and
  collapses. Kept to reproduce that failure, not for use.

  Args:
    q_pi: [..] base-policy value of each step.
    q_mu: [..] prover value of each step.
    alpha: weight of the bonus.
    mask: optional [..] bool; masked entries are set to 0.

  Returns:
    [..] Q^pi + alpha * Q^mu.
  """
  return effective_reward(q_pi, q_mu, alpha, mask)
