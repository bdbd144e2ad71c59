"""KV-cache sampling: prefill, prefix forking, and a `lax.while_loop` decode.

The sampler talks to the model through one seam, a `CachedLM`:

  lm(params, tokens [B, T], cache) -> (logits [B, T, V], cache)
  lm.init_cache(batch, size, start) -> cache

so tests can drive it with a hand-made logit table and jobs with the transformer
or the MADE (`cached_lm` picks the wrapper for a model).
A model may also offer `lm.logits_at(params, tokens, cache, at) -> (logits
[B, R, V], cache)`, the same call with the logits of positions `at` [B, R] only:
`prefill` (the last prompt token) and `prefill_sequences` (the prefix ends that
will be forked) then skip the LM head elsewhere. Without it they slice the full
logits.

Layout: prompts are left-padded to a bucket length P, so every row writes at the
same cache slot each step; the cache holds P + max_new_tokens slots. Shapes depend
only on (batch, P, max_new_tokens), so prompts of different lengths in the same
bucket share one compilation.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple, Protocol, Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from pavjax.sampling import continuous
from pavjax.sampling import decode_step
from pavjax.models import KVCache, Made, TokenCache, Transformer

Array = jax.Array

DEFAULT_BUCKETS = (8, 16, 32, 64, 128, 256, 512, 1024, 2048)


class CachedLM(Protocol):
  """What the sampler needs from a model."""

  def init_cache(self, batch: int, size: int, start: Array) -> KVCache:
    ...

  def __call__(self, params: Any, tokens: Array, cache: KVCache) -> tuple[Array, KVCache]:
    ...


class TransformerLM:
  """`CachedLM` over `pavjax.models.Transformer`."""

  def __init__(self, model: Transformer):
    self.model = model

  def init_cache(self, batch, size, start):
    cfg = self.model.cfg
    return KVCache.create(num_layers=cfg.num_layers, batch=batch, size=size,
                          num_kv_heads=cfg.num_kv_heads, head_dim=cfg.head_dim,
                          start=start, dtype=cfg.compute_dtype)

  def __call__(self, params, tokens, cache):
    out = self.model.apply({"params": params}, tokens, cache=cache)
    return out.logits, out.cache

  def logits_at(self, params, tokens, cache, at):
    """Like `__call__`, but the LM head runs at positions `at` [B, R] only: [B, R, V]."""
    out = self.model.apply({"params": params}, tokens, cache=cache, logits_at=at)
    return out.logits, out.cache

  def last_logits(self, params, tokens, cache):
    """Like `__call__`, but the LM head runs on the last token only: logits [B, V]."""
    b, t = tokens.shape
    logits, cache = self.logits_at(params, tokens, cache, jnp.full((b, 1), t - 1, jnp.int32))
    return logits[:, 0], cache


class MadeLM(TransformerLM):
  """`CachedLM` over `pavjax.models.Made`: the same calls, with a token-buffer cache.

  `Made` takes the transformer's call signature, so only the cache differs.
  """

  def init_cache(self, batch, size, start):
    return TokenCache.create(batch=batch, size=size, start=start)


def in_dtype(model, params, dtype: str):
  """(model, params) that sample in `dtype`: compute, KV cache and stored weights.

  For bfloat16 sampling of a model trained and checkpointed in float32: the
  parameters are cast once here (not at every decode step), halving the bytes
  each step reads, and the cache (`TransformerLM.init_cache` uses the compute
  dtype) halves too. '' or the model's own dtype returns both unchanged. Greedy
  tokens then equal float32's except after near-ties, which bfloat16 rounding
  may flip (`pavjax.bench.harness.check_greedy` bounds the logit shortfall).
  """
  if not dtype or not isinstance(model, Transformer):
    if dtype and not isinstance(model, Transformer):
      raise TypeError(f"sampling in {dtype} needs a Transformer, not {type(model).__name__}")
    return model, params
  cfg = model.cfg
  if cfg.dtype == dtype and cfg.param_dtype == dtype:
    return model, params
  dt = jnp.dtype(dtype)
  new = Transformer(dataclasses.replace(cfg, dtype=dtype, param_dtype=dtype))
  cast = jax.jit(lambda p: jax.tree.map(
      lambda x: x.astype(dt) if jnp.issubdtype(x.dtype, jnp.floating) else x, p))
  return new, cast(params)


def cached_lm(model) -> CachedLM:
  """The `CachedLM` for a job's model (`Transformer` or `Made`)."""
  if isinstance(model, Made):
    return MadeLM(model)
  if isinstance(model, Transformer):
    return TransformerLM(model)
  raise TypeError(f"no CachedLM for {type(model).__name__}")


