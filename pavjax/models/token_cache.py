"""A fixed-shape token-buffer cache, for models that recompute from the whole prefix.

The MADE policy (`pavjax.models.made`) has no per-token state to keep: each decode
step it reads the row's whole prefix again. Its cache therefore holds the tokens
themselves, in the same left-padded slot layout as `KVCache`, so the sampler's
forking (`repeat`, `gather`, `align_prefixes`) means the same thing for both.
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp

from pavjax.models.kv_cache import shift_slots

# Logical axes of the token buffer, for sharding rules.
TOKEN_AXES = ("batch", "length")


@flax.struct.dataclass
class TokenCache:
  """Tokens written so far, plus where each row's live slots begin.

  Same conventions as `KVCache`: rows are left-padded so every row writes at the
  same `index`; `start[b]` is row b's first real slot, and slot s of row b holds
  position `s - start[b]`. Slots before `start[b]` or at/after `index` hold
  tokens no query may depend on.
  """

  tokens: jax.Array  # [B, S] int32
  start: jax.Array  # [B] int32
  index: jax.Array  # [] int32, next slot to write

  @classmethod
  def create(cls, *, batch: int, size: int, start: jax.Array) -> "TokenCache":
    """An empty buffer of `size` slots per row; `start` [B] as in `KVCache.create`."""
    return cls(tokens=jnp.zeros((batch, size), jnp.int32), start=jnp.asarray(start, jnp.int32),
               index=jnp.zeros((), jnp.int32))

  @property
  def size(self) -> int:
    return self.tokens.shape[1]

  @property
  def batch(self) -> int:
    return self.start.shape[0]

  def write(self, new_tokens: jax.Array) -> "TokenCache":
    """Writes `new_tokens` [B, T] at slot `index` and advances it by T."""
    buf = jax.lax.dynamic_update_slice(self.tokens, new_tokens.astype(jnp.int32),
                                       (jnp.zeros((), jnp.int32), self.index))
    return self.replace(tokens=buf, index=self.index + new_tokens.shape[1])

  def relative(self, length: int) -> jax.Array:
    """[B, length] each row's tokens at positions 0 .. length-1 (slot `start[b] + r`).

    Positions whose slot lies past the buffer read its last slot: they are later
    than every query the buffer can hold, so an autoregressive model ignores them.
    """
    slots = self.start[:, None] + jnp.arange(length, dtype=jnp.int32)[None, :]  # [B, L]
    return jnp.take_along_axis(self.tokens, jnp.minimum(slots, self.size - 1), axis=1)

  def repeat(self, n: int) -> "TokenCache":
    """Prefix forking: row b becomes rows b*n .. b*n+n-1 (no re-prefill)."""
    return self.replace(tokens=jnp.repeat(self.tokens, n, axis=0),
                        start=jnp.repeat(self.start, n, axis=0))

  def gather(self, rows: jax.Array) -> "TokenCache":
    """Keeps rows `rows` [B'] (beam search reorders surviving prefixes)."""
    return self.replace(tokens=jnp.take(self.tokens, rows, axis=0),
                        start=jnp.take(self.start, rows, axis=0))

  def align_prefixes(self, ends: jax.Array, width: int, index: jax.Array | None = None
                     ) -> "TokenCache":
    """Makes slot `ends[b]` each row's last written slot; see `KVCache.align_prefixes`.

    The rotation is the KV cache's, applied to tokens: slots up to `ends[b]` move
    right by `width - 1 - ends[b]` and `start` moves with them, so every token keeps
    its position; tokens that wrap around land before the new `start`.
    """
    target = jnp.asarray(width if index is None else index, jnp.int32)
    shift = (target - 1) - ends.astype(jnp.int32)  # [B]
    return self.replace(tokens=shift_slots(self.tokens, shift, width, axis=1),
                        start=self.start + shift, index=target)
