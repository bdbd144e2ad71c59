"""Step-level beam search by continuous batching (arXiv 2410.08146, Sec. 4, App. C).

`StepBeamSearch.run` with `slots=0` expands every problem in lockstep: each step
decodes until the longest candidate of any problem has ended, and a problem whose
beam is done idles its rows until the last problem's is. Here the policy decodes an
arena of `slots` problem slots of N * C candidate rows each. Pending prompts are
prefilled ahead into a ring of `slots` roots (`Staged`: the prompt's cache, its
logits and values). The host loop runs rounds, one jitted call each:

  1. the slots the last round's decode completed (every candidate's step ended) are
     judged: verifier values, scores; the top N of each slot's candidates are copied
     C times each into its rows (a gather within the slot, nothing re-prefilled);
  2. a slot whose beam has ended (no candidate continues) takes the ring's next root
     in all N * C rows, as the static search's first expansion does;
  3. decode (a `lax.while_loop`) until `min_ready` slots are complete, or every slot.

Then the host books the judged candidates (`beam.record_step`, the static search's
own book-keeping) and tops up the ring.

So a problem goes on to its next step as soon as its own candidates have ended,
and a finished problem's rows serve the next prompt. Each row keeps its own cache
write index (`KVCache.index` [R]), so a candidate's tokens go to the slots after its
own prefix and no re-alignment is needed between steps.

Determinism: candidate j of problem b at step t draws with `beam.candidate_keys`,
as the static search does, so both give the same pools and answers (tested token
for token), up to float rounding of batch-dependent matmuls.

Compilations: rounds, fills and prefills into the ring take a power-of-two number of
slots (padded with an out-of-range slot whose reads clip and whose writes drop), so
each compiles at most log2(slots) + 2 times per prompt width. The arena carries no
sharding constraints: this path is for one device (or whatever layout XLA picks);
a pod's search keeps `slots=0`, whose rows split by problem over the devices.
"""

from __future__ import annotations

from collections import deque
from typing import Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from pavjax import sharding as shd
from pavjax.models.kv_cache import KV_AXES, KVCache
from pavjax.sampling import decode_step
from pavjax.sampling import sampler as sampler_lib
from pavjax.search import beam as beam_lib

Array = jax.Array
_ROW_AXIS = KV_AXES.index("batch")


@flax.struct.dataclass
class Arena:
  """The decode rows of every slot: slot g holds rows g * G .. g * G + G - 1."""

  cache: KVCache  # [L, R, K, S, H], start [R], index [R] (each row its own)
  hist: Array  # [R, S] tokens at the same slots as the cache
  next_logits: Array  # [R, V] float32
  keys: Array  # [R] this step's key of each candidate
  gen: Array  # [R] int32 tokens of this step so far
  done: Array  # [R] bool: the row's step has ended (or it has nothing to decode)
  stopped: Array  # [R] bool: it ended at a stop token (not the token budget)
  last: Array  # [R] int32 its last token of this step (pad before the first)
  boundary_state: Array  # [R] int32 the step-boundary automaton's state
  alive: Array  # [R] bool: a candidate of a kept parent (dead rows decode nothing)
  q: Array  # [R] the parent's Q^pi
  qmu: Array  # [R] the parent's Q^mu (zeros without a prover verifier)
  active: Array  # [slots] bool: the slot holds a problem
  steps: Array  # [] int32 decode steps run
  busy: Array  # [] int32 row-steps that decoded a live candidate


@flax.struct.dataclass
class Staged:
  """Prefilled roots of the next problems, a ring of `slots` entries: a slot that
  frees takes one (a copy, no forward pass) within the round that freed it."""

  cache: KVCache  # [L, E, K, S, H], start [E], index [E]
  hist: Array  # [E, S]
  logits: Array  # [E, V] float32, after the prompt's last token
  q: Array  # [E] the root's Q^pi
  qmu: Array  # [E] its Q^mu (zeros without a prover verifier)
  keys: Array  # [E, G] the root's candidates' keys at step 0


