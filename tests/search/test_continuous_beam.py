"""Beam search by continuous batching against the static (lockstep) search.

Both draw candidate j of problem b at step t with the same key, so they must give
the same pools, answers and counters, token for token; the arena must decode no
more row-steps than the lockstep batch, and every busy row-step is a policy token.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pavjax.models import Transformer, TransformerConfig
from pavjax.sampling import TransformerLM
from pavjax.search import StepBeamSearch, run_dvts
from pavjax.step_boundary import StepBoundary
from pavjax.testing import BigramLM
from tests.search import test_beam as fig2a

# Prompts of different lengths: the arena's rows start at different slots.
PROMPTS = [[1, 8, 9], [1, 10, 11, 12, 13], [3, 4], [5, 6, 7, 8], [9], [10, 11], [12, 3, 4]]


@pytest.fixture(scope="module")
def model_and_params():
  cfg = TransformerConfig(vocab_size=16, embed_dim=32, num_layers=2, num_heads=4,
                          num_kv_heads=2, head_dim=8, mlp_dim=64, max_len=64)
  model = Transformer(cfg)
  params = nn.unbox(model.init(jax.random.PRNGKey(0), jnp.zeros((1, 4), jnp.int32))["params"])
  # Flatter logits: steps of many different lengths, some cut by the token budget.
  return model, {**params, "embedding": params["embedding"] * 0.3}


def _value(vp, tokens, lengths):  # depends on every token and the length
  del vp
  w = jnp.arange(1, tokens.shape[1] + 1) % 5 + 1
  return jnp.sum(tokens * w, axis=1) % 17 / (17.0 + lengths)


def _prover(vp, tokens, lengths):
  return jax.nn.sigmoid(vp * _value(None, tokens, lengths) - 0.1)


def _search(model, slots, *, score="pav", prover=False, boundary=False, width=2, steps=4,
            min_ready=0):
  kw = (dict(boundary=StepBoundary.from_ids((5, 6, 7), 16)) if boundary
        else dict(step_end_ids=(5, 6, 7)))
  return StepBeamSearch(TransformerLM(model), _value, beam_width=width, expansions=3,
                        max_steps=steps, max_step_tokens=4, eos_id=2, score=score,
                        prover_fn=_prover if prover else None, slots=slots,
                        min_ready=min_ready, **kw)


def _assert_same(static, cont):
  assert cont.pools == static.pools
  assert cont.answers == static.answers
  assert cont.counters == static.counters
  for name, v in static.per_problem.items():
    np.testing.assert_array_equal(cont.per_problem[name], v, err_msg=name)


@pytest.mark.parametrize("slots", [1, 3, 7])
@pytest.mark.parametrize("score,prover,boundary", [("pav", False, False), ("q", False, True),
                                                   ("pav", True, False)])
def test_continuous_search_equals_the_static_one(model_and_params, slots, score, prover,
                                                 boundary):
  model, params = model_and_params
  rng = jax.random.PRNGKey(3)
  pp = jnp.float32(4.0) if prover else None
  static = _search(model, 0, score=score, prover=prover, boundary=boundary).run(
      params, None, PROMPTS, rng, prover_params=pp)
  # The run must exercise what continuous batching changes: steps of different lengths,
  # candidates that end, and problems that end at different steps.
  lens = {len(e["tokens"]) for pool in static.pools for e in pool}
  assert len(lens) > 3
  assert len({max(e["step"] for e in pool) for pool in static.pools}) > 1
  cont = _search(model, slots, score=score, prover=prover, boundary=boundary).run(
      params, None, PROMPTS, rng, prover_params=pp)
  _assert_same(static, cont)
  # Busy row-steps are the candidates' tokens; idle ones are counted too.
  assert cont.decode["busy"] == cont.counters["policy_tokens"]
  assert cont.decode["row_steps"] == cont.decode["steps"] * slots * 2 * 3


def test_waiting_for_more_complete_slots_changes_nothing_but_the_rounds(model_and_params):
  model, params = model_and_params
  rng = jax.random.PRNGKey(3)
  static = _search(model, 0).run(params, None, PROMPTS, rng)
  one = _search(model, 4).run(params, None, PROMPTS, rng)
  three = _search(model, 4, min_ready=3).run(params, None, PROMPTS, rng)
  _assert_same(static, three)
  # Fewer rounds, more idle row-steps (slots that wait for others).
  assert three.decode["row_steps"] >= one.decode["row_steps"]


def test_explicit_problem_keys_decide_the_tokens(model_and_params):
  """A problem's pool depends on its own key only: not its batch, place or neighbours."""
  model, params = model_and_params
  keys = jax.random.split(jax.random.PRNGKey(5), len(PROMPTS))
  whole = _search(model, 3).run(params, None, PROMPTS, None, problem_keys=keys)
  order = [4, 0, 6, 2]
  part = _search(model, 0).run(params, None, [PROMPTS[i] for i in order], None,
                               problem_keys=keys[np.array(order)])
  assert part.pools == [whole.pools[i] for i in order]
  other = _search(model, 3).run(params, None, PROMPTS, jax.random.PRNGKey(6))
  assert other.pools != whole.pools  # (the keys do matter)


