"""Length-aware cached attention reads only the filled slots and equals full attention."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pavjax.models import KVCache, Transformer, TransformerConfig
from pavjax.models.transformer import attention_sizes
from pavjax.sampling import Greedy, Sampler, TransformerLM, left_pad

BASE = dict(vocab_size=32, embed_dim=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8,
            mlp_dim=64, max_len=128)


def _model(attn_block, **kw):
  cfg = TransformerConfig(**{**BASE, **kw, "attn_block": attn_block})
  model = Transformer(cfg)
  params = nn.unbox(model.init(jax.random.PRNGKey(0), jnp.zeros((1, 4), jnp.int32))["params"])
  return model, params


def test_attention_sizes():
  assert attention_sizes(64, 0) == (64,)
  assert attention_sizes(64, 64) == (64,)
  assert attention_sizes(64, 16) == (16, 32, 48, 64)
  assert attention_sizes(70, 16) == (16, 32, 48, 64, 70)
  # At most `most` branches: the block widens.
  assert attention_sizes(2048, 16, most=8) == tuple(range(256, 2049, 256))


@pytest.mark.parametrize("windows", [(), (3, 0)])
def test_cached_steps_equal_full_attention(windows):
  """Prefill and one-token steps at every fill level: logits and cache equal to attn_block=0."""
  extra = {"layer_windows": windows} if windows else {}
  full_model, params = _model(0, **extra)
  blocked_model, _ = _model(4, **extra)
  rng = np.random.default_rng(0)
  b, p, s = 3, 5, 23  # 23 slots: sizes 4, 8, ..., 20, 23
  tokens = jnp.asarray(rng.integers(1, 32, (b, p + s - p)), jnp.int32)
  start = jnp.array([0, 2, 4])

  def run(model):
    cache = KVCache.create(num_layers=2, batch=b, size=s, num_kv_heads=2, head_dim=8,
                           start=start)
    out = model.apply({"params": params}, tokens[:, :p], cache=cache)
    logits, cache = [out.logits], out.cache
    for i in range(p, s):
      out = model.apply({"params": params}, tokens[:, i:i + 1], cache=cache)
      logits.append(out.logits)
      cache = out.cache
    return jnp.concatenate(logits, axis=1), cache

  want, want_cache = run(full_model)
  got, got_cache = run(blocked_model)
  # Left-pad slots (before a row's start) see no key at all: their softmax is uniform
  # over whatever is read, and nothing reads their outputs. Real slots must agree.
  for row in range(b):
    st = int(start[row])
    np.testing.assert_allclose(got[row, st:], want[row, st:], rtol=1e-5, atol=1e-5)
    for new, old in ((got_cache.k, want_cache.k), (got_cache.v, want_cache.v)):
      np.testing.assert_allclose(new[:, row, st:], old[:, row, st:], rtol=1e-5, atol=1e-5)
    # And both equal the uncached forward over the row's real tokens.
    ref = full_model.apply({"params": params}, tokens[row:row + 1, st:]).logits[0]
    np.testing.assert_allclose(got[row, st:], ref, rtol=1e-4, atol=1e-4)


def test_per_row_index_equals_shared_index():
  """A cache whose index is [B] (continuous batching) gives the shared-index result."""
  model, params = _model(4)
  rng = np.random.default_rng(1)
  b, s = 2, 16
  tokens = jnp.asarray(rng.integers(1, 32, (b, 9)), jnp.int32)
  cache = KVCache.create(num_layers=2, batch=b, size=s, num_kv_heads=2, head_dim=8,
                         start=jnp.array([1, 0]))
  out = model.apply({"params": params}, tokens[:, :8], cache=cache)
  shared = model.apply({"params": params}, tokens[:, 8:], cache=out.cache)
  ragged_cache = out.cache.replace(index=jnp.array([8, 8], jnp.int32))
  ragged = model.apply({"params": params}, tokens[:, 8:], cache=ragged_cache)
  np.testing.assert_allclose(ragged.logits, shared.logits, rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(ragged.cache.k, shared.cache.k)
  np.testing.assert_array_equal(ragged.cache.index, [9, 9])


def test_greedy_tokens_equal_with_and_without_blocks():
  full_model, params = _model(0)
  blocked_model, _ = _model(8)
  prompts = [list(np.random.default_rng(i).integers(1, 32, 3 + 2 * i)) for i in range(4)]
  toks, lens = left_pad(prompts)
  outs = []
  for model in (full_model, blocked_model):
    sampler = Sampler(TransformerLM(model))
    outs.append(sampler.generate(params, jnp.asarray(toks), jnp.asarray(lens),
                                 jax.random.PRNGKey(0), max_new_tokens=40, method=Greedy()))
  np.testing.assert_array_equal(outs[1].tokens, outs[0].tokens)
  np.testing.assert_allclose(outs[1].logprobs, outs[0].logprobs, rtol=1e-5, atol=1e-5)


def test_decode_program_has_one_branch_per_size():
  """The compiled decode step holds the size branches (a conditional), not one full read."""
  model, params = _model(8)
  sampler = Sampler(TransformerLM(model))
  toks, lens = left_pad([[1, 2, 3]])
  generate = sampler._generate  # pylint: disable=protected-access
  hlo = generate.lower(params, jnp.asarray(toks), jnp.asarray(lens), jax.random.PRNGKey(0),
                       num_samples=1, max_new_tokens=40, method=Greedy(),
                       stop_tokens=()).compile().as_text()
  assert "conditional" in hlo


def test_no_recompiles_across_attention_sizes():
  """Decoding at any fill level runs the one compiled program (sizes are switch branches)."""
  from pavjax.bench.harness import CompileCounter  # pylint: disable=import-outside-toplevel
  from pavjax.sampling import sampler as sampler_lib  # pylint: disable=import-outside-toplevel
  model, params = _model(8)
  sampler = Sampler(TransformerLM(model))
  toks, lens = left_pad([[1, 2, 3], [4, 5]])
  toks, lens = jnp.asarray(toks), jnp.asarray(lens)

  def run(index):
    cache, logits = sampler.prefill(params, toks, lens, cache_size=64)
    cache = cache.replace(index=jnp.asarray(index, jnp.int32))  # as if more were decoded
    keys = sampler_lib.row_keys_for(jax.random.PRNGKey(0), 2)
    state = sampler_lib.init_state(cache, logits, keys, 6)
    return sampler.decode(params, state, method=Greedy(), stop_tokens=())

  run(8)  # warm-up: fills 9..14 (sizes 16)
  with CompileCounter() as counter:
    for index in (20, 37, 58):  # sizes 24, 40/48, 64
      out = run(index)
      assert int(out.step) == 6
  assert counter.lowerings == 0


@pytest.mark.parametrize("windows", [(), (3, 0)])
@pytest.mark.parametrize("ragged", [False, True])
def test_query_chunks_equal_one_chunk(windows, ragged):
  """A cached call of 11 tokens in query chunks of 4 (each reading the cache only up to
  its last slot) gives one chunk's logits and cache, from a shared or per-row index."""
  extra = {"layer_windows": windows} if windows else {}
  whole, params = _model(4, query_chunk=0, **extra)
  chunked, _ = _model(4, query_chunk=4, **extra)
  rng = np.random.default_rng(2)
  b, s, t = 3, 30, 11
  tokens = jnp.asarray(rng.integers(1, 32, (b, 3 + t)), jnp.int32)
  cache = KVCache.create(num_layers=2, batch=b, size=s, num_kv_heads=2, head_dim=8,
                         start=jnp.array([0, 1, 2]))
  cache = whole.apply({"params": params}, tokens[:, :3], cache=cache).cache
  if ragged:  # rows written up to different slots (continuous batching's layout)
    cache = cache.replace(index=jnp.array([3, 5, 4], jnp.int32))
  want = whole.apply({"params": params}, tokens[:, 3:], cache=cache)
  got = chunked.apply({"params": params}, tokens[:, 3:], cache=cache)
  np.testing.assert_allclose(got.logits, want.logits, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(got.cache.k, want.cache.k, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(got.cache.v, want.cache.v, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("windows", [(), (3, 0)])
def test_uncached_query_chunks_equal_one_chunk(windows):
  """Training and scoring's forward in query chunks of 4 (chunk [lo, hi) reading keys
  [0, hi)): the same logits and the same gradients as one chunk."""
  extra = {"layer_windows": windows} if windows else {}
  whole, params = _model(4, query_chunk=0, **extra)
  chunked, _ = _model(4, query_chunk=4, **extra)
  tokens = jnp.asarray(np.random.default_rng(3).integers(1, 32, (2, 13)), jnp.int32)

  def loss(model, p):
    logits = model.apply({"params": p}, tokens).logits
    return jnp.sum(jax.nn.log_softmax(logits)[..., 1] * jnp.arange(13.0)), logits

  (want_loss, want), want_grad = jax.value_and_grad(
      lambda p: loss(whole, p), has_aux=True)(params)
  (got_loss, got), got_grad = jax.value_and_grad(lambda p: loss(chunked, p), has_aux=True)(params)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(got_loss, want_loss, rtol=1e-5)
  jax.tree.map(lambda g, w: np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5),
               got_grad, want_grad)
