"""A fixed-shape KV cache shared by every layer (stacked on a leading layer axis)."""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp

# Logical axes of the k / v buffers, for sharding rules.
KV_AXES = ("layers", "batch", "length", "kv_heads", "kv")


@flax.struct.dataclass
class KVCache:
  """Keys and values of every layer, plus where each row's live slots begin.

  Rows are left-padded so all rows write at the same `index` (one
  dynamic_update_slice per layer per step); `start[b]` is row b's first real slot,
  and slot s of row b holds position `s - start[b]`.
  """

  k: jax.Array  # [L, B, S, K, H]
  v: jax.Array  # [L, B, S, K, H]
  start: jax.Array  # [B] int32
  index: jax.Array  # [] int32, next slot to write

  @classmethod
  def create(cls, *, num_layers: int, batch: int, size: int, num_kv_heads: int,
             head_dim: int, start: jax.Array, dtype=jnp.float32) -> "KVCache":
    shape = (num_layers, batch, size, num_kv_heads, head_dim)
    return cls(k=jnp.zeros(shape, dtype), v=jnp.zeros(shape, dtype),
               start=jnp.asarray(start, jnp.int32), index=jnp.zeros((), jnp.int32))

  @property
  def size(self) -> int:
    return self.k.shape[2]

  @property
  def batch(self) -> int:
    return self.start.shape[0]

  def repeat(self, n: int) -> "KVCache":
    """Prefix forking: row b becomes rows b*n .. b*n+n-1 (no re-prefill)."""
    return self.replace(k=jnp.repeat(self.k, n, axis=1), v=jnp.repeat(self.v, n, axis=1),
                        start=jnp.repeat(self.start, n, axis=0))

  def gather(self, rows: jax.Array) -> "KVCache":
    """Keeps rows `rows` [B'] (beam search reorders surviving prefixes)."""
    return self.replace(k=jnp.take(self.k, rows, axis=1), v=jnp.take(self.v, rows, axis=1),
                        start=jnp.take(self.start, rows, axis=0))

  def align_prefixes(self, ends: jax.Array, width: int) -> "KVCache":
    """Re-aligns each row so that its slot `ends[b]` becomes the last prefilled slot.

    After a prefill of `width` slots over whole sequences, row b's prefix ending
    at slot `ends[b]` can be continued without recomputation: the slots up to
    `ends[b]` move right by `width - 1 - ends[b]` (a gather, no matmuls), `start`
    moves with them so every key keeps its RoPE position, and the slots that
    wrap around land before the new `start`, where the mask hides them. Decoding
    then resumes at slot `width` for all rows.
    """
    shift = (width - 1) - ends.astype(jnp.int32)  # [B]
    src = (jnp.arange(width, dtype=jnp.int32)[None, :] - shift[:, None]) % width  # [B, W]
    idx = src[None, :, :, None, None]

    def move(buf):
      moved = jnp.take_along_axis(buf[:, :, :width], idx, axis=2)
      return jnp.concatenate([moved, buf[:, :, width:]], axis=2)

    return self.replace(k=move(self.k), v=move(self.v), start=self.start + shift,
                        index=jnp.asarray(width, jnp.int32))
