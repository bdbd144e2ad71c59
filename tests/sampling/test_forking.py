"""Prefix forking from one prefill of whole sequences equals prefilling each prefix."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from pavjax.models import Transformer, TransformerConfig
from pavjax.sampling import Sampler, Temperature, TransformerLM, left_pad
from pavjax.sampling import sampler as sampler_lib


def test_forked_prefixes_equal_independent_prefills():
  cfg = TransformerConfig(vocab_size=24, embed_dim=32, num_layers=2, num_heads=4,
                          num_kv_heads=2, head_dim=8, mlp_dim=64, max_len=64)
  model = Transformer(cfg)
  params = nn.unbox(model.init(jax.random.PRNGKey(0), jnp.zeros((1, 4), jnp.int32))["params"])
  sampler = Sampler(TransformerLM(model))
  seqs = [[1, 2, 3, 4, 5, 6, 7, 8, 9, 10], [11, 12, 13, 14, 15], [16, 17, 18, 19, 20, 21, 22]]
  width = 16
  tokens, lengths = left_pad(seqs, buckets=(width,))
  # Prefixes: (sequence, number of its tokens kept), including a whole sequence.
  picks = [(0, 3), (0, 10), (1, 1), (1, 4), (2, 6), (0, 7)]
  rows = np.array([s for s, _ in picks], np.int32)
  ends = np.array([width - len(seqs[s]) + n - 1 for s, n in picks], np.int32)
  logits_at, slots = sampler_lib.prefix_logit_slots(rows, ends, num_rows=3, width=width)
  cache, logits = sampler.prefill_sequences(params, jnp.asarray(tokens), jnp.asarray(lengths),
                                            cache_size=width + 8,
                                            logits_at=jnp.asarray(logits_at))
  assert logits.shape == (3, 8, 24)  # [rows, per_row (a bucket of 3 ends), V], not [3, 16, 24]
  rng = jax.random.PRNGKey(7)
  n = 3
  forked = sampler.fork_prefixes(params, cache, logits, jnp.asarray(rows), jnp.asarray(ends),
                                 jnp.asarray(slots), rng, width=width, max_new_tokens=8,
                                 method=Temperature(1.0), num_samples=n)
  prefixes = [seqs[s][:k] for s, k in picks]
  ptoks, plens = left_pad(prefixes, buckets=(width,))
  independent = sampler.generate(params, jnp.asarray(ptoks), jnp.asarray(plens), rng,
                                 max_new_tokens=8, method=Temperature(1.0), num_samples=n)
  np.testing.assert_array_equal(forked.tokens, independent.tokens)
  np.testing.assert_allclose(forked.logprobs, independent.logprobs, atol=1e-4)
  # The prefill was not repeated per prefix: one prefill of 3 sequences served 6 prefixes.
  assert forked.tokens.shape == (len(picks) * n, 8)
