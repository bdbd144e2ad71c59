"""Step-level beam search ranked by a verifier (arXiv 2410.08146, Sec. 4, App. C).

A beam of N prefixes per problem; each samples C next steps (sampling stops at a
step-end token or EOS); candidates are scored by a named score and the top N
continue. Finished candidates (EOS, a step that ran out of tokens, or the step
budget) leave the beam for a pool; the answer is the finished (EOS) pool member
the Q^pi verifier rates highest, and a problem with none has no answer (counted in
`no_finished`).

Choices the paper leaves open (documented here and in the README):
  * First expansion: the root prompt fills all N beam rows, so it is expanded
    N * C times (independent samples) and the best N distinct steps are kept.
  * Identical candidate prefixes of a problem are merged before selection (the
    first one stands); otherwise one likely step would fill every beam slot.
  * Max steps: `max_steps`; a prefix still open then joins the pool unfinished,
    where it is kept (for the record) but never chosen as the answer.

Provers of the `pav` score, Q^pi + alpha * A^mu:
  * Best-of-K (default): Q^mu = BoK_K(Q^pi) = 1 - (1 - Q^pi)^K in closed form from
    the Q^pi verifier's values (`rewards.bok_q`); no extra model call.
  * A separate prover policy mu: `prover_fn` with `prover_params` given to `run`, a
    value function of the same form as `value_fn` that returns Q^mu (a q verifier
    trained on mu's rollouts). Each beam row keeps its prefix's Q^mu next to its
    Q^pi, and a candidate scores q_cand + alpha * (qmu_cand - qmu_parent).

Cache reuse: candidates fork the kept prefixes' cache rows (no re-prefill); the
selected rows are gathered and re-aligned (`KVCache.align_prefixes`) so the
step's unused slots are masked. The verifiers have no cache here: each step the
Q^pi verifier scores the candidates' whole prefixes (counted in `verifier_tokens`),
and so does a prover verifier (counted apart in `prover_tokens`, 0 for BoK;
`compute.flops` charges them at the prover's parameter count).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from pavjax import rewards
from pavjax import sharding as shd
from pavjax.models.kv_cache import KVCache, shift_slots
from pavjax.step_boundary import StepBoundary
from pavjax.sampling import methods
from pavjax.sampling import sampler as sampler_lib


def score_q(q_cand, q_parent, alpha, k):
  """Rank by the candidate's own value (PRM-Q beam; also ORM scores)."""
  del q_parent, alpha, k
  return q_cand


def score_pav_prover(q_cand, qmu_cand, qmu_parent, alpha):
  """Effective reward Q^pi + alpha * A^mu with a prover verifier's Q^mu."""
  return q_cand + alpha * (qmu_cand - qmu_parent)


def score_pav(q_cand, q_parent, alpha, k):
  """Effective reward Q^pi + alpha * A^mu with a Best-of-K prover of pi."""
  return score_pav_prover(q_cand, rewards.bok_q(q_cand, k), rewards.bok_q(q_parent, k), alpha)


SCORES: dict[str, Callable] = {"q": score_q, "orm": score_q, "pav": score_pav}

# value_fn(verifier_params, tokens [R, T] right-padded, lengths [R]) -> Q in [0, 1] [R]
ValueFn = Callable[[object, jax.Array, jax.Array], jax.Array]


@flax.struct.dataclass
class Beam:
  """B * N beam rows (problem-major) in the cache's slot layout."""

  cache: KVCache
  next_logits: jax.Array  # [R, V]
  hist: jax.Array  # [R, S] tokens at the same slots as the cache
  alive: jax.Array  # [R] bool
  q: jax.Array  # [R] verifier value of each prefix (the parent value next step)
  # [R] the prover verifier's Q^mu of each prefix; None without a prover verifier
  # (BoK derives its Q^mu from `q`), which keeps that path's arrays as they were.
  qmu: jax.Array | None = None
  # [R] int32 the step-boundary automaton's state at the end of each prefix (text of a
  # boundary token after its delimiter); None without a `boundary`.
  boundary_state: jax.Array | None = None