@flax.struct.dataclass
class SamplingState:
  """Loop state of `decode`; donated between calls so buffers update in place."""

  step: Array  # [] int32, tokens generated so far
  tokens: Array  # [B, N] int32 generated tokens (pad after a row stops)
  logprobs: Array  # [B, N] float32 log pi(token) at temperature 1 (0 after a row stops)
  lengths: Array  # [B] int32 generated tokens per row, the stop token included
  done: Array  # [B] bool
  finished: Array  # [B] bool, True iff the row emitted a stop token or ended a step
  next_logits: Array  # [B, V] float32 logits for the next token
  row_keys: Array  # [B] PRNG keys, one per row
  cache: KVCache
  boundary_state: Array  # [B] int32, the step-boundary automaton's state (decode's `boundary`)


class SampleOutput(NamedTuple):
  tokens: Array  # [B, N] int32
  logprobs: Array  # [B, N] float32
  lengths: Array  # [B] int32
  finished: Array  # [B] bool; False means the row ran out of max_new_tokens


def bucket_length(n: int, buckets: Sequence[int] = DEFAULT_BUCKETS) -> int:
  """Smallest bucket that holds n tokens."""
  for b in buckets:
    if b >= n:
      return b
  raise ValueError(f"prompt of {n} tokens exceeds the largest bucket {buckets[-1]}")


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int = 0,
             buckets: Sequence[int] = DEFAULT_BUCKETS) -> tuple[np.ndarray, np.ndarray]:
  """Host-side: left-pads prompts to a bucket. Returns (tokens [B, P], lengths [B])."""
  lengths = np.array([len(p) for p in prompts], np.int32)
  if lengths.min(initial=1) < 1:
    raise ValueError("every prompt needs at least one token")
  width = bucket_length(int(lengths.max()), buckets)
  out = np.full((len(prompts), width), pad_id, np.int32)
  for i, p in enumerate(prompts):
    out[i, width - len(p):] = p
  return out, lengths


def prefill(lm: CachedLM, params, prompts: Array, lengths: Array, *, cache_size: int):
  """Runs the left-padded prompts [B, P] through the model once.

  Returns the cache (P slots written) and the logits of each row's last prompt token.
  """
  b, p = prompts.shape
  cache = lm.init_cache(b, cache_size, p - lengths)
  last_logits = getattr(lm, "last_logits", None)
  if last_logits is not None:
    logits, cache = last_logits(params, prompts, cache)
  else:
    logits, cache = lm(params, prompts, cache)
    logits = logits[:, -1, :]
  return cache, logits.astype(jnp.float32)


def prefill_sequences(lm: CachedLM, params, tokens: Array, lengths: Array, *,
                      cache_size: int, logits_at: Array):
  """Prefills whole left-padded sequences [B, W]; returns the cache and logits [B, R, V].

  The cache then holds every prefix of every row: `fork_prefixes` continues from
  any of them without another forward pass over the prefix. It also needs the
  logits after each forked prefix's last token; `logits_at` [B, R] names those
  slots (`prefix_logit_slots` builds it), and only they get the LM head: the
  [B, W, V] logits of every position are never built (at W = 2048 and a 256k
  vocabulary they would be 2 GiB per row).
  """
  b, w = tokens.shape
  cache = lm.init_cache(b, cache_size, w - lengths)
  at = logits_at.astype(jnp.int32)
  selected = getattr(lm, "logits_at", None)
  if selected is not None:
    logits, cache = selected(params, tokens, cache, at)
  else:
    logits, cache = lm(params, tokens, cache)
    logits = jnp.take_along_axis(logits, at[:, :, None], axis=1)
  return cache, logits.astype(jnp.float32)


