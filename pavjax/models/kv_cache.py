"""A fixed-shape KV cache shared by every layer (stacked on a leading layer axis)."""

from __future__ import annotations

import math

import flax.linen as nn
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

  def gather(self, rows: jax.Array, groups: int = 0) -> "KVCache":
    """Keeps rows `rows` [B'] (beam search reorders surviving prefixes).

    The result's rows stay split over the data-parallel devices (`take_rows`);
    `groups` as there.
    """
    take = lambda buf: take_rows(buf, rows, axes=KV_AXES, groups=groups)
    return self.replace(k=take(self.k), v=take(self.v),
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


def take_rows(buf: jax.Array, rows: jax.Array, *, axes: tuple, groups: int = 0) -> jax.Array:
  """`jnp.take(buf, rows, axis=axes.index("batch"))`, built shard by shard.

  `axes` are `buf`'s logical axis names. Inside a mesh whose data-parallel axes split
  the "batch" axis, XLA computes a gather at traced rows whole on every device: the
  prefix block a rollout fork gathers (16 prefixes x 3,072 slots of a 9B model's cache)
  then sits complete on each chip. Here each device builds only its own slice of the
  result. The source's row blocks travel once round a ring of the data-parallel devices
  (one `ppermute` per hop), and each device copies the rows it needs as they pass. This
  runs one slice of the leading axis (a layer of the cache) at a time, so a device holds
  two source blocks of one layer besides its output, never the whole source.

  `groups` > 0 promises that the rows are `groups` equal groups with group g's rows
  drawn from group g's equal share of `buf`'s rows (beam selection within each
  problem's candidates). When the groups divide evenly over the devices, every row is
  then on its own device and no block moves.

  Outside a mesh, or when the rows do not divide over its data-parallel devices, this
  is `jnp.take` (rows are assumed in range).
  """
  axis = axes.index("batch")
  plain = lambda: jnp.take(buf, rows, axis=axis)
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return plain()
  spec = list(nn.logical_to_mesh_axes(axes))
  names = lambda entry: () if entry is None else (entry,) if isinstance(entry, str) else tuple(
      entry)
  for d, entry in enumerate(spec):  # a dimension its mesh axes do not divide stays whole
    if buf.shape[d] % math.prod(mesh.shape[a] for a in names(entry)):
      spec[d] = None
  batch_axes = names(spec[axis])
  n = math.prod(mesh.shape[a] for a in batch_axes)
  if n == 1 or rows.shape[0] % n:
    return plain()
  block = buf.shape[axis] // n
  local = groups > 0 and groups % n == 0

  def ring(src, want, ax):  # src: this device's source rows, want: its output rows (global)
    me = jax.lax.axis_index(batch_axes)
    if local:
      return jnp.take(src, want - me * block, axis=ax)
    expand = lambda hit: hit.reshape([-1 if d == ax else 1 for d in range(src.ndim)])

    def visit(hop, src, out):  # src is device (me - hop)'s block
      pos = want - ((me - hop) % n) * block
      hit = (pos >= 0) & (pos < block)
      return jnp.where(expand(hit), jnp.take(src, jnp.clip(pos, 0, block - 1), axis=ax), out)

    neighbours = [(j, (j + 1) % n) for j in range(n)]

    def hop(h, carry):
      src, out = carry
      src = jax.lax.ppermute(src, batch_axes, neighbours)
      return src, visit(h, src, out)

    out = visit(0, src, jnp.take(src, jnp.zeros_like(want), axis=ax))
    return jax.lax.fori_loop(1, n, hop, (src, out))[1]

  def build(src, want):
    if axis == 0 or local:
      return ring(src, want, axis)
    # One slice of the leading axis (a layer) at a time: the blocks in flight are a
    # layer's, not the whole cache's.
    return jax.lax.map(lambda part: ring(part, want, axis - 1), src)

  spec = jax.sharding.PartitionSpec(*spec)
  rows_spec = jax.sharding.PartitionSpec(spec[axis])
  return jax.shard_map(build, mesh=mesh, in_specs=(spec, rows_spec), out_specs=spec)(buf, rows)
