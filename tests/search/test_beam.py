"""Step-level beam search on a hand-made policy and verifier (the paper's Fig. 2a tree)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from pavjax import sharding as shd
from pavjax.models import Transformer, TransformerConfig
from pavjax.sampling import TransformerLM
from pavjax.search import StepBeamSearch, run_dvts
from pavjax.testing import BigramLM

PAD, BOS, EOS = 0, 1, 2
ACTIONS = tuple(range(4, 12))
NEG = -1e9
# Fig. 2a: parents a1 (token 4, V=0.6) and a2 (token 5, V=0.3); a1's children 6, 7, 8
# have Q = 0.55, 0.50, 0.70 and a2's children 9, 10, 11 have Q = 0.50, 0.35, 0.25.
Q = {BOS: 0.45, 4: 0.6, 5: 0.3, 6: 0.55, 7: 0.50, 8: 0.70, 9: 0.50, 10: 0.35, 11: 0.25}


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


def _qtab():
  q = np.zeros(12, np.float32)
  for tok, value in Q.items():
    q[tok] = value
  return jnp.asarray(q)


def _search(score, alpha=10.0, problems=8, sharding=None):
  search = StepBeamSearch(BigramLM(), _value_fn, beam_width=2, expansions=32, max_steps=3,
                          max_step_tokens=1, step_end_ids=ACTIONS, eos_id=EOS, score=score,
                          alpha=alpha, bok_k=1)
  return search.run(_policy_table(), _qtab(), [[BOS]] * problems, jax.random.PRNGKey(0),
                    prompt_sharding=sharding)


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


def test_compute_counters_match_hand_counts():
  result = _search("pav", problems=4)
  # Per problem: 3 steps x (N=2 rows x C=32) candidates of one token each.
  assert result.counters["policy_tokens"] == 4 * 3 * 64
  assert result.counters["candidates"] == 4 * 3 * 64
  # The root prompt once, then every candidate's whole prefix: lengths 2, 3, 4.
  assert result.counters["verifier_tokens"] == 4 * (1 + 64 * (2 + 3 + 4))
  assert result.counters["prefill_tokens"] == 4
  for name, total in result.counters.items():  # per problem: a quarter of each total
    np.testing.assert_array_equal(result.per_problem[name], [total // 4] * 4)


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


def test_results_do_not_depend_on_the_number_of_devices():
  mesh = shd.make_mesh({"data": -1, "fsdp": 1, "tensor": 1})
  sharded = _search("pav", sharding=NamedSharding(mesh, P("data", None)))
  single = _search("pav")
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
    cand, step_len, _ = search._expand(params, beam, jax.random.PRNGKey(step))
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
