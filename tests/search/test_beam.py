"""Step-level beam search on a hand-made policy and verifier (the paper's Fig. 2a tree).

With a prover verifier too: a hand-made Q^mu table of a separate prover policy.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from pavjax import rewards
from pavjax import sharding as shd
from pavjax.models import Transformer, TransformerConfig
from pavjax.sampling import TransformerLM
from pavjax.search import StepBeamSearch, compute, run_dvts
from pavjax.search.beam import candidate_keys
from pavjax.testing import BigramLM

PAD, BOS, EOS = 0, 1, 2
ACTIONS = tuple(range(4, 12))
NEG = -1e9
# Fig. 2a: parents a1 (token 4, V=0.6) and a2 (token 5, V=0.3); a1's children 6, 7, 8
# have Q = 0.55, 0.50, 0.70 and a2's children 9, 10, 11 have Q = 0.50, 0.35, 0.25.
Q = {BOS: 0.45, 4: 0.6, 5: 0.3, 6: 0.55, 7: 0.50, 8: 0.70, 9: 0.50, 10: 0.35, 11: 0.25}
# A separate prover mu's values of the same prefixes. It rates a2's children far above
# their parent and a1's below theirs, so A^mu ranks the children unlike A^{BoK}; the
# parents' own Q^mu differ from the root's, so a search that forgot which parent a
# candidate came from would rank them differently again.
QMU = {BOS: 0.5, 4: 0.8, 5: 0.2, 6: 0.9, 7: 0.6, 8: 0.4, 9: 0.3, 10: 0.8, 11: 0.5}
CHILDREN = {4: (6, 7, 8), 5: (9, 10, 11)}


def _policy_table():
  table = np.full((12, 12), NEG, np.float32)
  def uniform(after, choices):
    table[after, list(choices)] = 0.0
  uniform(BOS, (4, 5, EOS))  # the root may also stop at once (a finished beam)
  uniform(4, (6, 7, 8))
  uniform(5, (9, 10, 11))
  for tok in (PAD, EOS, 3) + tuple(range(6, 12)):
    uniform(tok, (EOS,))
  return jnp.asarray(table)


def _value_fn(qtab, tokens, lengths):
  """Q of a prefix by its last step; a response that stops at once is worth 0."""
  last = jnp.take_along_axis(tokens, (lengths - 1)[:, None], 1)[:, 0]
  prev = jnp.take_along_axis(tokens, jnp.maximum(lengths - 2, 0)[:, None], 1)[:, 0]
  return jnp.where(last == EOS, jnp.where(prev == BOS, 0.0, qtab[prev]), qtab[last])


def _table(values=None):
  q = np.zeros(12, np.float32)
  for tok, value in (Q if values is None else values).items():
    q[tok] = value
  return jnp.asarray(q)


_qtab = _table


def _search(score, alpha=10.0, problems=8, sharding=None, bok_k=1, prover=None):
  """Width-2 beams; `prover`, a Q^mu table, makes the prover a verifier (`_value_fn` of it)."""
  search = StepBeamSearch(BigramLM(), _value_fn, beam_width=2, expansions=32, max_steps=3,
                          max_step_tokens=1, step_end_ids=ACTIONS, eos_id=EOS, score=score,
                          alpha=alpha, bok_k=bok_k,
                          prover_fn=None if prover is None else _value_fn)
  return search.run(_policy_table(), _qtab(), [[BOS]] * problems, jax.random.PRNGKey(0),
                    prompt_sharding=sharding, prover_params=prover)


def _pool_sets(result):
  return [{tuple(e["tokens"]) for e in pool} for pool in result.pools]


@pytest.mark.parametrize("score,kept", [("q", {(4, 8), (4, 6)}), ("pav", {(5, 9), (4, 8)})])
def test_fig2a_beams_by_q_and_by_advantage(score, kept):
  result = _search(score)
  want = {(EOS,)} | {prefix + (EOS,) for prefix in kept}
  for pool in _pool_sets(result):
    assert pool == want
  # The response stopped at the root finished at step 1 and was never extended.
  for pool in result.pools:
    early = [e for e in pool if e["tokens"] == [EOS]]
    assert len(early) == 1 and early[0]["step"] == 1 and early[0]["finished"]
  # The answer is the pool member the verifier values most: (4, 8) in both cases.
  assert all(a == [4, 8, EOS] for a in result.answers)


def test_the_answer_is_a_finished_response_even_when_an_unfinished_one_rates_higher():
  def run(table, max_steps):
    search = StepBeamSearch(BigramLM(), _value_fn, beam_width=2, expansions=32,
                            max_steps=max_steps, max_step_tokens=1, step_end_ids=ACTIONS,
                            eos_id=EOS, score="q")
    return search.run(jnp.asarray(table), _qtab(), [[BOS]] * 2, jax.random.PRNGKey(0))

  # Two steps: the beam is cut at (4, 8) with Q 0.7 (unfinished); the only finished
  # response is the root's immediate stop, valued 0. It is the answer.
  result = run(_policy_table(), max_steps=2)
  for pool in result.pools:
    cut = max((e for e in pool if not e["finished"]), key=lambda e: e["q"])
    assert cut["tokens"] == [4, 8] and cut["q"] == pytest.approx(0.7)
  assert result.answers == [[EOS], [EOS]] and result.counters["no_finished"] == 0
  # The root may not stop and one step is allowed: no response finishes; no answer.
  table = np.array(_policy_table())
  table[BOS, EOS] = NEG
  result = run(table, max_steps=1)
  assert all(pool and not any(e["finished"] for e in pool) for pool in result.pools)
  assert result.answers == [[], []]
  np.testing.assert_array_equal(result.per_problem["no_finished"], [1, 1])
  assert result.counters["no_finished"] == 2


@pytest.mark.parametrize("with_prover", [False, True])
def test_compute_counters_match_hand_counts(with_prover):
  result = _search("pav", problems=4, prover=_table(QMU) if with_prover else None)
  # Per problem: 3 steps x (N=2 rows x C=32) candidates of one token each.
  assert result.counters["policy_tokens"] == 4 * 3 * 64
  assert result.counters["candidates"] == 4 * 3 * 64
  # The root prompt once, then every candidate's whole prefix: lengths 2, 3, 4.
  assert result.counters["verifier_tokens"] == 4 * (1 + 64 * (2 + 3 + 4))
  assert result.counters["prefill_tokens"] == 4
  # A prover verifier reads the same as the Q^pi verifier; closed-form BoK reads nothing.
  prover_tokens = 4 * (1 + 64 * (2 + 3 + 4)) if with_prover else 0
  assert result.counters["prover_tokens"] == prover_tokens
  for name, total in result.counters.items():  # per problem: a quarter of each total
    np.testing.assert_array_equal(result.per_problem[name], [total // 4] * 4)
  # FLOPs = 2 x params x tokens, the prover's tokens at the prover's size.
  want = 2 * (1000 * (4 + 4 * 3 * 64) + 10 * 4 * (1 + 64 * 9) + 3 * prover_tokens)
  assert compute.flops(result.counters, policy_params=1000, verifier_params=10,
                       prover_params=3) == want


def _hand_pav_scores(alpha):
  """Step 2's effective rewards Q^pi(c) + alpha * (Q^mu(c) - Q^mu(parent)), by hand."""
  return {(p, c): Q[c] + alpha * (QMU[c] - QMU[p]) for p, kids in CHILDREN.items()
          for c in kids}