def _chain_policy(steps_per_problem, step_len=3, vocab=64):
  """A deterministic bigram policy: problem b (prompt token 10 + b) writes
  `steps_per_problem[b]` steps of `step_len` tokens, each ending at its own delimiter,
  the last at EOS. Returns (table, delimiters, the responses)."""
  table = np.full((vocab, vocab), -1e9, np.float32)
  table[0, 2] = 0.0  # (rows with nothing to decode feed pad)
  nxt, delims, responses = 20, [], []
  for b, steps in enumerate(steps_per_problem):
    prev, response = 10 + b, []
    for t in range(steps):
      for i in range(step_len):
        if i < step_len - 1:
          tok, nxt = nxt, nxt + 1
        elif t < steps - 1:
          tok, nxt = nxt, nxt + 1
          delims.append(tok)
        else:
          tok = 2  # EOS
        table[prev, tok] = 0.0
        response.append(tok)
        prev = tok
    responses.append(response)
  assert nxt <= vocab
  return jnp.asarray(table), tuple(delims), responses


def test_a_finished_problem_frees_its_slot_for_the_next():
  """Problems of 1, 4, 2 and 3 steps of 3 tokens, beams of N = 2 x C = 2 rows (G = 4).

  Lockstep in calls of 2 problems (the job's static chunks): (1, 4) runs 4 steps of 3
  tokens on 2G rows, (2, 3) runs 3: (12 + 9) x 2G = 168 row-steps. Two slots: one slot
  serves problem 1 (3 tokens), then 2 (6), then 3 (9), done at 18; the other serves 4,
  done at 12. 18 x 2G = 144 row-steps.
  """
  table, delims, responses = _chain_policy([1, 4, 2, 3])
  value = lambda vp, tokens, lengths: jnp.full(tokens.shape[:1], 0.5)
  search = lambda slots: StepBeamSearch(
      BigramLM(), value, beam_width=2, expansions=2, max_steps=4, max_step_tokens=3,
      step_end_ids=delims, eos_id=2, score="pav", slots=slots)
  prompts = [[10 + b] for b in range(4)]
  keys = jax.random.split(jax.random.PRNGKey(0), 4)
  static = [search(0).run(table, None, prompts[i:i + 2], None, problem_keys=keys[i:i + 2])
            for i in (0, 2)]
  cont = search(2).run(table, None, prompts, None, problem_keys=keys)
  assert cont.answers == responses == static[0].answers + static[1].answers
  assert [len(p) for p in cont.pools] == [1, 1, 1, 1]  # duplicates merged, one response
  assert sum(r.decode["row_steps"] for r in static) == 168
  assert cont.decode["row_steps"] == 144 and cont.decode["steps"] == 18
  # Busy row-steps: step 1 runs all G rows of the root; later steps C rows of the one
  # distinct survivor: 3 x (4 + 2 x (steps - 1)) per problem.
  assert cont.decode["busy"] == cont.counters["policy_tokens"] == 3 * (4 * 4 + 2 * 6)


def test_compilations_are_bounded_by_the_buckets(model_and_params):
  model, params = model_and_params
  search = _search(model, 4)
  search.run(params, None, PROMPTS, jax.random.PRNGKey(0))
  runner = search._continuous
  # Buckets of 1, 2 and 4 slots; one decode, one empty arena.
  assert runner._decode._cache_size() == 1 and runner._empty._cache_size() == 1
  for fn in (runner._stage, runner._fill, runner._round):
    assert fn._cache_size() <= 3
  before = {name: getattr(runner, name)._cache_size() for name in ("_decode", "_round")}
  # Another run of other prompts of the same width compiles nothing new for the decode.
  search.run(params, None, PROMPTS[::-1][:5], jax.random.PRNGKey(1))
  assert runner._decode._cache_size() == before["_decode"]


@pytest.mark.parametrize("prover", [False, True])
def test_fig2a_by_continuous_batching(prover):
  """The paper's Fig. 2a tree (tests/search/test_beam.py): the same beams, pools and
  counters with 3 slots for 8 problems as in lockstep."""
  qmu = fig2a._table(fig2a.QMU) if prover else None
  static = fig2a._search("pav", prover=qmu)
  search = StepBeamSearch(BigramLM(), fig2a._value_fn, beam_width=2, expansions=32,
                          max_steps=3, max_step_tokens=1, step_end_ids=fig2a.ACTIONS,
                          eos_id=fig2a.EOS, score="pav", alpha=10.0, bok_k=1,
                          prover_fn=fig2a._value_fn if prover else None, slots=3)
  cont = search.run(fig2a._policy_table(), fig2a._qtab(), [[fig2a.BOS]] * 8,
                    jax.random.PRNGKey(0), prover_params=qmu)
  _assert_same(static, cont)
  kept = {(5, 10), (5, 11)} if prover else {(5, 9), (4, 8)}
  for pool in cont.pools:
    assert {tuple(e["tokens"]) for e in pool} == {(fig2a.EOS,)} | {k + (fig2a.EOS,)
                                                                    for k in kept}


def test_dvts_by_continuous_batching(model_and_params):
  model, params = model_and_params
  rng = jax.random.PRNGKey(2)
  static = run_dvts(_search(model, 0, width=1), params, None, PROMPTS[:4], rng, subtrees=2)
  cont = run_dvts(_search(model, 3, width=1), params, None, PROMPTS[:4], rng, subtrees=2)
  _assert_same(static, cont)
