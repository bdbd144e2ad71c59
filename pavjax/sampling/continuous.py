"""Continuous batching of forked continuations: a finished row takes the next prefix.

`Sampler.fork_prefixes` decodes a fixed batch until its longest row stops: with
Monte-Carlo rollouts, where one continuation ends after a few tokens and another
runs to the budget, most rows idle for most steps. `fork_continuous` serves the
same work items from a fixed arena of `slots` decode rows instead. When a row
stops, the next pending (prefix, sample) item is copied into it from the
prefilled cache (a gather of that prefix's slots, no forward pass: prefix
sharing is kept) and decoding goes on. All of it is one jitted `lax.while_loop`.

Each arena row has its own write index (`KVCache.index` [B]): an item's prefix
always ends at slot `width - 1` and its tokens go to `width`, `width + 1`, ...,
the slots `fork_prefixes` gives it. Item i = prefix i // n, sample i % n, draws
with `fold_in(item_keys[i], k)` for its k-th token; with `item_keys[i] =
fold_in(rng, i)` that is what row i of `fork_prefixes(rng)` draws. So an item's
tokens do not depend on which row served it or when: the outputs equal
`fork_prefixes`' row for row (tested token for token), up to float rounding of
batch-dependent matmuls.
"""

from __future__ import annotations

from typing import NamedTuple

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from pavjax.models import KVCache
from pavjax.models.kv_cache import KV_AXES, SLOT_AXIS, shift_slots
from pavjax.sampling import decode_step

Array = jax.Array


class ContinuousOutput(NamedTuple):
  tokens: Array  # [N, M] int32, item i's tokens (pad after it stops)
  logprobs: Array  # [N, M] float32
  lengths: Array  # [N] int32
  finished: Array  # [N] bool
  steps: Array  # [] int32, decode steps the arena ran
  busy: Array  # [] int32, row-steps that decoded a live item (steps x slots at most)


@flax.struct.dataclass
class _State:
  cache: KVCache  # the arena: [L, B, K, S, H], index [B]
  item: Array  # [B] int32, the item each row serves (num_items when idle)
  live: Array  # [B] bool
  gen: Array  # [B] int32, tokens generated for the row's item
  next_logits: Array  # [B, V] float32
  row_keys: Array  # [B] PRNG keys of the rows' items
  boundary_state: Array  # [B] int32
  next_item: Array  # [] int32, the first item not yet loaded
  tokens: Array  # [N, M]
  logprobs: Array  # [N, M]
  lengths: Array  # [N]
  finished: Array  # [N]
  steps: Array  # []
  busy: Array  # []