def test_prover_verifier_keeps_the_beams_its_advantages_predict():
  scores = _hand_pav_scores(alpha=10.0)
  # 6: 1.55, 7: -1.5, 8: -3.3 under a1; 9: 1.5, 10: 6.35, 11: 3.25 under a2.
  kept = set(sorted(scores, key=scores.get)[-2:])
  assert kept == {(5, 10), (5, 11)}
  # Not what BoK(Q^pi) keeps (K=1: {(5, 9), (4, 8)}, test above; K=4: {(5, 9), (5, 10)}),
  # nor the choice with every parent's Q^mu taken as the root's ({(4, 6), (5, 10)}).
  bok4 = {(p, c): Q[c] + 10 * float(rewards.bok_q(Q[c], 4) - rewards.bok_q(Q[p], 4))
          for (p, c) in scores}
  assert set(sorted(bok4, key=bok4.get)[-2:]) == {(5, 9), (5, 10)}
  rooted = {(p, c): Q[c] + 10 * (QMU[c] - QMU[BOS]) for (p, c) in scores}
  assert set(sorted(rooted, key=rooted.get)[-2:]) == {(4, 6), (5, 10)}

  result = _search("pav", prover=_table(QMU))
  want = {(EOS,)} | {prefix + (EOS,) for prefix in kept}
  for pool in result.pools:
    assert {tuple(e["tokens"]) for e in pool} == want
    by_tokens = {tuple(e["tokens"]): e for e in pool}
    # The root's early stop: Q = Q^mu = 0, against the root's Q^mu of 0.5.
    assert by_tokens[(EOS,)]["score"] == pytest.approx(10 * (0.0 - 0.5))
    # Stopping after (5, 10): the value is the last step's (Q^pi 0.35, Q^mu 0.8), and
    # so is its parent's Q^mu: no advantage.
    assert by_tokens[(5, 10, EOS)]["q_mu"] == pytest.approx(0.8)
    assert by_tokens[(5, 10, EOS)]["score"] == pytest.approx(0.35)
  # The answer is still Q^pi's choice among the pool: (5, 10) at 0.35 over (5, 11) at 0.25.
  assert all(a == [5, 10, EOS] for a in result.answers)