def prefix_logit_slots(rows: Sequence[int], ends: Sequence[int], *, num_rows: int, width: int,
                       per_row: int | None = None) -> tuple[np.ndarray, np.ndarray]:
  """Host-side: the `logits_at` of `prefill_sequences` for prefixes that will be forked.

  Prefix i is row `rows[i]`'s sequence up to slot `ends[i]` (left-padded layout of
  width `width`). Returns `logits_at` [num_rows, per_row] int32, each row's distinct
  prefix ends (the unused entries repeat slot width - 1), and `picks` [N] int32
  with `logits_at[rows[i], picks[i]] == ends[i]`: the `picks` of `fork_prefixes`.
  `per_row` defaults to the most distinct ends of any row, rounded up to a bucket
  (8, 16, ..., at most `width`), so that blocks of a job share few compilations.
  """
  slot_of = [{} for _ in range(num_rows)]  # per row: end slot -> its index in logits_at
  for r, e in zip(rows, ends):
    if not 0 <= int(e) < width:
      raise ValueError(f"prefix end slot {int(e)} is outside the {width} prefilled slots")
    slot_of[int(r)].setdefault(int(e), len(slot_of[int(r)]))
  most = max([len(d) for d in slot_of] + [1])
  if per_row is None:
    per_row = min(bucket_length(most, (*DEFAULT_BUCKETS, width)), width)
  if most > per_row:
    raise ValueError(f"a row has {most} distinct prefix ends, more than per_row={per_row}")
  at = np.full((num_rows, per_row), width - 1, np.int32)
  for row, slots in enumerate(slot_of):
    at[row, :len(slots)] = list(slots)  # dicts keep insertion order: index k is entry k
  picks = np.array([slot_of[int(r)][int(e)] for r, e in zip(rows, ends)], np.int32)
  return at, picks


def init_state(cache: KVCache, next_logits: Array, row_keys: Array, max_new_tokens: int,
               pad_id: int = 0) -> SamplingState:
  b = next_logits.shape[0]
  return SamplingState(
      step=jnp.zeros((), jnp.int32),
      tokens=jnp.full((b, max_new_tokens), pad_id, jnp.int32),
      logprobs=jnp.zeros((b, max_new_tokens), jnp.float32),
      lengths=jnp.zeros((b,), jnp.int32),
      done=jnp.zeros((b,), bool),
      finished=jnp.zeros((b,), bool),
      next_logits=next_logits,
      row_keys=row_keys,
      cache=cache,
      boundary_state=jnp.zeros((b,), jnp.int32))


def decode(lm: CachedLM, params, state: SamplingState, *, method, stop_tokens: tuple[int, ...],
           pad_id: int = 0, boundary=None) -> SamplingState:
  """Samples until every row stopped, the token buffer is full, or the cache is full.

  A row stops after a token in `stop_tokens`, or, with `boundary` (the `(next_state,
  ends)` tables of `pavjax.step_boundary.StepBoundary.arrays()`), after a token that
  ends a step: the automaton runs from `state.boundary_state` (0 at a step's start),
  so a delimiter split over two tokens stops the row at the second.
  """
  max_new = state.tokens.shape[1]
  stop = jnp.asarray(stop_tokens if stop_tokens else (-1,), jnp.int32)

  def cond(s: SamplingState):
    return (s.step < max_new) & ~jnp.all(s.done) & (s.cache.index < s.cache.size)

  def body(s: SamplingState):
    keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(s.row_keys, s.step)
    live = ~s.done
    tok, logp, is_stop, boundary_state = decode_step.choose_tokens(
        method, s.next_logits, keys, live, pad_id, stop, boundary, s.boundary_state)
    logits, cache = lm(params, tok[:, None], s.cache)
    return s.replace(
        step=s.step + 1,
        tokens=jax.lax.dynamic_update_slice(s.tokens, tok[:, None], (0, s.step)),
        logprobs=jax.lax.dynamic_update_slice(
            s.logprobs, jnp.where(live, logp, 0.0)[:, None], (0, s.step)),
        lengths=s.lengths + live.astype(jnp.int32),
        done=s.done | is_stop,
        finished=s.finished | is_stop,
        # A stopped row keeps the logits after its stop token: step-wise search
        # continues from there, and the pad tokens it is fed since are not its own.
        next_logits=jnp.where(live[:, None], logits[:, -1, :].astype(jnp.float32),
                              s.next_logits),
        cache=cache,
        boundary_state=boundary_state)

  return jax.lax.while_loop(cond, body, state)


def row_keys_for(rng: Array, num_rows: int) -> Array:
  """One key per output row; row r's key depends only on (rng, r)."""
  return jax.vmap(functools.partial(jax.random.fold_in, rng))(jnp.arange(num_rows))


def call_row_keys(rng: Array, calls, rows) -> Array:
  """The key of row `rows[i]` of a call made with `fold_in(rng, calls[i])`, for each i:
  what continuous batching gives an item to draw what a static call would have."""
  fold = lambda c, r: jax.random.fold_in(jax.random.fold_in(rng, c), r)
  return jax.vmap(fold)(jnp.asarray(calls, jnp.int32), jnp.asarray(rows, jnp.int32))


