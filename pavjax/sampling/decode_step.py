"""What every decode loop does with a step's logits: pick tokens, apply the stop rule."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from pavjax import step_boundary


def choose_tokens(method, logits, keys, live, pad_id: int, stop, boundary, boundary_state):
  """One decode step's tokens and the one stop rule, shared by every decode loop.

  Samples a token per row from `logits` [B, V] with `method` and per-row `keys`;
  rows not `live` emit `pad_id`. A live row stops on a token in `stop` or, with a
  step `boundary` automaton, on the token that completes the step delimiter.
  Returns (tokens [B], their log-probs [B], stops [B], the new boundary state).
  """
  tok = method(logits, keys)
  logp = jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1), tok[:, None], 1)[:, 0]
  tok = jnp.where(live, tok, pad_id)
  is_stop = live & jnp.isin(tok, stop)
  if boundary is not None:
    after, ends_step = step_boundary.advance(boundary, boundary_state, tok)
    is_stop = is_stop | (live & ends_step)
    boundary_state = jnp.where(live, after, boundary_state)
  return tok, logp, is_stop, boundary_state