def _group_rows(gidx: Array, group: int) -> Array:
  """The rows of slots `gidx` [k], slot-major: [k * group]."""
  return (gidx[:, None] * group + jnp.arange(group, dtype=jnp.int32)[None, :]).reshape(-1)


def _put(buf: Array, rows: Array, new: Array, axis: int = 0) -> Array:
  """buf with `new` written at `rows` on `axis`; rows out of range are dropped."""
  index = (slice(None),) * axis + (rows,)
  return buf.at[index].set(new if new.dtype == buf.dtype else new.astype(buf.dtype),
                           mode="drop")


def _take(buf: Array, rows: Array, axis: int = 0) -> Array:
  return jnp.take(buf, rows, axis=axis, mode="clip")


class ContinuousBeam:
  """Runs a `StepBeamSearch` through an arena of `slots` problem slots."""

  def __init__(self, search: "beam_lib.StepBeamSearch", slots: int, min_ready: int = 0):
    """`min_ready`: decode until that many slots' candidates have all ended (or no row
    has anything left to decode) before judging them together; default slots // 8, at
    least 1. More makes fewer, larger verifier calls and host round trips; the slots
    that wait idle meanwhile. Results do not depend on it."""
    if slots < 1:
      raise ValueError(f"slots={slots} must be >= 1")
    self.search, self.slots = search, int(slots)
    self.min_ready = max(int(min_ready) or self.slots // 8, 1)
    self.group = search.n * search.c
    self.rows = self.slots * self.group
    self._empty = jax.jit(self._empty_impl, static_argnames=("cache_size", "vocab"))
    self._stage = jax.jit(self._stage_impl, donate_argnames=("staged",))
    self._fill = jax.jit(self._fill_impl, donate_argnames=("arena",))
    self._decode = jax.jit(self._decode_impl, donate_argnames=("arena",))
    self._round = jax.jit(self._round_impl, donate_argnames=("arena",))

  # --- jitted pieces -------------------------------------------------------------

  def _empty_impl(self, key, *, cache_size: int, vocab: int) -> tuple[Arena, Staged]:
    s, r, e = self.search, self.rows, self.slots
    cache = s.lm.init_cache(r, cache_size, jnp.zeros((r,), jnp.int32))
    if not isinstance(cache, KVCache):
      raise TypeError(f"continuous beam search needs a KVCache, not {type(cache).__name__}")
    roots = s.lm.init_cache(e, cache_size, jnp.zeros((e,), jnp.int32))
    staged = Staged(cache=roots.replace(index=jnp.zeros((e,), jnp.int32)),
                    hist=jnp.zeros((e, cache_size), jnp.int32),
                    logits=jnp.zeros((e, vocab), jnp.float32), q=jnp.zeros((e,), jnp.float32),
                    qmu=jnp.zeros((e,), jnp.float32),
                    keys=jnp.repeat(key[None, None], e, axis=0).repeat(self.group, axis=1))
    zeros = lambda dtype=jnp.int32: jnp.zeros((r,), dtype)
    return Arena(cache=cache.replace(index=zeros()),
                 hist=jnp.zeros((r, cache_size), jnp.int32),
                 next_logits=jnp.zeros((r, vocab), jnp.float32),
                 keys=jnp.repeat(key[None], r, axis=0), gen=zeros(),
                 done=jnp.ones((r,), bool), stopped=zeros(bool),
                 last=jnp.full((r,), s.pad_id, jnp.int32), boundary_state=zeros(),
                 alive=zeros(bool), q=zeros(jnp.float32), qmu=zeros(jnp.float32),
                 active=jnp.zeros((self.slots,), bool), steps=jnp.zeros((), jnp.int32),
                 busy=jnp.zeros((), jnp.int32)), staged

  def _stage_impl(self, params, vparams, pparams, staged: Staged, prompts, lengths, entries,
                  keys) -> Staged:
    """Prefills prompts [k, P] into ring entries `entries` [k] (out of range: dropped),
    with their roots' values and their first step's keys [k * G]."""
    s = self.search
    size = staged.cache.size
    cache, logits = sampler_lib.prefill(s.lm, params, prompts, lengths, cache_size=size)
    k, p = prompts.shape
    hist = jnp.zeros((k, size), jnp.int32).at[:, :p].set(prompts)
    index = jnp.broadcast_to(cache.index, (k,))
    q = s._values_impl(vparams, hist, cache.start, index)  # pylint: disable=protected-access
    qmu = (s._prover_values_impl(pparams, hist, cache.start, index)  # pylint: disable=protected-access
           if s.prover_fn is not None else jnp.zeros_like(q))
    put = lambda buf, new, axis=0: _put(buf, entries, new, axis)
    roots = staged.cache
    return Staged(
        cache=roots.replace(k=put(roots.k, cache.k, _ROW_AXIS), v=put(roots.v, cache.v, _ROW_AXIS),
                            start=put(roots.start, cache.start), index=put(roots.index, index)),
        hist=put(staged.hist, hist), logits=put(staged.logits, logits), q=put(staged.q, q),
        qmu=put(staged.qmu, qmu),
        keys=put(staged.keys, keys.reshape((k, self.group) + keys.shape[1:])))

  def _fill_impl(self, arena: Arena, staged: Staged, gidx, entries) -> Arena:
    """Slots `gidx` [k] take the staged roots `entries` [k] (out of range: the slot is
    left alone): the root in all N * C rows, as the static search's first expansion."""
    s, g, r = self.search, self.group, gidx.shape[0] * self.group
    take = entries < self.slots
    rows = jnp.where(jnp.repeat(take, g), _group_rows(gidx, g), self.rows)
    src = jnp.repeat(entries, g)  # each row's staged root
    put = lambda buf, new, axis=0: _put(buf, rows, new, axis)
    copy = lambda buf, new, axis=0: put(buf, _take(new, src, axis), axis)
    roots = staged.cache
    return arena.replace(
        cache=arena.cache.replace(k=copy(arena.cache.k, roots.k, _ROW_AXIS),
                                  v=copy(arena.cache.v, roots.v, _ROW_AXIS),
                                  start=copy(arena.cache.start, roots.start),
                                  index=copy(arena.cache.index, roots.index)),
        hist=copy(arena.hist, staged.hist), next_logits=copy(arena.next_logits, staged.logits),
        keys=put(arena.keys, _take(staged.keys, entries).reshape((r,) + staged.keys.shape[2:])),
        gen=put(arena.gen, jnp.zeros((r,), jnp.int32)),
        done=put(arena.done, jnp.zeros((r,), bool)),
        stopped=put(arena.stopped, jnp.zeros((r,), bool)),
        last=put(arena.last, jnp.full((r,), s.pad_id, jnp.int32)),
        boundary_state=put(arena.boundary_state, jnp.zeros((r,), jnp.int32)),
        alive=put(arena.alive, jnp.ones((r,), bool)), q=copy(arena.q, staged.q),
        qmu=copy(arena.qmu, staged.qmu),
        active=_put(arena.active, jnp.where(take, gidx, self.slots), jnp.ones_like(take)))

  def _decode_impl(self, params, arena: Arena) -> tuple[Arena, Array]:
    """Decodes until `min_ready` slots' candidates have all ended, or no row has
    anything left to decode; returns which slots are complete [slots]."""
    s, g = self.search, self.group
    size = arena.cache.size
    stop = jnp.asarray(s.stop, jnp.int32)
    rows = jnp.arange(self.rows, dtype=jnp.int32)

    def complete(a: Arena) -> Array:
      return a.active & jnp.all(a.done.reshape(-1, g), axis=1)

    def cond(a: Arena):
      return jnp.any(~a.done) & (jnp.sum(complete(a)) < self.min_ready)

    def body(a: Arena) -> Arena:
      live = ~a.done
      keys = jax.vmap(jax.random.fold_in)(a.keys, a.gen)  # the static decode's k-th key
      tok, _, is_stop, boundary_state = decode_step.choose_tokens(
          s.method, a.next_logits, keys, live, s.pad_id, stop, s.boundary, a.boundary_state)
      index = a.cache.index
      hist = a.hist.at[jnp.where(live, rows, self.rows), index].set(tok, mode="drop")
      logits, cache = s.lm(params, tok[:, None], a.cache)
      # Rows with nothing to decode keep their index: their write lands past their
      # prefix, masked, and the next token written there replaces it.
      cache = cache.replace(index=jnp.where(live, cache.index, index))
      gen = a.gen + live.astype(jnp.int32)
      ends = live & (is_stop | (gen >= s.step_tokens) | (cache.index >= size))
      return a.replace(
          cache=cache, hist=hist, gen=gen, done=a.done | ends, stopped=a.stopped | is_stop,
          next_logits=jnp.where(live[:, None], logits[:, -1, :].astype(jnp.float32),
                                a.next_logits),
          last=jnp.where(live, tok, a.last), boundary_state=boundary_state,
          steps=a.steps + 1, busy=a.busy + jnp.sum(live, dtype=jnp.int32))

    arena = jax.lax.while_loop(cond, body, arena)
    return arena, complete(arena)

  def _judge_impl(self, vparams, pparams, arena: Arena, gidx) -> dict:
    """`StepBeamSearch._judge_impl` on the candidates of slots `gidx` [k]."""
    rows = _group_rows(gidx, self.group)
    take = lambda x: _take(x, rows)
    hist, start, index = take(arena.hist), take(arena.cache.start), take(arena.cache.index)
    gen = take(arena.gen)
    out = self.search._judge_impl(  # pylint: disable=protected-access
        vparams, pparams, hist, start, index, take(arena.q), take(arena.qmu),
        take(arena.alive), gen, take(arena.last), take(arena.stopped))
    return {**out, "alive": take(arena.alive), "len": gen, "start": start, "index": index,
            "hist": hist}

  def _settle_impl(self, vparams, pparams, arena: Arena, gidx, steps, slot_keys
                   ) -> tuple[Arena, dict]:
    """Judges the candidates of slots `gidx` [k] (at `steps` [k], drawing with
    `slot_keys` [k]) and re-forks the kept ones for the next step; returns the arena
    and the judgement (with `hist`, the candidates' tokens) for the host's books."""
    g = self.group
    judged = self._judge_impl(vparams, pparams, arena, gidx)
    real = jnp.repeat(gidx < self.slots, g)  # (padding slots keep nothing)
    cont = beam_lib.continues(judged, jnp.repeat(steps == self.search.max_steps - 1, g)) & real
    keys = beam_lib.candidate_keys(slot_keys, steps + 1, g)
    qmu = judged["qmu"] if judged["qmu"] is not None else jnp.zeros_like(judged["q"])
    arena = self._advance_impl(arena, gidx, judged["s"], cont, judged["q"], qmu, keys)
    return arena, judged

  def _round_impl(self, params, vparams, pparams, arena: Arena, staged: Staged, gidx, steps,
                  slot_keys, head, count) -> tuple[Arena, dict, Array]:
    """One call (and one wait for the host) per round: `_settle_impl` of the slots
    `gidx` that the last decode completed; the slots that frees take the staged
    roots (ring entries head, head + 1, ... of `count`), in slot order; then
    `_decode_impl`. Returns the arena, the judgement (with the slots it `freed`) and
    which slots are complete."""
    was = arena.active
    arena, judged = self._settle_impl(vparams, pparams, arena, gidx, steps, slot_keys)
    freed = was & ~arena.active  # [slots]
    rank = jnp.cumsum(freed) - 1
    entry = jnp.where(freed & (rank < count), (head + rank) % self.slots, self.slots)
    real = gidx < self.slots  # (freed slots are among gidx)
    arena = self._fill_impl(arena, staged, gidx,
                            jnp.where(real, entry[jnp.minimum(gidx, self.slots - 1)], self.slots))
    arena, complete = self._decode_impl(params, arena)
    return arena, {**judged, "freed": freed}, complete

  def _advance_impl(self, arena: Arena, gidx, scores, keep, q, qmu, keys) -> Arena:
    """Slots `gidx`: the top N kept candidates [k * G] fill the slot's rows C times each."""
    s, g = self.search, self.group
    k = gidx.shape[0]
    masked = jnp.where(keep, scores, -jnp.inf).reshape(k, g)
    top_scores, top = jax.lax.top_k(masked, s.n)  # [k, N]
    local = jnp.repeat(top + jnp.arange(k)[:, None] * g, s.c, axis=1).reshape(-1)
    alive = jnp.repeat(jnp.isfinite(top_scores), s.c, axis=1).reshape(-1)
    rows = _group_rows(gidx, g)
    src = rows[local]  # each row's parent, within its own slot
    move = lambda buf, axis=0: _put(buf, rows, _take(buf, src, axis), axis)
    put = lambda buf, new: _put(buf, rows, new)
    r = rows.shape[0]
    cache = arena.cache
    return arena.replace(
        cache=cache.replace(k=move(cache.k, _ROW_AXIS), v=move(cache.v, _ROW_AXIS),
                            start=move(cache.start), index=move(cache.index)),
        hist=move(arena.hist), next_logits=move(arena.next_logits),
        boundary_state=move(arena.boundary_state), keys=put(arena.keys, keys),
        gen=put(arena.gen, jnp.zeros((r,), jnp.int32)), done=put(arena.done, ~alive),
        stopped=put(arena.stopped, jnp.zeros((r,), bool)),
        last=put(arena.last, jnp.full((r,), s.pad_id, jnp.int32)),
        alive=put(arena.alive, alive), q=put(arena.q, q[local]),
        qmu=put(arena.qmu, qmu[local]),
        active=_put(arena.active, gidx, jnp.any(alive.reshape(k, g), axis=1)))

  # --- host loop -----------------------------------------------------------------

  def _bucket(self, n: int) -> int:
    """The power of two (at most `slots`) a call over n slots is padded to."""
    return min(1 << max(n - 1, 0).bit_length(), self.slots)

  def run(self, params, vparams, prompts: Sequence[Sequence[int]], problem_keys: Array, *,
          prover_params=None) -> "beam_lib.SearchResult":
    """`StepBeamSearch.run`'s search of every prompt, `slots` problems at a time."""
    s, g = self.search, self.group
    prover = s.prover_fn is not None
    pparams = prover_params if prover else None
    tokens, lengths = sampler_lib.left_pad(prompts, s.pad_id)
    b, p = tokens.shape
    size = p + s.max_steps * s.step_tokens
    vocab = jax.eval_shape(lambda: sampler_lib.prefill(
        s.lm, params, jnp.asarray(tokens[:1]), jnp.asarray(lengths[:1]), cache_size=p))[1]
    problem_keys = jnp.asarray(problem_keys)
    if jnp.issubdtype(problem_keys.dtype, jax.dtypes.prng_key):
      problem_keys = jax.random.key_data(problem_keys)  # (the same bits, as raw keys)
    # Host arrays, indexed on the host: each call's arguments travel with its dispatch.
    problem_keys = np.asarray(problem_keys)
    arena, staged = self._empty(problem_keys[0], cache_size=size, vocab=vocab.shape[-1])
    per_problem = beam_lib.new_counters(lengths, prover)
    pools: list[list[dict]] = [[] for _ in prompts]
    pending = deque(range(b))  # not yet prefilled
    ring = deque()  # prefilled, waiting in the staged ring from entry `head` on
    head = 0
    problem = np.full(self.slots, -1)  # the problem each slot holds
    step = np.zeros(self.slots, np.int64)  # the step its candidates are at

    def bucket(values: np.ndarray, fill: int) -> np.ndarray:
      """values padded to their bucket (a power of two) with `fill`."""
      out = np.full(self._bucket(len(values)), fill, np.int32)
      out[:len(values)] = values
      return out

    def stage(want: int):
      """Prefills pending prompts until `want` wait in the ring (as far as it holds)."""
      nonlocal staged
      n = min(want - len(ring), len(pending), self.slots - len(ring))
      if n <= 0:
        return
      new = np.array([pending.popleft() for _ in range(n)])
      entries = bucket((head + len(ring) + np.arange(n)) % self.slots, self.slots)
      probs = bucket(new, new[0])  # (pads prefill a real prompt into no entry)
      keys = beam_lib.candidate_keys(problem_keys[probs], jnp.zeros(len(probs), jnp.int32), g)
      staged = self._stage(params, vparams, pparams, staged, tokens[probs], lengths[probs],
                           entries, keys)
      ring.extend(new.tolist())

    def take_staged(slots: np.ndarray):
      """Slots `slots` (ascending) hold the ring's next problems from now on."""
      nonlocal head
      problem[slots] = [ring.popleft() for _ in slots]
      step[slots] = 0
      head = (head + len(slots)) % self.slots

    ready = np.zeros(0, np.int64)  # slots the last decode completed, not yet judged
    while True:
      free = np.flatnonzero(problem < 0)
      if free.size and (ring or pending):  # (at the start, and when a round left a slot)
        stage(len(free))
        fill = free[:len(ring)]
        entries = bucket((head + np.arange(len(fill))) % self.slots, self.slots)
        arena = self._fill(arena, staged, bucket(fill, self.slots), entries)
        take_staged(fill)
      if (problem < 0).all():
        break
      if not ready.size:
        arena, complete = self._decode(params, arena)
        ready = np.flatnonzero(shd.to_host(complete))
        continue
      stage(len(ready))  # every slot this round may free can take a staged root at once
      gidx, at = bucket(ready, self.slots), bucket(step[ready], 0)
      probs = bucket(problem[ready], problem[ready[0]])
      arena, judged, complete = self._round(
          params, vparams, pparams, arena, staged, gidx, at, problem_keys[probs],
          np.int32(head), np.int32(len(ring)))
      n = len(ready) * g  # the real slots' rows come first
      host = shd.to_host({k: v for k, v in judged.items() if v is not None and k != "hist"})
      freed_here = np.flatnonzero(host.pop("freed"))
      host = {k: v[:n] for k, v in host.items()}
      cont = beam_lib.record_step(
          host, lambda: shd.to_host(judged["hist"]), problem[ready], step[ready], group=g,
          prompt_lengths=lengths, max_steps=s.max_steps, pools=pools, per_problem=per_problem)
      goes_on = cont.reshape(-1, g).any(axis=1)
      step[ready[goes_on]] += 1
      freed = ready[~goes_on]
      if not np.array_equal(freed, freed_here):  # (a kept candidate scored -inf or NaN)
        raise RuntimeError(f"continuous beam search: the round freed slots {freed_here}, "
                           f"the books {freed}")
      problem[freed] = -1
      take_staged(freed[:len(ring)])  # as the round did, in slot order
      ready = np.flatnonzero(shd.to_host(complete))
      if not ready.size and (problem >= 0).any():
        # every slot still held has a live candidate, so the decode ends at one
        raise RuntimeError("continuous beam search: decode stopped with no slot complete")
    counts = shd.to_host({"steps": arena.steps, "busy": arena.busy})
    steps = int(counts["steps"])
    return beam_lib.search_result(pools, per_problem, {
        "row_steps": steps * self.rows, "steps": steps, "busy": int(counts["busy"])})