class Sampler:
  """Jitted sampling around a `CachedLM`; compiles once per shape bucket.

  `generate` fuses prefill, forking and decode in one program. `prefill` and
  `decode` are also exposed (jitted, decode donating its state) for step-wise
  search, which keeps a cache alive across calls.
  """

  def __init__(self, lm: CachedLM, *, pad_id: int = 0):
    self.lm = lm
    self.pad_id = pad_id
    self.num_traces = 0  # python-side trace counter, for recompile tests
    self._generate = jax.jit(
        self._generate_impl,
        static_argnames=("num_samples", "max_new_tokens", "method", "stop_tokens"))
    self._fork = jax.jit(
        self._fork_impl,
        static_argnames=("width", "num_samples", "max_new_tokens", "method", "stop_tokens"))
    self.prefill = jax.jit(functools.partial(prefill, lm), static_argnames=("cache_size",))
    self.prefill_sequences = jax.jit(functools.partial(prefill_sequences, lm),
                                     static_argnames=("cache_size",))
    self.decode = jax.jit(functools.partial(decode, lm, pad_id=pad_id),
                          static_argnames=("method", "stop_tokens"), donate_argnames=("state",))
    self._continuous = jax.jit(
        self._continuous_impl,
        static_argnames=("width", "num_samples", "max_new_tokens", "slots", "method",
                         "stop_tokens"))
    self._generate_continuous = jax.jit(
        self._generate_continuous_impl,
        static_argnames=("num_samples", "max_new_tokens", "slots", "method", "stop_tokens"))

  def _generate_impl(self, params, prompts, lengths, rng, *, num_samples, max_new_tokens,
                     method, stop_tokens):
    self.num_traces += 1
    cache, logits = prefill(self.lm, params, prompts, lengths,
                            cache_size=prompts.shape[1] + max_new_tokens)
    return self._continue(params, cache, logits, rng, num_samples, max_new_tokens, method,
                          stop_tokens)

  def _continue(self, params, cache, next_logits, rng, num_samples, max_new_tokens, method,
                stop_tokens) -> SampleOutput:
    """Forks each cache row `num_samples` ways (no re-prefill) and decodes."""
    if num_samples > 1:
      cache = cache.repeat(num_samples)
      next_logits = jnp.repeat(next_logits, num_samples, axis=0)
    keys = row_keys_for(rng, next_logits.shape[0])
    state = init_state(cache, next_logits, keys, max_new_tokens, self.pad_id)
    state = decode(self.lm, params, state, method=method, stop_tokens=stop_tokens,
                   pad_id=self.pad_id)
    return SampleOutput(state.tokens, state.logprobs, state.lengths, state.finished)

  def _fork_impl(self, params, cache, logits, rows, ends, picks, rng, *, width, num_samples,
                 max_new_tokens, method, stop_tokens):
    self.num_traces += 1
    cache = cache.gather(rows).align_prefixes(ends, width)
    next_logits = logits[rows, picks]  # [R, V]: the logits after each prefix's last token
    return self._continue(params, cache, next_logits, rng, num_samples, max_new_tokens, method,
                          stop_tokens)

  def fork_prefixes(self, params, cache: KVCache, logits: Array, rows: Array, ends: Array,
                    picks: Array, rng: Array, *, width: int, max_new_tokens: int, method,
                    stop_tokens: Sequence[int] = (), num_samples: int = 1) -> SampleOutput:
    """Continues prefixes of prefilled sequences, `num_samples` times each.

    Args:
      params: model parameters.
      cache, logits: from `prefill_sequences` over sequences [B, W] (its cache must
        have room for `max_new_tokens` after slot W), logits [B, R', V] at its
        `logits_at` slots.
      rows: [R] which prefilled sequence each prefix comes from.
      ends: [R] slot (in the left-padded layout) of each prefix's last token.
      picks: [R] where each prefix's next-token logits are: `logits[rows, picks]`,
        i.e. `logits_at[rows, picks] == ends` (see `prefix_logit_slots`).
      rng: output row r uses `fold_in(rng, r)`, exactly as `generate` does, so a
        prefix continued here matches the same prefix prefilled on its own.
      width: W, the prefilled sequences' width.

    Returns:
      SampleOutput with R * num_samples rows (prefix r at rows r*n .. r*n+n-1).
    """
    return self._fork(params, cache, logits, rows, ends, picks, rng, width=width,
                      num_samples=num_samples, max_new_tokens=max_new_tokens, method=method,
                      stop_tokens=tuple(int(t) for t in stop_tokens))

  def _continuous_impl(self, params, cache, logits, rows, ends, picks, num_prefixes, keys, *,
                       width, num_samples, max_new_tokens, slots, method, stop_tokens):
    self.num_traces += 1
    return continuous.fork_continuous(
        self.lm, params, cache, logits, rows, ends, picks, num_prefixes, keys, width=width,
        num_samples=num_samples, max_new_tokens=max_new_tokens, slots=slots, method=method,
        stop_tokens=stop_tokens, pad_id=self.pad_id)

  def fork_continuous(self, params, cache: KVCache, logits: Array, rows: Array, ends: Array,
                      picks: Array, rng: Array, *, width: int, max_new_tokens: int, slots: int,
                      method, stop_tokens: Sequence[int] = (), num_samples: int = 1,
                      num_prefixes: int | Array | None = None,
                      item_keys: Array | None = None) -> continuous.ContinuousOutput:
    """`fork_prefixes` by continuous batching over `slots` decode rows.

    Same arguments and row order as `fork_prefixes` (item r * num_samples + j),
    and the same tokens; a row that stops takes the next pending item instead of
    idling until the longest row ends. Only the first `num_prefixes` prefixes are
    run (default all): pad `rows`, `ends` and `picks` to a fixed length and pass
    the real count, and blocks of any size share one compilation. Item i draws
    with `item_keys[i]` (default `fold_in(rng, i)`, as `fork_prefixes`). See
    `pavjax.sampling.continuous`.
    """
    count = rows.shape[0] if num_prefixes is None else num_prefixes
    if item_keys is None:
      item_keys = row_keys_for(rng, rows.shape[0] * num_samples)
    return self._continuous(params, cache, logits, rows, ends, picks,
                            jnp.asarray(count, jnp.int32), item_keys, width=width,
                            num_samples=num_samples, max_new_tokens=max_new_tokens,
                            slots=slots, method=method,
                            stop_tokens=tuple(int(t) for t in stop_tokens))

  def _generate_continuous_impl(self, params, prompts, lengths, num_prompts, item_keys, *,
                                num_samples, max_new_tokens, slots, method, stop_tokens):
    self.num_traces += 1
    b, width = prompts.shape
    cache, logits = prefill(self.lm, params, prompts, lengths,
                            cache_size=width + max_new_tokens)
    # Each prompt is a prefix that ends at the last slot, its logits the prefill's.
    last = jnp.full((b,), width - 1, jnp.int32)
    return continuous.fork_continuous(
        self.lm, params, cache, logits[:, None, :], jnp.arange(b, dtype=jnp.int32), last,
        jnp.zeros((b,), jnp.int32), num_prompts, item_keys, width=width,
        num_samples=num_samples, max_new_tokens=max_new_tokens, slots=slots, method=method,
        stop_tokens=stop_tokens, pad_id=self.pad_id)

  def generate_continuous(self, params, prompts: Array, lengths: Array, item_keys: Array, *,
                          max_new_tokens: int, slots: int, method,
                          stop_tokens: Sequence[int] = (), num_samples: int = 1,
                          num_prompts: int | Array | None = None
                          ) -> continuous.ContinuousOutput:
    """`generate` by continuous batching: all prompts prefilled at once, then decoded
    through an arena of `slots` rows where a stopped row takes the next pending
    (prompt, sample) item.

    Item b * num_samples + j (prompt b, sample j) draws with `item_keys[that item]`;
    `row_keys_for(rng)` gives `generate(rng)`'s keys, and then the same tokens. Only the
    first `num_prompts` prompts run (default all): pad the prompts to a fixed count and
    pass the real one, and any count shares one compilation.
    """
    count = prompts.shape[0] if num_prompts is None else num_prompts
    return self._generate_continuous(
        params, prompts, lengths, jnp.asarray(count, jnp.int32), item_keys,
        num_samples=num_samples, max_new_tokens=max_new_tokens, slots=slots, method=method,
        stop_tokens=tuple(int(t) for t in stop_tokens))

  def generate(self, params, prompts: Array, lengths: Array, rng: Array, *,
               max_new_tokens: int, method, stop_tokens: Sequence[int] = (),
               num_samples: int = 1) -> SampleOutput:
    """Samples `num_samples` continuations of each left-padded prompt.

    Args:
      params: model parameters (any sharding).
      prompts: [B, P] int32, left-padded (see `left_pad`).
      lengths: [B] int32 real prompt lengths.
      rng: a PRNG key; row r of the output uses `fold_in(rng, r)`.
      max_new_tokens: token budget per row.
      method: a sampling method object (`pavjax.sampling.methods`).
      stop_tokens: a row stops after emitting any of these (EOS, step delimiter).
      num_samples: continuations per prompt; output row b * num_samples + j.

    Returns:
      SampleOutput with B * num_samples rows.
    """
    return self._generate(params, prompts, lengths, rng, num_samples=num_samples,
                          max_new_tokens=max_new_tokens, method=method,
                          stop_tokens=tuple(int(t) for t in stop_tokens))

