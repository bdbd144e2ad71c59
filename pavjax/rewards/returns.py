"""Per-token REINFORCE returns for PAV-RL, Eq. 5 (arXiv 2410.08146, Sec. 5, App. E).

Eq. 5 weights step h's log-prob gradient by the outcome return *plus step h's
own* `alpha * A^mu(s_h, a_h)`. It is NOT the usual dense-reward return
`Rex + alpha * sum_{j >= h} A^mu_j`: with undiscounted sums that telescopes to
`Rex + alpha * (Q^mu(s_H, a_H) - V^mu(s_h))`, a function of the state *before*
step h (a baseline, zero in expectation) plus the final outcome, so the step's
own progress drops out. So do not feed step rewards into a discounted
reward-to-go as PPO pipelines do; `tests/rewards/test_returns.py` shows the
difference on two responses that share a prefix.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def token_rewards(outcome: jax.Array, step_adv: jax.Array, step_ids: jax.Array,
                  alpha: float | jax.Array) -> jax.Array:
  """Per-token return of Eq. 5: Rex + alpha * A^mu of the token's own step.

  Every token of step h shares the step's advantage (the paper scores steps, not
  tokens; spreading it over tokens would make long steps count more). A value
  baseline, KL penalty or group normalization is subtracted by the caller.

  Args:
    outcome: [B] outcome reward Rex of each response (in {0, 1} for the paper).
    step_adv: [B, H] prover advantage of each step (0 on padded steps, as
      `step_advantages` returns).
    step_ids: [B, T] int, index of the step each response token belongs to; -1
      for prompt and padding tokens. Ids outside [0, H) are treated like -1.
    alpha: weight of the advantage term (paper: 5.0 for 2B, 3.0 for 9B).

  Returns:
    [B, T] per-token returns, 0 where `step_ids` is not a valid step.
  """
  step_adv = jnp.asarray(step_adv)
  step_ids = jnp.asarray(step_ids)
  num_steps = step_adv.shape[1]
  valid = (step_ids >= 0) & (step_ids < num_steps)  # [B, T]
  # Gather with clipped ids; invalid positions are zeroed below.
  adv_tok = jnp.take_along_axis(step_adv, jnp.clip(step_ids, 0, num_steps - 1), axis=1)
  ret = jnp.asarray(outcome, step_adv.dtype)[:, None] + alpha * adv_tok  # [B, T]
  return jnp.where(valid, ret, 0.0)
