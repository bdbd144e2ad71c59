"""`prefill` and `prefill_sequences` run the LM head only where it is read; results unchanged."""

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pavjax.models import Transformer, TransformerConfig
from pavjax.sampling import Sampler, TransformerLM, left_pad
from pavjax.sampling import sampler as sampler_lib
from pavjax.testing import BigramLM

CFG = TransformerConfig(vocab_size=40, embed_dim=32, num_layers=2, num_heads=4, num_kv_heads=2,
                        head_dim=8, mlp_dim=64, max_len=64)


def _model():
  model = Transformer(CFG)
  params = nn.unbox(model.init(jax.random.PRNGKey(0), jnp.zeros((1, 4), jnp.int32))["params"])
  return model, params


def test_prefill_matches_full_head_and_skips_it():
  model, params = _model()
  lm = TransformerLM(model)
  padded, lengths = left_pad([[3, 4, 5], [7, 8, 9, 10, 11, 12], [1]])  # [3, 8]
  prompts, lengths = jnp.asarray(padded), jnp.asarray(lengths)
  sampler = Sampler(lm)
  cache, logits = sampler.prefill(params, prompts, lengths, cache_size=12)
  # Reference: the whole [B, P, V] head, then the last position.
  ref_cache = lm.init_cache(3, 12, 8 - lengths)
  ref_logits, ref_cache = lm(params, prompts, ref_cache)
  np.testing.assert_allclose(logits, ref_logits[:, -1], atol=1e-5, rtol=1e-5)
  np.testing.assert_array_equal(cache.k, ref_cache.k)
  np.testing.assert_array_equal(cache.v, ref_cache.v)
  assert int(cache.index) == 8
  hlo = sampler.prefill.lower(params, prompts, lengths, cache_size=12).compile().as_text()
  assert not re.search(r"f32\[3,8,40\]", hlo), "prefill still computes logits at every position"


def test_prefill_sequences_returns_only_the_requested_positions():
  model, params = _model()
  lm = TransformerLM(model)
  sampler = Sampler(lm)
  padded, lengths = left_pad([[3, 4, 5], [7, 8, 9, 10]])  # [2, 8]
  tokens, lengths = jnp.asarray(padded), jnp.asarray(lengths)
  at = jnp.array([[5, 7, 6], [4, 7, 7]], jnp.int32)
  cache, logits = sampler.prefill_sequences(params, tokens, lengths, cache_size=10,
                                            logits_at=at)
  assert logits.shape == (2, 3, 40)
  # Reference: the whole [B, W, V] head, then the requested slots.
  ref_logits, ref_cache = lm(params, tokens, lm.init_cache(2, 10, 8 - lengths))
  np.testing.assert_allclose(logits, jnp.take_along_axis(ref_logits, at[:, :, None], 1),
                             atol=1e-5, rtol=1e-5)
  np.testing.assert_array_equal(cache.k, ref_cache.k)
  hlo = sampler.prefill_sequences.lower(params, tokens, lengths, cache_size=10,
                                        logits_at=at).compile().as_text()
  assert not re.search(r"f32\[2,8,40\]", hlo), "prefill_sequences computes every position"
  # A CachedLM without `logits_at` gets the same slots sliced from its full logits.
  table = jnp.asarray(np.random.default_rng(0).normal(size=(12, 12)), jnp.float32)
  _, sliced = sampler_lib.prefill_sequences(BigramLM(), table, tokens, lengths,
                                            cache_size=10, logits_at=at)
  np.testing.assert_array_equal(sliced, table[jnp.take_along_axis(tokens, at, 1)])


def test_prefix_logit_slots_dedupes_buckets_and_refuses_overflow():
  at, picks = sampler_lib.prefix_logit_slots([0, 1, 0, 0, 1], [5, 7, 9, 5, 7], num_rows=3,
                                             width=16)
  assert at.shape == (3, 8)  # 2 distinct ends at most, rounded up to the bucket 8
  np.testing.assert_array_equal(at[0, :2], [5, 9])
  np.testing.assert_array_equal(at[1, :1], [7])
  assert (at[2] == 15).all() and (at[0, 2:] == 15).all()  # unused entries: slot width - 1
  np.testing.assert_array_equal(at[[0, 1, 0, 0, 1], picks], [5, 7, 9, 5, 7])
  with pytest.raises(ValueError, match="per_row=1"):
    sampler_lib.prefix_logit_slots([0, 0], [3, 4], num_rows=1, width=8, per_row=1)
  with pytest.raises(ValueError, match="outside"):
    sampler_lib.prefix_logit_slots([0], [8], num_rows=1, width=8)


def test_prefill_without_last_logits_falls_back_to_slicing():
  table = jnp.asarray(np.random.default_rng(0).normal(size=(6, 6)), jnp.float32)
  prompts = jnp.array([[0, 1, 2], [3, 4, 5]], jnp.int32)
  cache, logits = sampler_lib.prefill(BigramLM(), table, prompts, jnp.array([2, 3]),
                                      cache_size=5)
  np.testing.assert_array_equal(logits, table[jnp.array([2, 5])])
  assert int(cache.index) == 3