def fork_continuous(lm, params, cache: KVCache, logits: Array, rows: Array, ends: Array,
                    picks: Array, num_prefixes: Array, item_keys: Array, *, width: int,
                    num_samples: int, max_new_tokens: int, slots: int, method,
                    stop_tokens: tuple[int, ...], pad_id: int = 0, boundary=None
                    ) -> ContinuousOutput:
  """Continues prefixes of prefilled sequences `num_samples` times each, `slots` rows at once.

  Args mirror `Sampler.fork_prefixes`: cache, logits from `prefill_sequences`
  over sequences [B', W] (cache size at least W + max_new_tokens); rows, ends,
  picks [R] name each prefix's sequence, last slot and logits entry. Only the
  first `num_prefixes` (a traced scalar <= R) are run, so a job can pad R to a
  fixed bucket and keep one compilation. Item i is prefix i // num_samples and
  draws its k-th token with `fold_in(item_keys[i], k)` ([R * num_samples] keys;
  `fold_in(rng, i)` reproduces `fork_prefixes(rng)`).
  """
  if not isinstance(cache, KVCache):
    raise TypeError(f"continuous batching needs a KVCache, not {type(cache).__name__}")
  r = rows.shape[0]
  n_items = r * num_samples
  size = cache.size
  if size < width + max_new_tokens:
    raise ValueError(f"cache of {size} slots cannot hold {width} + {max_new_tokens}")
  count = jnp.minimum(jnp.asarray(num_prefixes, jnp.int32), r) * num_samples
  stop = jnp.asarray(stop_tokens if stop_tokens else (-1,), jnp.int32)
  if item_keys.shape[0] != n_items:
    raise ValueError(f"{item_keys.shape[0]} item keys for {r} prefixes x {num_samples}")
  vocab = logits.shape[-1]
  src_start = cache.start
  # A refill reads one source row (cache and logits) at a traced index. With the source's
  # rows split over data-parallel devices, each such read would gather the whole source
  # from every device, once per refill; gathering its rows once, here, makes every read
  # local, for one copy of the source per device. (A no-op outside a mesh.)
  whole_rows = tuple(None if a == "batch" else a for a in KV_AXES)
  cache = cache.replace(k=nn.with_logical_constraint(cache.k, whole_rows),
                        v=nn.with_logical_constraint(cache.v, whole_rows))
  logits = nn.with_logical_constraint(logits, (None, None, "vocab"))

  def load(s: _State, slot: Array) -> _State:
    """Copies item `s.next_item`'s prefix into arena row `slot` (a gather, no matmuls)."""
    i = s.next_item
    p = i // num_samples
    src = rows[p]
    shift = (width - 1) - ends[p].astype(jnp.int32)

    def take(buf):  # [L, 1, K, W, H]: the source row's first W slots, rotated into place
      row = jax.lax.slice_in_dim(jax.lax.dynamic_slice_in_dim(buf, src, 1, axis=1), 0, width,
                                 axis=SLOT_AXIS)
      return shift_slots(row, shift[None], width, axis=SLOT_AXIS, row_axis=1)

    at = (0, slot, 0, 0, 0)
    arena = s.cache.replace(
        k=jax.lax.dynamic_update_slice(s.cache.k, take(cache.k).astype(s.cache.k.dtype), at),
        v=jax.lax.dynamic_update_slice(s.cache.v, take(cache.v).astype(s.cache.v.dtype), at),
        start=s.cache.start.at[slot].set(src_start[src] + shift),
        index=s.cache.index.at[slot].set(width))
    return s.replace(
        cache=arena, item=s.item.at[slot].set(i), live=s.live.at[slot].set(True),
        gen=s.gen.at[slot].set(0),
        next_logits=s.next_logits.at[slot].set(logits[src, picks[p]].astype(jnp.float32)),
        row_keys=s.row_keys.at[slot].set(item_keys[i]),
        boundary_state=s.boundary_state.at[slot].set(0), next_item=i + 1)

  def refill(s: _State) -> _State:
    def more(s):
      return jnp.any(~s.live) & (s.next_item < count)
    return jax.lax.while_loop(more, lambda s: load(s, jnp.argmin(s.live)), s)

  def step(s: _State) -> _State:
    s = refill(s)
    live = s.live
    keys = jax.vmap(jax.random.fold_in)(s.row_keys, s.gen)
    tok, logp, is_stop, boundary_state = decode_step.choose_tokens(
        method, s.next_logits, keys, live, pad_id, stop, boundary, s.boundary_state)
    out_row = jnp.where(live, s.item, n_items)  # idle rows write out of bounds: dropped
    tokens = s.tokens.at[out_row, s.gen].set(tok, mode="drop")
    logprobs = s.logprobs.at[out_row, s.gen].set(logp, mode="drop")
    old_index = s.cache.index
    new_logits, arena = lm(params, tok[:, None], s.cache)
    # Idle rows' indices stay put, so they never widen the length-aware attention.
    arena = arena.replace(index=jnp.where(live, arena.index, old_index))
    gen = s.gen + live.astype(jnp.int32)
    ends_now = live & (is_stop | (gen >= max_new_tokens) | (arena.index >= size))
    done_row = jnp.where(ends_now, s.item, n_items)
    return s.replace(
        cache=arena, live=live & ~ends_now, gen=gen,
        item=jnp.where(ends_now, n_items, s.item),
        next_logits=jnp.where(live[:, None], new_logits[:, -1, :].astype(jnp.float32),
                              s.next_logits),
        boundary_state=boundary_state, tokens=tokens, logprobs=logprobs,
        lengths=s.lengths.at[done_row].set(gen, mode="drop"),
        finished=s.finished.at[done_row].set(is_stop, mode="drop"),
        steps=s.steps + 1, busy=s.busy + jnp.sum(live, dtype=jnp.int32))

  k = cache.k
  shape = k.shape[:1] + (slots,) + k.shape[2:]  # the source's, with `slots` rows
  arena = KVCache(k=nn.with_logical_constraint(jnp.zeros(shape, k.dtype), KV_AXES),
                  v=nn.with_logical_constraint(jnp.zeros(shape, cache.v.dtype), KV_AXES),
                  start=jnp.zeros((slots,), jnp.int32),
                  index=jnp.zeros((slots,), jnp.int32))
  state = _State(
      cache=arena, item=jnp.full((slots,), n_items, jnp.int32), live=jnp.zeros((slots,), bool),
      gen=jnp.zeros((slots,), jnp.int32), next_logits=jnp.zeros((slots, vocab), jnp.float32),
      row_keys=jnp.repeat(item_keys[:1], slots, axis=0),
      boundary_state=jnp.zeros((slots,), jnp.int32), next_item=jnp.zeros((), jnp.int32),
      tokens=jnp.full((n_items, max_new_tokens), pad_id, jnp.int32),
      logprobs=jnp.zeros((n_items, max_new_tokens), jnp.float32),
      lengths=jnp.zeros((n_items,), jnp.int32), finished=jnp.zeros((n_items,), bool),
      steps=jnp.zeros((), jnp.int32), busy=jnp.zeros((), jnp.int32))

  def cond(s: _State):
    return jnp.any(s.live) | (s.next_item < count)

  s = jax.lax.while_loop(cond, step, state)
  return ContinuousOutput(s.tokens, s.logprobs, s.lengths, s.finished, s.steps, s.busy)
