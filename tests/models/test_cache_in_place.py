"""The stacked KV cache is updated in place, and `logits_at` picks LM-head positions."""

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pavjax.models import KVCache, Transformer, TransformerConfig
from pavjax.sampling import Greedy, Sampler, TransformerLM
from pavjax.sampling.sampler import init_state, row_keys_for

CFG = TransformerConfig(vocab_size=24, embed_dim=32, num_layers=2, num_heads=4, num_kv_heads=2,
                        head_dim=8, mlp_dim=64, max_len=64)


def _init(cfg=CFG, seed=0):
  model = Transformer(cfg)
  params = nn.unbox(model.init(jax.random.PRNGKey(seed), jnp.zeros((1, 4), jnp.int32))["params"])
  return model, params


def _ops_of_shape(hlo: str, shape: str) -> dict[str, int]:
  """Opcode -> count of the instructions whose result has exactly `shape`."""
  counts = {}
  for m in re.finditer(r"= " + re.escape(shape) + r"(?:\{[^}]*\})? ([\w-]+)\(", hlo):
    counts[m.group(1)] = counts.get(m.group(1), 0) + 1
  return counts


@pytest.mark.parametrize("remat", [False, True])
def test_logits_at_equals_gathered_full_logits_and_cache_is_unchanged(remat):
  cfg = TransformerConfig(**{**CFG.__dict__, "remat": remat})
  model, params = _init(cfg)
  tokens = jnp.asarray(np.random.default_rng(0).integers(1, 24, (3, 7)), jnp.int32)
  make_cache = lambda: KVCache.create(num_layers=2, batch=3, size=10, num_kv_heads=2, head_dim=8,
                                      start=jnp.array([0, 2, 5]))
  full = model.apply({"params": params}, tokens, cache=make_cache())
  at = jnp.array([[6, 0], [6, 3], [5, 6]], jnp.int32)
  part = model.apply({"params": params}, tokens, cache=make_cache(), logits_at=at)
  assert part.logits.shape == (3, 2, 24)
  want = jnp.take_along_axis(full.logits, at[:, :, None], axis=1)
  np.testing.assert_allclose(part.logits, want, atol=1e-5, rtol=1e-5)
  np.testing.assert_array_equal(part.cache.k, full.cache.k)
  np.testing.assert_array_equal(part.cache.v, full.cache.v)
  # Without a cache too (scoring / training path).
  nocache = model.apply({"params": params}, tokens, logits_at=at[:, :1]).logits
  np.testing.assert_allclose(nocache, jnp.take_along_axis(
      model.apply({"params": params}, tokens).logits, at[:, :1, None], axis=1), atol=1e-5)


def test_cached_forward_writes_only_the_new_slots():
  model, params = _init()
  rng = np.random.default_rng(1)
  cache = KVCache.create(num_layers=2, batch=2, size=9, num_kv_heads=2, head_dim=8,
                         start=jnp.array([0, 1]))
  # Fill the cache with junk: only slots [index, index + T) may change.
  cache = cache.replace(k=jnp.asarray(rng.normal(size=cache.k.shape), jnp.float32),
                        v=jnp.asarray(rng.normal(size=cache.v.shape), jnp.float32),
                        index=jnp.asarray(4, jnp.int32))
  out = model.apply({"params": params}, jnp.array([[3, 5], [7, 2]], jnp.int32), cache=cache)
  assert int(out.cache.index) == 6
  for old, new in ((cache.k, out.cache.k), (cache.v, out.cache.v)):
    old, new = np.asarray(old), np.asarray(new)
    np.testing.assert_array_equal(new[:, :, :, :4], old[:, :, :, :4])  # [L, B, K, S, H]
    np.testing.assert_array_equal(new[:, :, :, 6:], old[:, :, :, 6:])
    assert np.all(new[:, :, :, 4:6] != old[:, :, :, 4:6])


def test_decode_loop_neither_copies_nor_rebuilds_the_stacked_cache():
  model, params = _init()
  sampler = Sampler(TransformerLM(model))
  b, p, n = 3, 8, 5
  prompts = jnp.ones((b, p), jnp.int32)
  cache, logits = sampler.prefill(params, prompts, jnp.full((b,), p, jnp.int32),
                                  cache_size=p + n)
  state = init_state(cache, logits, row_keys_for(jax.random.PRNGKey(0), b), n)
  hlo = sampler.decode.lower(params, state, method=Greedy(), stop_tokens=()).compile().as_text()
  ops = _ops_of_shape(hlo, f"f32[2,{b},2,{p + n},8]")  # the stacked [L, B, K, S, H] cache
  # Before the fix the layer scan stacked fresh per-layer caches each step: a
  # broadcast of the whole cache plus copies of it showed up here.
  assert "copy" not in ops and "broadcast" not in ops, ops
  # The new slot is written into the loop-carried k and v buffers.
  assert ops.get("dynamic-update-slice", 0) >= 2, ops
