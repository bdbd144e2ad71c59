"""Policy-gradient advantage estimators (a registry) and the RL loss.

Shapes: B response rows (G consecutive rows per prompt), T token positions. An
estimator turns per-token returns (`rewards.token_rewards`, Eq. 5) into per-token
advantages by subtracting a baseline that does not depend on the token's action:

  reinforce_value  the learned token-level value baseline V(s_t) (the paper's);
  rloo             leave-one-out mean outcome of the prompt's other G - 1 rows;
  group_mean       the mean outcome of the prompt's G rows (GRPO without the std);
  none             no baseline (plain REINFORCE).

The group baselines use the outcome Rex only: the dense `alpha * A^mu` part is
already centred (an advantage), and averaging it across rows would mix steps
of different lengths.

Add an estimator with `@register("name")`; configs select it by name
(`rl.estimator`).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

# fn(returns [B, T], mask [B, T], outcome [B], values [B, T] | None, group_size) -> [B, T]
Estimator = Callable[..., jax.Array]
ESTIMATORS: dict[str, Estimator] = {}


def register(name: str) -> Callable[[Estimator], Estimator]:
  def deco(fn: Estimator) -> Estimator:
    if name in ESTIMATORS:
      raise ValueError(f"estimator {name!r} is already registered")
    ESTIMATORS[name] = fn
    return fn
  return deco


def get(name: str) -> Estimator:
  if name not in ESTIMATORS:
    raise KeyError(f"unknown estimator {name!r}; registered: {sorted(ESTIMATORS)}")
  return ESTIMATORS[name]


def _groups(x: jax.Array, group_size: int) -> jax.Array:
  if x.shape[0] % group_size:
    raise ValueError(f"{x.shape[0]} rows are not a multiple of group_size={group_size}")
  return x.reshape(-1, group_size)


@register("none")
def no_baseline(returns, mask, outcome, values, group_size):
  del outcome, values, group_size
  return returns * mask


@register("reinforce_value")
def value_baseline(returns, mask, outcome, values, group_size):
  del outcome, group_size
  if values is None:
    raise ValueError("reinforce_value needs the value head's predictions")
  return (returns - jax.lax.stop_gradient(values)) * mask


@register("group_mean")
def group_mean_baseline(returns, mask, outcome, values, group_size):
  del values
  base = jnp.repeat(_groups(outcome, group_size).mean(1), group_size)
  return (returns - base[:, None]) * mask


@register("rloo")
def leave_one_out_baseline(returns, mask, outcome, values, group_size):
  del values
  if group_size < 2:
    raise ValueError("rloo needs group_size >= 2 samples per prompt")
  g = _groups(outcome, group_size)
  base = ((g.sum(1, keepdims=True) - g) / (group_size - 1)).reshape(-1)
  return (returns - base[:, None]) * mask


def masked_mean(x: jax.Array, mask: jax.Array) -> jax.Array:
  """Mean over masked entries; 0 (finite, zero gradient) when the mask is empty."""
  return jnp.sum(x * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def kl_to_reference(logp: jax.Array, ref_logp: jax.Array, clamp: float) -> jax.Array:
  """Per-token KL(pi || ref) estimate exp(-d) - 1 + d, d = logp - ref_logp clamped.

  Non-negative and unbiased for sampled tokens; the clamp keeps one runaway
  token from dominating the loss.
  """
  d = jnp.clip(logp - ref_logp, -clamp, clamp)
  return jnp.exp(-d) - 1.0 + d


def policy_loss(logp: jax.Array, adv: jax.Array, mask: jax.Array, *,
                ref_logp: jax.Array | None = None, kl_coef: float = 0.0,
                log_ratio_clamp: float = 10.0) -> tuple[jax.Array, dict[str, jax.Array]]:
  """REINFORCE loss -E[adv * log pi] (+ kl_coef * KL to the reference), per token.

  Token means over `mask`; an empty mask (every row excluded, e.g. all truncated)
  gives a finite zero loss.
  """
  pg = -masked_mean(jax.lax.stop_gradient(adv) * logp, mask)
  stats = {"rl/pg_loss": pg}
  loss = pg
  if ref_logp is not None and kl_coef:
    kl = masked_mean(kl_to_reference(logp, ref_logp, log_ratio_clamp), mask)
    loss = loss + kl_coef * kl
    stats["rl/kl"] = kl
  return loss, stats
