"""MADE-style masked MLP: the paper's didactic policy (Sec. 3.3, App. B: "3x128 MLP").

The whole sequence is one input vector: one-hot tokens at relative positions
0 .. L-1 (L = `max_len`), flattened to [L * V]. Masked dense layers make the output
block at position r (the logits that predict token r + 1, and the value after
token r) a function of the tokens at positions <= r only, so one forward pass
gives every position's next-token logits, exactly like the causal transformer.

Degrees (deterministic, no RNG; Germain et al. 2015 draw them at random):
  * input block r (the one-hot of token r) has degree r;
  * hidden unit j of a layer of width H has degree (j * L) // H, which spreads the
    units evenly over 0 .. L-1 (H / L units per degree when L divides H);
  * output block r (logits and value) has degree r.
A connection a -> b exists iff degree(a) <= degree(b). MADE's usual strict
inequality at the output is not needed: output r predicts token r + 1, so
reading token r itself is allowed (the next-token shift does the job).

Decoding keeps a `TokenCache` and recomputes the network from each row's whole
prefix every step: at the didactic horizon (~16 tokens) this costs about what one
more matmul would, and it keeps the cache a plain buffer of tokens.

Dimension letters: B batch, T query length, L positions (max_len), V vocab,
H hidden width.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from pavjax.models.token_cache import TOKEN_AXES, TokenCache
from pavjax.models.transformer import ModelOutput

Array = jax.Array

# Logit of an id outside `MadeConfig.action_ids`: finite, so log-softmax stays finite
# (a 0 * -inf in a masked loss or an entropy would be NaN), and exp of it minus any
# real logit is 0 in float32: such an id is never sampled and holds no probability.
MASKED_LOGIT = -1e9


@dataclasses.dataclass(frozen=True)
class MadeConfig:
  """Static MADE hyper-parameters (hashable, so it can key jit caches)."""

  vocab_size: int
  max_len: int  # L: positions the input covers; longer sequences are rejected
  hidden_sizes: tuple[int, ...] = (128, 128, 128)
  dtype: str = "float32"  # compute dtype; parameters stay float32
  # Ids the policy may emit (the task's action vocabulary, `Task.action_ids`); the
  # logits of every other id (pad, BOS) are pushed to MASKED_LOGIT, so the softmax
  # covers these ids only. None: every id. Parameters do not depend on it.
  action_ids: tuple[int, ...] | None = None

  @classmethod
  def from_config(cls, model_cfg: Any, vocab_size: int,
                  action_ids: tuple[int, ...] | None = None) -> "MadeConfig":
    if action_ids is not None:
      action_ids = tuple(sorted(int(i) for i in action_ids))
      if not action_ids or action_ids[0] < 0 or action_ids[-1] >= vocab_size:
        raise ValueError(f"action ids {action_ids} are not a non-empty subset of "
                         f"0 .. {vocab_size - 1}")
    return cls(vocab_size=vocab_size, max_len=int(model_cfg.max_len),
               hidden_sizes=tuple(int(h) for h in model_cfg.hidden_sizes),
               dtype=str(model_cfg.dtype), action_ids=action_ids)

  def action_mask(self) -> np.ndarray | None:
    """[V] bool, True on the ids the policy may emit (None: every id)."""
    if self.action_ids is None:
      return None
    mask = np.zeros(self.vocab_size, bool)
    mask[list(self.action_ids)] = True
    return mask

  @property
  def compute_dtype(self):
    return jnp.dtype(self.dtype)

  def num_params(self, include_embedding: bool = True) -> int:
    """Stored parameters, masked-out entries included (they cost FLOPs all the same).

    `include_embedding` is accepted for symmetry with `TransformerConfig` and
    ignored: the input layer is this model's embedding and is always counted.
    """
    del include_embedding
    lv, hs = self.max_len * self.vocab_size, self.hidden_sizes
    total = lv * hs[0] + hs[0]
    total += sum(a * b + b for a, b in zip(hs[:-1], hs[1:]))
    return total + hs[-1] * lv + lv + hs[-1] * self.max_len + 1


def hidden_degrees(width: int, max_len: int) -> np.ndarray:
  """[width] degree of each hidden unit: evenly spread over 0 .. max_len-1."""
  return (np.arange(width) * max_len) // width


@functools.lru_cache(maxsize=None)
def made_masks(max_len: int, hidden_sizes: tuple[int, ...]) -> tuple[np.ndarray, ...]:
  """Connectivity masks, input -> hidden_1 -> ... -> output (float32 0/1).

  Returns [L, H_1] (input position -> unit), then [H_k, H_k+1] per hidden pair,
  then [H_last, L] (unit -> output position).
  """
  positions = np.arange(max_len)
  degrees = [hidden_degrees(h, max_len) for h in hidden_sizes]
  masks = [positions[:, None] <= degrees[0][None, :]]
  masks += [a[:, None] <= b[None, :] for a, b in zip(degrees[:-1], degrees[1:])]
  masks.append(degrees[-1][:, None] <= positions[None, :])
  return tuple(m.astype(np.float32) for m in masks)


def _masked_init(mask: np.ndarray, gain: float, fan_in_axes: tuple[int, ...]):
  """Normal init with std gain / sqrt(fan-in), fan-in counted through the mask.

  A unit of low degree sees few inputs; scaling by its own fan-in (not the
  layer's full width) keeps every unit's pre-activation near unit scale. Masked
  entries start at zero (they never receive gradient either).
  """
  fan_in = np.maximum(mask.sum(axis=fan_in_axes, keepdims=True), 1.0)
  scale = jnp.asarray(mask * gain / np.sqrt(fan_in))

  def init(key, shape, dtype=jnp.float32):
    return (jax.random.normal(key, shape, dtype) * scale).astype(dtype)  # scale broadcasts

  return init


def _param(module: nn.Module, name: str, shape, axes, init):
  return module.param(name, nn.with_logical_partitioning(init, axes), shape, jnp.float32)


class Made(nn.Module):
  """The MADE policy / verifier network; same call signature as `Transformer`.

  Call modes:
    * no cache: tokens [B, T] right-padded from position 0 (T <= max_len);
    * with a `TokenCache`: the T new tokens are written at `cache.index` and
      position `slot - cache.start[b]` of each row is what every output reads.
  """

  cfg: MadeConfig

  @nn.compact
  def __call__(self, tokens: Array, *, cache: TokenCache | None = None,
               logits: bool = True, values: bool = False,
               detach_values: bool = False, logits_at: Array | None = None,
               hidden: bool = False) -> ModelOutput:
    """Runs the masked trunk and the requested heads.

    Arguments mean what they mean for `Transformer.__call__`: `detach_values`
    stops the value head's gradient at the trunk, `logits_at` [B, R] restricts
    the LM head to those query positions (indices into the T new tokens).

    `hidden=True` is refused: the MADE has one hidden vector per row, not one per
    position, and no `lm_head` method. Its input is already a one-hot [B, L, V],
    so its losses take the full logits (`training.token_stats` does so).
    """
    if hidden:
      raise ValueError("Made has no per-position hidden states (hidden=True); "
                       "use its logits")
    cfg = self.cfg
    dt = cfg.compute_dtype
    length, vocab, hs = cfg.max_len, cfg.vocab_size, cfg.hidden_sizes
    b, t = tokens.shape
    if cache is None:
      if t > length:
        raise ValueError(f"MADE input of {t} tokens exceeds model.max_len={length}")
      # Padding lands at positions after every query: the masks hide it.
      rel = jnp.pad(tokens.astype(jnp.int32), ((0, 0), (0, length - t)))  # [B, L]
      query = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
      new_cache = None
    else:
      new_cache = cache.write(tokens)
      new_cache = new_cache.replace(
          tokens=nn.with_logical_constraint(new_cache.tokens, TOKEN_AXES))
      rel = new_cache.relative(length)  # [B, L]
      slots = cache.index + jnp.arange(t, dtype=jnp.int32)  # [T]
      # Left-pad query slots (negative positions) have no output of their own and
      # are never read; they borrow position 0's. Valid rows stay below max_len
      # because config validation keeps prompt + response within it.
      query = jnp.clip(slots[None, :] - cache.start[:, None], 0, length - 1)  # [B, T]

    masks = made_masks(length, hs)
    relu_gain = math.sqrt(2.0)
    w_in = _param(self, "w_in", (length, vocab, hs[0]), ("length", "vocab", "mlp"),
                  _masked_init(masks[0][:, None, :], relu_gain, (0, 1)))
    b_in = _param(self, "b_in", (hs[0],), ("mlp",), nn.initializers.zeros)
    x = jax.nn.one_hot(rel, vocab, dtype=dt)  # [B, L, V]
    w = w_in * masks[0][:, None, :]
    h = jax.nn.relu(jnp.einsum("BLV,LVH->BH", x, w.astype(dt)) + b_in.astype(dt))
    h = nn.with_logical_constraint(h, ("batch", "mlp"))
    for k, mask in enumerate(masks[1:-1], start=1):
      wk = _param(self, f"w_{k}", mask.shape, ("embed", "mlp"),
                  _masked_init(mask, relu_gain, (0,)))
      bk = _param(self, f"b_{k}", (mask.shape[1],), ("mlp",), nn.initializers.zeros)
      h = jax.nn.relu(jnp.einsum("BH,HG->BG", h, (wk * mask).astype(dt)) + bk.astype(dt))
      h = nn.with_logical_constraint(h, ("batch", "mlp"))
    out_mask = masks[-1]  # [H, L]

    out_logits = out_values = None
    if logits or self.is_initializing():
      w_out = _param(self, "w_out", (hs[-1], length, vocab), ("embed", "length", "vocab"),
                     _masked_init(out_mask[:, :, None], 1.0, (0,)))
      b_out = _param(self, "b_out", (length, vocab), ("length", "vocab"), nn.initializers.zeros)
      at = query
      if logits_at is not None:
        at = jnp.take_along_axis(query, logits_at.astype(jnp.int32), axis=1)  # [B, R]
      # Every position's block is computed, then the read ones are picked: gathering
      # per-row weight blocks instead ([B, R, H, V]) would move more than it saves.
      full = jnp.einsum("BH,HLV->BLV", h, (w_out * out_mask[:, :, None]).astype(dt))
      full = full.astype(jnp.float32) + b_out  # [B, L, V]
      allowed = cfg.action_mask()
      if allowed is not None:
        full = jnp.where(jnp.asarray(allowed), full, MASKED_LOGIT)
      out_logits = jnp.take_along_axis(full, at[:, :, None], axis=1)  # [B, T, V]
      out_logits = nn.with_logical_constraint(out_logits, ("batch", "length", "vocab"))
    if values or self.is_initializing():
      value_w = _param(self, "value_w", (hs[-1], length), ("embed", "length"),
                       nn.initializers.zeros)
      value_b = _param(self, "value_b", (), (), nn.initializers.zeros)
      hv = jax.lax.stop_gradient(h) if detach_values else h
      all_values = jnp.einsum("BH,HL->BL", hv, (value_w * out_mask).astype(dt))
      all_values = all_values.astype(jnp.float32) + value_b  # [B, L]
      out_values = jnp.take_along_axis(all_values, query, axis=1)  # [B, T]
    return ModelOutput(out_logits, out_values, new_cache)