@dataclasses.dataclass
class SearchResult:
  """Per problem: the pool, the chosen response, and compute counters."""

  pools: list[list[dict]]  # each: tokens (response), q, score, step, finished (+ q_mu)
  answers: list[list[int]]  # chosen response tokens per problem
  counters: dict[str, int]  # totals over problems
  per_problem: dict[str, np.ndarray]  # the same counters, [P] each
  # How the policy's decode loops used their rows: row_steps (rows x decode steps run,
  # useful or idle), and with continuous batching the arena's steps.
  decode: dict[str, int] = dataclasses.field(default_factory=dict)


def _dedupe(hist: jax.Array, valid: jax.Array, group: int) -> jax.Array:
  """Marks a candidate invalid when an earlier one of its problem has the same tokens."""
  r, s = hist.shape
  weights = jnp.asarray(np.random.default_rng(0).integers(1, 2**31 - 1, s), jnp.uint32)
  h = jnp.sum(hist.astype(jnp.uint32) * weights, axis=1)  # [R] a hash of the row
  h = h.reshape(-1, group)
  v = valid.reshape(-1, group)
  same = (h[:, :, None] == h[:, None, :]) & v[:, None, :]  # [P, G, G]
  earlier = jnp.tril(jnp.ones((group, group), bool), k=-1)
  dup = jnp.any(same & earlier[None], axis=2)
  return (v & ~dup).reshape(r)


