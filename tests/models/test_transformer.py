"""Transformer: cached decoding equals the full forward pass; axes and sizes."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pavjax import testing
from pavjax.models import KVCache, Transformer, TransformerConfig
from pavjax.sampling import Greedy, Sampler, TransformerLM, left_pad

CFG = TransformerConfig(vocab_size=24, embed_dim=32, num_layers=2, num_heads=4, num_kv_heads=2,
                        head_dim=8, mlp_dim=64, max_len=64)


def _init(cfg=CFG, seed=0):
  model = Transformer(cfg)
  boxed = model.init(jax.random.PRNGKey(seed), jnp.zeros((1, 4), jnp.int32))["params"]
  return model, boxed, nn.unbox(boxed)


def test_every_parameter_has_logical_axes_and_count_matches():
  _, boxed, params = _init()
  testing.assert_params_named_and_counted(boxed, CFG.num_params())
  untied = TransformerConfig(**{**CFG.__dict__, "tie_embeddings": False})
  _, _, p2 = _init(untied)
  assert sum(x.size for x in jax.tree.leaves(p2)) == untied.num_params()
  assert "lm_head" in p2 and "lm_head" not in params


def test_cached_prefill_and_decode_logits_match_full_forward():
  model, _, params = _init()
  prompts = [[3, 4, 5], [7, 8, 9, 10, 11, 12]]
  padded, lengths = left_pad(prompts)  # bucket 8
  extra = np.array([[13, 14, 15], [16, 17, 18]], np.int32)
  cache = KVCache.create(num_layers=2, batch=2, size=11, num_kv_heads=2, head_dim=8,
                         start=padded.shape[1] - lengths)
  out = model.apply({"params": params}, jnp.asarray(padded), cache=cache)
  step_logits = [out.logits[:, -1]]
  cache = out.cache
  for t in range(extra.shape[1]):
    out = model.apply({"params": params}, jnp.asarray(extra[:, t:t + 1]), cache=cache)
    cache = out.cache
    step_logits.append(out.logits[:, -1])
  for b, p in enumerate(prompts):
    full = model.apply({"params": params}, jnp.asarray([p + list(extra[b])])).logits[0]
    want = full[len(p) - 1:]  # logits after the prompt and after each extra token
    got = jnp.stack([s[b] for s in step_logits])
    np.testing.assert_allclose(got, want, atol=2e-5, rtol=2e-5)


def test_cached_greedy_equals_argmax_over_full_forward():
  model, _, params = _init(seed=3)
  prompts = [[1, 2, 3, 4], [5], [6, 7, 8, 9, 10, 11, 12]]
  padded, lengths = left_pad(prompts)
  out = Sampler(TransformerLM(model)).generate(
      params, jnp.asarray(padded), jnp.asarray(lengths), jax.random.PRNGKey(0),
      max_new_tokens=12, method=Greedy())
  # Uncached reference: full causal forward over a right-padded fixed-width buffer
  # (padding after position t cannot affect logits at t), argmax at the last token.
  full = jax.jit(lambda prm, x: model.apply({"params": prm}, x).logits)
  for b, p in enumerate(prompts):
    seq = list(p)
    for _ in range(12):
      buf = np.zeros((1, 24), np.int32)
      buf[0, :len(seq)] = seq
      seq.append(int(jnp.argmax(full(params, buf)[0, len(seq) - 1])))
    assert list(np.asarray(out.tokens[b])) == seq[len(p):]


def test_value_head_and_bfloat16():
  cfg = TransformerConfig(**{**CFG.__dict__, "dtype": "bfloat16"})
  model, _, params = _init(cfg)
  out = model.apply({"params": params}, jnp.ones((2, 5), jnp.int32), logits=False, values=True)
  assert out.logits is None and out.values.shape == (2, 5)
  assert out.values.dtype == jnp.float32
  full = model.apply({"params": params}, jnp.ones((2, 5), jnp.int32))
  assert full.logits.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(full.logits)))


@pytest.mark.parametrize("size,low,high", [("test", 80e3, 120e3), ("125m", 100e6, 140e6),
                                           ("1b", 0.9e9, 1.1e9)])
def test_size_presets_span_100k_to_1b(size, low, high):
  from pavjax import config_lib
  mc = config_lib.model_config(size)
  n = TransformerConfig.from_config(mc, vocab_size=32000 if size != "test" else 64).num_params()
  assert low <= n <= high, n
