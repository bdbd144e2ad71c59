"""`prefill` runs the LM head on the last prompt token only, with unchanged results."""

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

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


def test_prefill_sequences_keeps_every_position():
  model, params = _model()
  sampler = Sampler(TransformerLM(model))
  padded, lengths = left_pad([[3, 4, 5], [7, 8, 9, 10]])
  _, logits = sampler.prefill_sequences(params, jnp.asarray(padded), jnp.asarray(lengths),
                                        cache_size=10)
  assert logits.shape == (2, 8, 40)


def test_prefill_without_last_logits_falls_back_to_slicing():
  table = jnp.asarray(np.random.default_rng(0).normal(size=(6, 6)), jnp.float32)
  prompts = jnp.array([[0, 1, 2], [3, 4, 5]], jnp.int32)
  cache, logits = sampler_lib.prefill(BigramLM(), table, prompts, jnp.array([2, 3]),
                                      cache_size=5)
  np.testing.assert_array_equal(logits, table[jnp.array([2, 5])])
  assert int(cache.index) == 3