class StepBeamSearch:
  """Jitted pieces of the search; a host loop drives them step by step."""

  def __init__(self, lm: sampler_lib.CachedLM, value_fn: ValueFn, *, beam_width: int,
               expansions: int, max_steps: int, max_step_tokens: int,
               step_end_ids: Sequence[int] = (), eos_id: int, score: str = "pav",
               alpha: float = 0.5, bok_k: int = 4, method=None, pad_id: int = 0,
               prover_fn: ValueFn | None = None,
               boundary: StepBoundary | None = None, slots: int = 0, min_ready: int = 0):
    """Beam of `beam_width` rows, `expansions` samples each, ranked by `score`.

    A step ends at a token of `step_end_ids`, or, with `boundary` (a task's
    `step_boundary`: the one step rule of `pavjax.step_boundary`), where that
    automaton says; then `step_end_ids` is not read.

    `value_fn` is the Q^pi verifier (its params go to `run`). `alpha` and `bok_k`
    set the `pav` score; `prover_fn`, a ValueFn returning a prover verifier's Q^mu
    (score `pav` only), replaces the Best-of-`bok_k` prover, and `run` then
    takes its params as `prover_params`.

    `slots` > 0 runs the search by continuous batching (`run` goes through
    `pavjax.search.continuous_beam.ContinuousBeam`): `slots` problems at once, each
    going on to its next step as soon as its own candidates have ended, and a
    finished problem's rows taking the next prompt. 0 runs every prompt in lockstep.
    Both draw the same tokens (per-problem keys, `candidate_keys`). `min_ready`: see
    `continuous_beam.ContinuousBeam` (0: its default).
    """
    if score not in SCORES:
      raise ValueError(f"score={score!r} is not one of {sorted(SCORES)}")
    if prover_fn is not None and score != "pav":
      raise ValueError(f"a prover_fn only enters the 'pav' score, not {score!r}")
    self.lm, self.value_fn, self.prover_fn = lm, value_fn, prover_fn
    self.alpha = alpha
    self.n, self.c = beam_width, expansions
    self.max_steps, self.step_tokens = max_steps, max_step_tokens
    self.boundary = None if boundary is None else boundary.arrays()
    self.stop = (tuple(int(t) for t in step_end_ids) if boundary is None else ()) + (
        int(eos_id),)
    self.eos_id, self.pad_id = int(eos_id), pad_id
    self.score_fn = functools.partial(SCORES[score], alpha=alpha, k=bok_k)
    self.method = method if method is not None else methods.Temperature(1.0)
    if slots < 0:
      raise ValueError(f"slots={slots} must be >= 0 (0: static batching)")
    self.slots, self.min_ready = int(slots), int(min_ready)
    self._continuous = None  # the continuous-batching runner, built on first use
    self._init = jax.jit(self._init_impl, static_argnames=("cache_size",))
    self._expand = jax.jit(self._expand_impl)
    self._values = jax.jit(self._values_impl)
    self._prover_values = jax.jit(self._prover_values_impl)
    self._select = jax.jit(self._select_impl)
    self._judge = jax.jit(self._judge_impl)

  # --- jitted pieces -------------------------------------------------------------

  def _init_impl(self, params, vparams, prompts, lengths, pparams=None, *, cache_size):
    cache, logits = sampler_lib.prefill(self.lm, params, prompts, lengths, cache_size=cache_size)
    b, p = prompts.shape
    hist = jnp.zeros((b, cache_size), jnp.int32).at[:, :p].set(prompts)
    q = self._values_impl(vparams, hist, cache.start, cache.index)
    rep = lambda x: jnp.repeat(x, self.n, axis=0)  # the root fills all N rows
    qmu = None
    if self.prover_fn is not None:  # the root's Q^mu: step 1's baseline
      qmu = rep(self._prover_values_impl(pparams, hist, cache.start, cache.index))
    states = None if self.boundary is None else jnp.zeros((b * self.n,), jnp.int32)
    return Beam(cache.repeat(self.n), rep(logits), rep(hist), jnp.ones((b * self.n,), bool),
                rep(q), qmu, states)

  def _expand_impl(self, params, beam: Beam, keys):
    """C sampled next steps of every live row, re-aligned in the cache layout.

    keys [R * C]: candidate row r's key (`candidate_keys`)."""
    cache = beam.cache.repeat(self.c)
    alive = jnp.repeat(beam.alive, self.c)
    logits = jnp.repeat(beam.next_logits, self.c, axis=0)
    hist = jnp.repeat(beam.hist, self.c, axis=0)
    state = sampler_lib.init_state(cache, logits, keys, self.step_tokens, self.pad_id)
    state = state.replace(done=~alive)  # dead rows generate nothing
    if beam.boundary_state is not None:  # each row goes on from its prefix's state
      state = state.replace(boundary_state=jnp.repeat(beam.boundary_state, self.c))
    state = sampler_lib.decode(self.lm, params, state, method=self.method,
                               stop_tokens=self.stop, pad_id=self.pad_id,
                               boundary=self.boundary)
    index0, index1 = cache.index, state.cache.index
    hist = jax.lax.dynamic_update_slice(hist, state.tokens, (0, index0))
    # Each row's last real token moves to slot index1 - 1; its padding wraps below start.
    ends = index0 + state.lengths - 1
    shift = (index1 - 1) - ends
    new_cache = state.cache.align_prefixes(ends, hist.shape[1], index=index1)
    hist = shift_slots(hist, shift, hist.shape[1], axis=1)
    last = jnp.take_along_axis(state.tokens, jnp.maximum(state.lengths - 1, 0)[:, None], 1)[:, 0]
    # Candidates carry their parent's values (the baselines of their advantage).
    qmu = None if beam.qmu is None else jnp.repeat(beam.qmu, self.c)
    states = None if beam.boundary_state is None else state.boundary_state
    return (Beam(new_cache, state.next_logits, hist, alive, jnp.repeat(beam.q, self.c), qmu,
                 states), state.lengths, last, state.finished)

  def _values_impl(self, vparams, hist, start, index):
    """Verifier value of each row's prefix: slots [start, index) re-packed to the left."""
    return _prefix_values(self.value_fn, vparams, hist, start, index)

  def _prover_values_impl(self, pparams, hist, start, index):
    """The prover verifier's Q^mu of each row's prefix (as `_values_impl`)."""
    return _prefix_values(self.prover_fn, pparams, hist, start, index)

  def _judge_impl(self, vparams, pparams, hist, start, index, q_parent, qmu_parent, alive,
                  step_len, last, stopped) -> dict:
    """Values, scores and step status of candidate rows (whole problems' groups of N * C).

    Returns q, qmu (None without a prover verifier), the scores s, eos (the step ended
    the response), ended (it ended at a step boundary, not EOS or the token budget)
    and valid (a live candidate with a step, not a duplicate of an earlier one)."""
    q = self._values_impl(vparams, hist, start, index)
    qmu = None
    if self.prover_fn is not None:
      qmu = self._prover_values_impl(pparams, hist, start, index)
      scores = score_pav_prover(q, qmu, qmu_parent, self.alpha)
    else:
      scores = self.score_fn(q, q_parent)
    eos = last == self.eos_id
    return {"q": q, "qmu": qmu, "s": scores, "eos": eos,
            "ended": stopped & ~eos & (step_len > 0),
            "valid": _dedupe(hist, alive & (step_len > 0), self.n * self.c)}

  def _select_impl(self, cand: Beam, scores, keep):
    """Top N of each problem's N * C candidates among `keep` (others get -inf)."""
    group = self.n * self.c
    masked = jnp.where(keep, scores, -jnp.inf).reshape(-1, group)
    top_scores, top = jax.lax.top_k(masked, self.n)  # [P, N]
    rows = (top + jnp.arange(masked.shape[0])[:, None] * group).reshape(-1)
    take = lambda x: jnp.take(x, rows, axis=0)
    # A problem's survivors come from its own candidates: with the problems split over
    # the data-parallel devices, every gathered cache row is on its own device.
    return Beam(cand.cache.gather(rows, groups=masked.shape[0]), take(cand.next_logits),
                take(cand.hist), jnp.isfinite(top_scores).reshape(-1), take(cand.q),
                None if cand.qmu is None else take(cand.qmu),
                None if cand.boundary_state is None else take(cand.boundary_state))

  # --- host loop -----------------------------------------------------------------

  def run(self, params, vparams, prompts: Sequence[Sequence[int]], rng: jax.Array,
          prompt_sharding=None, prover_params=None,
          problem_keys: jax.Array | None = None) -> SearchResult:
    """Searches every prompt; returns pools, chosen responses and compute counters.

    `prover_params` go to `prover_fn` (required with it, ignored without it).
    Problem b draws with `problem_keys[b]` (default `fold_in(rng, b)`): its
    candidates' tokens depend on that key alone, not on the other prompts or on
    the batching. Counters: prefill_tokens, policy_tokens (generated), candidates,
    and the tokens each verifier read: verifier_tokens (Q^pi) and prover_tokens
    (Q^mu of a prover verifier; 0 with the closed-form BoK prover). `prompt_sharding`
    lays the prompts out for static batching (the continuous arena ignores it).
    """
    prover = self.prover_fn is not None
    if prover and prover_params is None:
      raise ValueError("this search has a prover_fn: pass its prover_params to run()")
    if problem_keys is None:
      problem_keys = sampler_lib.row_keys_for(rng, len(prompts))
    if self.slots:
      if self._continuous is None:
        from pavjax.search import continuous_beam  # pylint: disable=g-import-not-at-top
        self._continuous = continuous_beam.ContinuousBeam(self, self.slots, self.min_ready)
      return self._continuous.run(params, vparams, prompts, problem_keys,
                                  prover_params=prover_params)
    tokens, lengths = sampler_lib.left_pad(prompts, self.pad_id)
    p = tokens.shape[1]
    cache_size = p + self.max_steps * self.step_tokens
    if prompt_sharding is not None:
      tokens = jax.device_put(tokens, prompt_sharding)
    beam = self._init(params, vparams, jnp.asarray(tokens), jnp.asarray(lengths),
                      prover_params if prover else None, cache_size=cache_size)
    per_problem = new_counters(lengths, prover)
    pools: list[list[dict]] = [[] for _ in prompts]
    group = self.n * self.c
    row_steps = 0
    problems = np.arange(len(prompts))
    for step in range(self.max_steps):
      keys = candidate_keys(problem_keys, jnp.full((len(prompts),), step, jnp.int32), group)
      cand, step_len, last, stopped = self._expand(params, beam, keys)
      judged = self._judge(vparams, prover_params if prover else None, cand.hist,
                           cand.cache.start, cand.cache.index, cand.q, cand.qmu, cand.alive,
                           step_len, last, stopped)
      host = shd.to_host({**{k: v for k, v in judged.items() if v is not None},
                          "alive": cand.alive, "len": step_len, "start": cand.cache.start,
                          "index": cand.cache.index})
      row_steps += int(host["len"].max(initial=0)) * host["len"].size  # decode ran its longest
      cont = record_step(host, lambda: shd.to_host(cand.hist), problems,
                         np.full(len(prompts), step), group=group, prompt_lengths=lengths,
                         max_steps=self.max_steps, pools=pools, per_problem=per_problem)
      beam = self._select(cand.replace(q=judged["q"], qmu=judged["qmu"]), judged["s"],
                          jnp.asarray(cont))
      if not bool(shd.to_host(jnp.any(beam.alive))):
        break
    return search_result(pools, per_problem, {"row_steps": row_steps})