@pytest.mark.parametrize("k", [1, 4])
def test_prover_verifier_equal_to_bok_gives_the_bok_beams(k):
  bok = _search("pav", bok_k=k)
  verifier = _search("pav", bok_k=k, prover=rewards.bok_q(_qtab(), k))  # Q^mu = BoK_K(Q^pi)
  strip = lambda pools: [[{n: v for n, v in e.items() if n != "q_mu"} for e in pool]
                         for pool in pools]
  assert strip(verifier.pools) == bok.pools  # the same beams, scores bit for bit
  assert verifier.answers == bok.answers
  assert {n: v for n, v in verifier.counters.items() if n != "prover_tokens"} == {
      n: v for n, v in bok.counters.items() if n != "prover_tokens"}


def test_prover_fn_needs_the_pav_score_and_its_params():
  with pytest.raises(ValueError, match="only enters the 'pav' score"):
    StepBeamSearch(BigramLM(), _value_fn, beam_width=2, expansions=2, max_steps=1,
                   max_step_tokens=1, step_end_ids=ACTIONS, eos_id=EOS, score="q",
                   prover_fn=_value_fn)
  search = StepBeamSearch(BigramLM(), _value_fn, beam_width=2, expansions=2, max_steps=1,
                          max_step_tokens=1, step_end_ids=ACTIONS, eos_id=EOS, score="pav",
                          prover_fn=_value_fn)
  with pytest.raises(ValueError, match="prover_params"):
    search.run(_policy_table(), _qtab(), [[BOS]], jax.random.PRNGKey(0))


def test_dvts_runs_independent_subtrees_and_joins_their_pools():
  search = StepBeamSearch(BigramLM(), _value_fn, beam_width=1, expansions=32, max_steps=3,
                          max_step_tokens=1, step_end_ids=ACTIONS, eos_id=EOS, score="q",
                          bok_k=1)
  result = run_dvts(search, _policy_table(), _qtab(), [[BOS]] * 3, jax.random.PRNGKey(0),
                    subtrees=2)
  for pool in result.pools:
    # Each width-1 subtree keeps the best Q step, (4, 8), and pools the root's early stop.
    assert sorted(tuple(e["tokens"]) for e in pool) == [(EOS,), (EOS,), (4, 8, EOS), (4, 8, EOS)]
  assert all(a == [4, 8, EOS] for a in result.answers)
  # Two subtrees, each: its own prefill, 3 steps x 1 row x 32 candidates of one token.
  np.testing.assert_array_equal(result.per_problem["prefill_tokens"], [2, 2, 2])
  np.testing.assert_array_equal(result.per_problem["policy_tokens"], [2 * 3 * 32] * 3)
  assert result.counters["policy_tokens"] == 3 * 2 * 3 * 32


