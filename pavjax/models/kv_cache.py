"""A fixed-shape KV cache shared by every layer (stacked on a leading layer axis)."""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp

# Logical axes of the k / v buffers, for sharding rules. Slots come after the KV heads,
# so that a head's keys are one contiguous [S, H] matrix: attention reads them
# without a transpose (`pavjax.models.transformer._attend_cached`).
KV_AXES = ("layers", "batch", "kv_heads", "length", "kv")
SLOT_AXIS = KV_AXES.index("length")


@flax.struct.dataclass
class KVCache:
  """Keys and values of every layer, plus where each row's live slots begin.

  Rows are left-padded so all rows write at the same `index` (one
  dynamic_update_slice per layer per step); `start[b]` is row b's first real slot,
  and slot s of row b holds position `s - start[b]`. Continuous batching
  (`pavjax.sampling.continuous`) gives each row its own `index` [B] instead, as
  rows there start and end at different steps (each step's write is a scatter).
  """

  k: jax.Array  # [L, B, K, S, H]
  v: jax.Array  # [L, B, K, S, H]
  start: jax.Array  # [B] int32
  index: jax.Array  # [] or [B] int32, next slot to write

  @classmethod
  def create(cls, *, num_layers: int, batch: int, size: int, num_kv_heads: int,
             head_dim: int, start: jax.Array, dtype=jnp.float32) -> "KVCache":
    shape = (num_layers, batch, num_kv_heads, size, head_dim)
    return cls(k=jnp.zeros(shape, dtype), v=jnp.zeros(shape, dtype),
               start=jnp.asarray(start, jnp.int32), index=jnp.zeros((), jnp.int32))

  @property
  def size(self) -> int:
    return self.k.shape[SLOT_AXIS]

  @property
  def batch(self) -> int:
    return self.start.shape[0]

  def repeat(self, n: int) -> "KVCache":
    """Prefix forking: row b becomes rows b*n .. b*n+n-1 (no re-prefill)."""
    return self.replace(k=jnp.repeat(self.k, n, axis=1), v=jnp.repeat(self.v, n, axis=1),
                        start=jnp.repeat(self.start, n, axis=0))

  @classmethod
  def concatenate(cls, caches: "list[KVCache]") -> "KVCache":
    """The rows of several caches of one size written to the same `index`, in order."""
    if len(caches) == 1:
      return caches[0]
    return caches[0].replace(k=jnp.concatenate([c.k for c in caches], axis=1),
                             v=jnp.concatenate([c.v for c in caches], axis=1),
                             start=jnp.concatenate([c.start for c in caches]))

  def gather(self, rows: jax.Array) -> "KVCache":
    """Keeps rows `rows` [B'] (beam search reorders surviving prefixes)."""
    return self.replace(k=jnp.take(self.k, rows, axis=1), v=jnp.take(self.v, rows, axis=1),
                        start=jnp.take(self.start, rows, axis=0))

  def align_prefixes(self, ends: jax.Array, width: int, index: jax.Array | None = None
                     ) -> "KVCache":
    """Re-aligns each row so that its slot `ends[b]` becomes the last prefilled slot.

    After a prefill of `width` slots over whole sequences, row b's prefix ending
    at slot `ends[b]` can be continued without recomputation: the slots up to
    `ends[b]` move right by `width - 1 - ends[b]` (a gather, no matmuls), `start`
    moves with them so every key keeps its RoPE position, and the slots that
    wrap around land before the new `start`, where the mask hides them. Decoding
    then resumes at slot `width` for all rows.

    With `index` (a traced slot <= width), rows end at slot `index - 1` instead and
    decoding resumes there; what rotates past `index` lies beyond every query's
    mask until decoding overwrites it. Step-wise search uses this after steps of
    different lengths, with `width` the whole (static) cache.
    """
    target = jnp.asarray(width if index is None else index, jnp.int32)
    shift = (target - 1) - ends.astype(jnp.int32)  # [B]
    move = lambda buf: shift_slots(buf, shift, width, axis=SLOT_AXIS, row_axis=1)
    return self.replace(k=move(self.k), v=move(self.v), start=self.start + shift,
                        index=target)


def shift_slots(buf: jax.Array, shift: jax.Array, width: int, axis: int,
                row_axis: int | None = None) -> jax.Array:
  """Rotates each row's first `width` slots right by `shift[row]` (slots past width stay).

  Rows are on `row_axis` (default: the axis before `axis`). Used for the cache's
  slots and to keep token buffers laid out like the cache they describe (see
  `KVCache.align_prefixes`).
  """
  row_axis = axis - 1 if row_axis is None else row_axis
  if not 0 <= row_axis < axis:
    raise ValueError(f"rows (axis {row_axis}) must come before the slots (axis {axis})")
  src = (jnp.arange(width, dtype=jnp.int32)[None, :] - shift[:, None]) % width  # [B, W]
  src = jnp.expand_dims(src, [d for d in range(buf.ndim) if d not in (row_axis, axis)])
  head = jnp.take_along_axis(jax.lax.slice_in_dim(buf, 0, width, axis=axis), src, axis=axis)
  return jnp.concatenate([head, jax.lax.slice_in_dim(buf, width, buf.shape[axis], axis=axis)],
                         axis=axis)