def continues(judged, final):
  """Which judged candidates may be kept for the next step: valid ones that ended a
  step (not the response, not at the token budget), unless the step was the last
  (`final`). For numpy (the host's book-keeping) and jax arrays (the arena's) alike."""
  return judged["valid"] & judged["ended"] & ~judged["eos"] & ~final


def new_counters(prompt_lengths: np.ndarray, prover: bool) -> dict[str, np.ndarray]:
  """Per-problem compute counters after the root: its prefill and verifier reads.

  A prover verifier reads exactly what the Q^pi verifier reads: the root prompt,
  then each live candidate's whole prefix."""
  lengths = np.asarray(prompt_lengths, np.int64)
  zeros = np.zeros_like(lengths)
  return {"prefill_tokens": lengths.copy(), "verifier_tokens": lengths.copy(),
          "prover_tokens": lengths.copy() if prover else zeros.copy(),
          "policy_tokens": zeros.copy(), "candidates": zeros.copy()}


def record_step(host: dict[str, np.ndarray], hist: Callable[[], np.ndarray],
                problems: np.ndarray, steps: np.ndarray, *, group: int,
                prompt_lengths: np.ndarray, max_steps: int, pools: list[list[dict]],
                per_problem: dict[str, np.ndarray]) -> np.ndarray:
  """Books one step of the candidates of `problems` [k] (distinct; at `steps` [k]).

  `host` holds `_judge_impl`'s arrays and the candidates' alive, len (step
  tokens), start and index, [k * group] each (problem-major); `hist()` fetches
  their token rows, only when a candidate leaves for the pool. Adds the step's
  compute to `per_problem` and the candidates that are done (an ended response,
  a cut step, the step budget) to `pools`. Returns which may continue [k * group].
  """
  cont = continues(host, np.repeat(np.asarray(steps) == max_steps - 1, group))
  done = host["valid"] & ~cont
  alive = host["alive"].reshape(-1, group)
  index = np.broadcast_to(host["index"], host["start"].shape)  # static search: one index
  seq_len = np.where(alive, (index - host["start"]).reshape(-1, group), 0).sum(1)
  per_problem["policy_tokens"][problems] += np.where(alive, host["len"].reshape(-1, group),
                                                     0).sum(1)
  per_problem["verifier_tokens"][problems] += seq_len
  if "qmu" in host:
    per_problem["prover_tokens"][problems] += seq_len
  per_problem["candidates"][problems] += alive.sum(1)
  done_rows = np.flatnonzero(done)
  if done_rows.size:
    rows = np.asarray(hist())
    for r in done_rows:
      g = r // group
      prob = int(problems[g])
      seq = rows[r, host["start"][r]:index[r]]
      entry = {"tokens": [int(t) for t in seq[prompt_lengths[prob]:]],
               "q": float(host["q"][r]), "score": float(host["s"][r]),
               "step": int(steps[g]) + 1, "finished": bool(host["eos"][r])}
      if "qmu" in host:
        entry["q_mu"] = float(host["qmu"][r])
      pools[prob].append(entry)
  return cont


