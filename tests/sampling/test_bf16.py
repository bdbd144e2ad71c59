"""bfloat16 sampling (`in_dtype`): weights and KV cache in bf16, tokens checked to a tolerance."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from pavjax.bench import harness
from pavjax.models import Transformer, TransformerConfig
from pavjax.sampling import Greedy, Sampler, Temperature, TransformerLM, in_dtype, left_pad
from pavjax.sampling import sampler as sampler_lib

CFG = TransformerConfig(vocab_size=48, embed_dim=64, num_layers=2, num_heads=4, num_kv_heads=2,
                        head_dim=16, mlp_dim=128, max_len=256, attn_block=16)


def _f32():
  model = Transformer(CFG)
  params = nn.unbox(model.init(jax.random.PRNGKey(0), jnp.zeros((1, 4), jnp.int32))["params"])
  return model, params


def test_in_dtype_casts_weights_and_cache_once():
  model, params = _f32()
  same = in_dtype(model, params, "")
  assert same[0] is model and same[1] is params
  bf_model, bf_params = in_dtype(model, params, "bfloat16")
  assert {x.dtype for x in jax.tree.leaves(bf_params)} == {jnp.dtype(jnp.bfloat16)}
  cache = TransformerLM(bf_model).init_cache(2, 8, jnp.zeros((2,), jnp.int32))
  assert cache.k.dtype == jnp.bfloat16
  assert harness.tree_bytes(bf_params) * 2 == harness.tree_bytes(params)


def test_bf16_greedy_is_the_uncached_argmax_up_to_ties():
  """bf16 cached greedy: every token within bf16's tie tolerance of the uncached bf16 argmax,
  and close to float32's: most rows agree with float32 token for token."""
  model, params = _f32()
  bf_model, bf_params = in_dtype(model, params, "bfloat16")
  prompts = [list(np.random.default_rng(i).integers(1, 48, 5 + i)) for i in range(8)]
  toks, lens = left_pad(prompts)
  out = {}
  for name, (m, p) in {"f32": (model, params), "bf16": (bf_model, bf_params)}.items():
    out[name] = Sampler(TransformerLM(m)).generate(
        p, jnp.asarray(toks), jnp.asarray(lens), jax.random.PRNGKey(0), max_new_tokens=40,
        method=Greedy())
  msg = harness.check_greedy(bf_model, bf_params, prompts, np.asarray(out["bf16"].tokens),
                             dtype="bfloat16", what="bf16 sampler", literal_rows=0)
  assert "8 rows" in msg
  # float32 logits of the bf16 tokens: a token may differ from float32's only where
  # float32 itself had a near-tie (bf16 rounding is a few 1e-2 on unit-scale logits).
  short = harness.greedy_shortfall(model, params, *map(
      jnp.asarray, harness.build_sequences(prompts, np.asarray(out["bf16"].tokens))))
  assert float(np.max(short)) < 0.25
  first = np.argmax(np.asarray(out["bf16"].tokens) != np.asarray(out["f32"].tokens), axis=1)
  assert np.mean(np.all(np.asarray(out["bf16"].tokens[:, :10])
                        == np.asarray(out["f32"].tokens[:, :10]), axis=1)) >= 0.5, first


def test_bf16_continuous_equals_static():
  model, params = in_dtype(*_f32(), "bfloat16")
  sampler = Sampler(TransformerLM(model))
  seqs = [[3, 4, 5, 6, 7, 8], [9, 10, 11, 12]]
  width = 16
  tokens, lengths = left_pad(seqs, buckets=(width,))
  picks = [(0, 2), (0, 6), (1, 3)]
  rows = np.array([s for s, _ in picks], np.int32)
  ends = np.array([width - len(seqs[s]) + n - 1 for s, n in picks], np.int32)
  logits_at, slots = sampler_lib.prefix_logit_slots(rows, ends, num_rows=2, width=width)
  cache, logits = sampler.prefill_sequences(params, jnp.asarray(tokens), jnp.asarray(lengths),
                                            cache_size=width + 24,
                                            logits_at=jnp.asarray(logits_at))
  assert cache.k.dtype == jnp.bfloat16
  kw = dict(width=width, max_new_tokens=24, method=Temperature(1.0), stop_tokens=(1, 2),
            num_samples=4)
  args = (params, cache, logits, jnp.asarray(rows), jnp.asarray(ends), jnp.asarray(slots),
          jax.random.PRNGKey(5))
  static = sampler.fork_prefixes(*args, **kw)
  cont = sampler.fork_continuous(*args, slots=5, **kw)
  np.testing.assert_array_equal(cont.tokens, static.tokens)
  np.testing.assert_array_equal(cont.lengths, static.lengths)