def test_dvts_passes_the_prover_verifier_through():
  search = StepBeamSearch(BigramLM(), _value_fn, beam_width=1, expansions=32, max_steps=3,
                          max_step_tokens=1, step_end_ids=ACTIONS, eos_id=EOS, score="pav",
                          alpha=10.0, prover_fn=_value_fn)
  result = run_dvts(search, _policy_table(), _qtab(), [[BOS]] * 3, jax.random.PRNGKey(0),
                    subtrees=2, prover_params=_table(QMU))
  # Width 1 keeps a1 (0.6 + 10 * (0.8 - 0.5) = 3.6 vs a2's -2.7), then its child with
  # the best Q^pi + 10 * A^mu: 6 (1.55; 7: -1.5, 8: -3.3). Q alone or BoK keeps (4, 8).
  for pool in result.pools:
    assert sorted(tuple(e["tokens"]) for e in pool) == [(EOS,), (EOS,), (4, 6, EOS), (4, 6, EOS)]
  assert all(a == [4, 6, EOS] for a in result.answers)
  # Each subtree's prover reads its root once and every candidate's prefix.
  np.testing.assert_array_equal(result.per_problem["prover_tokens"],
                                [2 * (1 + 32 * (2 + 3 + 4))] * 3)


@pytest.mark.parametrize("with_prover", [False, True])
def test_results_do_not_depend_on_the_number_of_devices(with_prover):
  mesh = shd.make_mesh({"data": -1, "fsdp": 1, "tensor": 1})
  prover = _table(QMU) if with_prover else None
  sharded = _search("pav", sharding=NamedSharding(mesh, P("data", None)), prover=prover)
  single = _search("pav", prover=prover)
  assert sharded.pools == single.pools and sharded.counters == single.counters


def test_beam_cache_matches_recomputing_each_kept_prefix():
  """After steps of different lengths, every kept row's cache still encodes its prefix."""
  cfg = TransformerConfig(vocab_size=16, embed_dim=32, num_layers=2, num_heads=4,
                          num_kv_heads=2, head_dim=8, mlp_dim=64, max_len=64)
  model = Transformer(cfg)
  params = nn.unbox(model.init(jax.random.PRNGKey(0), jnp.zeros((1, 4), jnp.int32))["params"])
  params = {**params, "embedding": params["embedding"] * 0.3}  # flatter: varied step lengths
  value = lambda vp, tokens, lengths: jnp.sum(tokens, axis=1) / (100.0 + lengths)  # any order
  search = StepBeamSearch(TransformerLM(model), value, beam_width=2, expansions=3,
                          max_steps=3, max_step_tokens=4, step_end_ids=(5, 6, 7), eos_id=2,
                          score="q")
  tokens = np.array([[0, 0, 1, 8, 9], [1, 10, 11, 12, 13]], np.int32)
  lengths = np.array([3, 5], np.int32)
  beam = search._init(params, None, jnp.asarray(tokens), jnp.asarray(lengths), cache_size=17)
  full = jax.jit(lambda p, x: model.apply({"params": p}, x).logits)
  for step in range(2):
    keys = candidate_keys(jax.random.split(jax.random.PRNGKey(7), 2), jnp.full((2,), step), 6)
    cand, step_len, _, _ = search._expand(params, beam, keys)
    assert len(set(np.asarray(step_len).tolist())) > 1  # steps of different lengths
    q = search._values(None, cand.hist, cand.cache.start, cand.cache.index)
    beam = search._select(cand.replace(q=q), q, cand.alive & (step_len > 0))
    hist, start = np.asarray(beam.hist), np.asarray(beam.cache.start)
    index = int(beam.cache.index)
    for r in range(hist.shape[0]):
      prefix = hist[r, start[r]:index]
      buf = np.zeros((1, 32), np.int32)
      buf[0, :len(prefix)] = prefix
      want = full(params, buf)[0, len(prefix) - 1]
      np.testing.assert_allclose(beam.next_logits[r], want, atol=1e-4, rtol=1e-4)