def candidate_keys(problem_keys: jax.Array, steps: jax.Array, group: int) -> jax.Array:
  """The keys of problems' candidates at a step: [B] keys, [B] steps -> [B * group].

  Candidate j of problem b at step t draws with fold_in(fold_in(problem_keys[b], t), j),
  whichever batch, row or slot serves it: the static and continuous searches agree.
  """
  at_step = jax.vmap(jax.random.fold_in)(problem_keys, jnp.asarray(steps, jnp.int32))
  return jax.vmap(lambda k: sampler_lib.row_keys_for(k, group))(at_step).reshape(
      (-1,) + problem_keys.shape[1:])


def _prefix_values(fn: ValueFn, params, hist, start, index) -> jax.Array:
  """fn's value of each row's prefix: slots [start, index) re-packed to the left."""
  s = hist.shape[1]
  src = jnp.arange(s, dtype=jnp.int32)[None, :] + start[:, None]
  lengths = index - start
  tokens = jnp.where(jnp.arange(s)[None, :] < lengths[:, None],
                     jnp.take_along_axis(hist, jnp.minimum(src, s - 1), axis=1), 0)
  return fn(params, tokens, lengths).astype(jnp.float32)


def search_result(pools: list[list[dict]], per_problem: dict[str, np.ndarray],
                  decode: dict[str, int] | None = None) -> SearchResult:
  """Chooses each problem's answer: the finished pool member with the highest Q.

  Unfinished members (cut by `max_steps` or `max_step_tokens`) are never answers,
  whatever their Q: they would be graded as truncated. A problem whose pool holds
  no finished response gets the empty answer (a miss) and counts in `no_finished`.
  """
  finished = [[e for e in pool if e["finished"]] for pool in pools]
  answers = [max(f, key=lambda e: e["q"])["tokens"] if f else [] for f in finished]
  per_problem = {**per_problem, "no_finished": np.array([0 if f else 1 for f in finished],
                                                       np.int64)}
  counters = {k: int(v.sum()) for k, v in per_problem.items()}
  return SearchResult(pools, answers, counters, per_problem, dict(decode or {}))


