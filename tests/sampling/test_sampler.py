"""Sampler: hand-made logit tables, stop tokens, one compile per bucket, forking."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pavjax.models import Transformer, TransformerConfig
from pavjax.sampling import (Greedy, Sampler, Temperature, TopK, TopP, TransformerLM,
                             left_pad)
from pavjax.testing import BigramLM

NEG = -1e9


def _table(next_of: dict[int, int], vocab: int = 8) -> jnp.ndarray:
  """Deterministic successor table: token a -> next_of[a] (others uniform)."""
  table = np.zeros((vocab, vocab), np.float32)
  for a, b in next_of.items():
    table[a] = NEG
    table[a, b] = 0.0
  return jnp.asarray(table)


def _gen(sampler, params, prompts, **kw):
  toks, lens = left_pad(prompts)
  return sampler.generate(params, jnp.asarray(toks), jnp.asarray(lens), jax.random.PRNGKey(0),
                          **kw)


def test_table_lm_gives_exact_sequences_and_stops():
  table = _table({1: 2, 2: 3, 3: 4, 4: 5, 5: 1, 6: 7, 7: 6})
  sampler = Sampler(BigramLM())
  out = _gen(sampler, table, [[1], [6, 6, 7], [3]], max_new_tokens=6, method=Greedy(),
             stop_tokens=(5,))
  np.testing.assert_array_equal(out.tokens, [[2, 3, 4, 5, 0, 0],
                                             [6, 7, 6, 7, 6, 7],
                                             [4, 5, 0, 0, 0, 0]])
  np.testing.assert_array_equal(out.lengths, [4, 6, 2])
  np.testing.assert_array_equal(out.finished, [True, False, True])
  # Deterministic tables: every chosen token has probability 1, padding has logprob 0.
  np.testing.assert_allclose(out.logprobs, 0.0, atol=1e-6)


def test_loop_ends_early_when_all_rows_stopped():
  table = _table({1: 2, 2: 3, 3: 3})
  sampler = Sampler(BigramLM())
  out = _gen(sampler, table, [[1], [2]], max_new_tokens=50, method=Greedy(), stop_tokens=(3,))
  np.testing.assert_array_equal(out.lengths, [2, 1])
  assert int(out.tokens[:, 2:].sum()) == 0


def test_compiles_once_for_two_prompt_lengths_in_a_bucket():
  table = _table({1: 2, 2: 1})
  sampler = Sampler(BigramLM())
  _gen(sampler, table, [[1, 2, 1], [2]], max_new_tokens=4, method=Greedy())
  _gen(sampler, table, [[1, 2, 1, 2, 1, 2], [2, 1, 2, 1, 2]], max_new_tokens=4, method=Greedy())
  assert sampler.num_traces == 1
  _gen(sampler, table, [[1] * 9, [2]], max_new_tokens=4, method=Greedy())  # next bucket
  assert sampler.num_traces == 2


def test_temperature_sampling_matches_table_distribution():
  probs = np.array([0.0, 0.5, 0.3, 0.2])
  table = jnp.log(jnp.asarray(np.tile(probs, (4, 1)) + 1e-30, jnp.float32))
  sampler = Sampler(BigramLM())
  n = 4000
  out = _gen(sampler, table, [[1]] * n, max_new_tokens=1, method=Temperature(1.0))
  counts = np.bincount(np.asarray(out.tokens[:, 0]), minlength=4) / n
  sigma = np.sqrt(probs * (1 - probs) / n)
  assert np.all(np.abs(counts - probs) <= 4 * sigma + 1e-9), counts
  np.testing.assert_allclose(out.logprobs[:, 0], np.log(probs[np.asarray(out.tokens[:, 0])]),
                             rtol=1e-5)


@pytest.mark.parametrize("method,allowed", [(TopK(2), {1, 2}), (TopP(0.7), {1, 2}),
                                            (TopP(0.4), {1})])
def test_truncated_methods_only_draw_allowed_tokens(method, allowed):
  probs = np.array([0.05, 0.5, 0.3, 0.15])
  table = jnp.log(jnp.asarray(np.tile(probs, (4, 1)), jnp.float32))
  out = _gen(Sampler(BigramLM()), table, [[1]] * 512, max_new_tokens=1, method=method)
  assert set(np.asarray(out.tokens[:, 0]).tolist()) == allowed


def test_forked_continuations_equal_independent_prefills():
  cfg = TransformerConfig(vocab_size=24, embed_dim=32, num_layers=2, num_heads=4,
                          num_kv_heads=2, head_dim=8, mlp_dim=64, max_len=64)
  model = Transformer(cfg)
  params = nn.unbox(model.init(jax.random.PRNGKey(0), jnp.zeros((1, 4), jnp.int32))["params"])
  # Flatter logits so sampling is genuinely random.
  params = {**params, "embedding": params["embedding"] * 0.3}
  sampler = Sampler(TransformerLM(model))
  prompts = [[1, 2, 3], [4, 5, 6, 7, 8]]
  n = 3
  forked = _gen(sampler, params, prompts, max_new_tokens=10, method=Temperature(1.0),
                num_samples=n)
  independent = _gen(sampler, params, [p for p in prompts for _ in range(n)],
                     max_new_tokens=10, method=Temperature(1.0))
  np.testing.assert_array_equal(forked.tokens, independent.tokens)
  np.testing.assert_allclose(forked.logprobs, independent.logprobs, atol=1e-5)
  # The n continuations of a prompt differ from each other (keys are per row).
  assert len({tuple(np.asarray(r)) for r in forked.tokens[:n]}) > 1


def test_left_pad_rejects_empty_prompt_and_buckets():
  toks, lens = left_pad([[5, 6], [7, 8, 9]])
  assert toks.shape == (2, 8) and list(lens) == [2, 3]
  assert list(toks[0, -2:]) == [5, 6] and toks[0, :6].sum() == 0
  with pytest.raises(ValueError, match="at least one token"):
    left_pad([[], [1]])