def run_dvts(search: StepBeamSearch, params, vparams, prompts: Sequence[Sequence[int]],
             rng: jax.Array, subtrees: int, prompt_sharding=None,
             prover_params=None, problem_keys: jax.Array | None = None) -> SearchResult:
  """Diverse verifier tree search: `subtrees` independent beams per prompt.

  A budget of N beam rows becomes `subtrees` beams of `search.n = N / subtrees`
  rows each, run side by side as separate problems (their own prefill, their
  own keys, no merging of identical candidates across them). Their pools are
  joined and the answer is the joined pool's top Q; counters add up.
  `prover_params` go to `search.run` (a search with a prover verifier). Subtree s of
  prompt b draws with `fold_in(problem_keys[b], s)` (default keys `fold_in(rng, b)`).
  """
  if subtrees < 1:
    raise ValueError(f"subtrees={subtrees} must be >= 1")
  repeated = [p for p in prompts for _ in range(subtrees)]
  if problem_keys is None:
    problem_keys = sampler_lib.row_keys_for(rng, len(prompts))
  subtree_keys = jax.vmap(lambda k: sampler_lib.row_keys_for(k, subtrees))(problem_keys)
  res = search.run(params, vparams, repeated, rng, prompt_sharding, prover_params,
                   problem_keys=subtree_keys.reshape((-1,) + problem_keys.shape[1:]))
  pools = [sum(res.pools[i * subtrees:(i + 1) * subtrees], []) for i in range(len(prompts))]
  per_problem = {k: v.reshape(len(prompts), subtrees).sum(1) for k, v in res.per_problem.items()
                 if k != "no_finished"}  # recounted over the joined pools
  return search_result(pools, per_problem, res.decode)
