"""Continuous batching gives `fork_prefixes`' tokens, whichever arena row serves an item."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pavjax.models import Transformer, TransformerConfig
from pavjax.sampling import Greedy, Sampler, Temperature, TransformerLM, left_pad
from pavjax.sampling import sampler as sampler_lib

WIDTH, NEW, VOCAB, STOP = 16, 12, 12, 1


def _setup(attn_block=4):
  cfg = TransformerConfig(vocab_size=VOCAB, embed_dim=32, num_layers=2, num_heads=4,
                          num_kv_heads=2, head_dim=8, mlp_dim=64, max_len=64,
                          attn_block=attn_block)
  model = Transformer(cfg)
  params = nn.unbox(model.init(jax.random.PRNGKey(0), jnp.zeros((1, 4), jnp.int32))["params"])
  sampler = Sampler(TransformerLM(model))
  seqs = [[2, 3, 4, 5, 6, 7, 8, 9, 10, 11], [11, 10, 9, 8, 7], [3, 5, 7, 9, 11, 2, 4]]
  tokens, lengths = left_pad(seqs, buckets=(WIDTH,))
  picks = [(0, 3), (0, 10), (1, 1), (1, 4), (2, 6), (0, 7), (2, 2)]
  rows = np.array([s for s, _ in picks], np.int32)
  ends = np.array([WIDTH - len(seqs[s]) + n - 1 for s, n in picks], np.int32)
  logits_at, slots = sampler_lib.prefix_logit_slots(rows, ends, num_rows=3, width=WIDTH)
  cache, logits = sampler.prefill_sequences(params, jnp.asarray(tokens), jnp.asarray(lengths),
                                            cache_size=WIDTH + NEW,
                                            logits_at=jnp.asarray(logits_at))
  return sampler, params, cache, logits, jnp.asarray(rows), jnp.asarray(ends), jnp.asarray(slots)


@pytest.mark.parametrize("method", [Temperature(1.0), Greedy()], ids=["temperature", "greedy"])
@pytest.mark.parametrize("slots", [3, 8])
def test_continuous_equals_static_forking(method, slots):
  sampler, params, cache, logits, rows, ends, picks = _setup()
  rng = jax.random.PRNGKey(3)
  n = 3
  kw = dict(width=WIDTH, max_new_tokens=NEW, method=method, stop_tokens=(STOP,), num_samples=n)
  static = sampler.fork_prefixes(params, cache, logits, rows, ends, picks, rng, **kw)
  cont = sampler.fork_continuous(params, cache, logits, rows, ends, picks, rng, slots=slots, **kw)
  np.testing.assert_array_equal(cont.tokens, static.tokens)
  np.testing.assert_array_equal(cont.lengths, static.lengths)
  np.testing.assert_array_equal(cont.finished, static.finished)
  np.testing.assert_allclose(cont.logprobs, static.logprobs, atol=1e-5)
  lengths = np.asarray(static.lengths)
  if isinstance(method, Temperature):  # the workload is length-skewed, else this proves little
    assert lengths.min() < lengths.max() and np.asarray(static.finished).any()
  # Every live row-step decoded one token of some item; the arena never idles while
  # items are pending, so it runs fewer steps than the static batches would.
  assert int(cont.busy) == lengths.sum()
  assert int(cont.busy) <= int(cont.steps) * slots
  assert int(cont.steps) >= -(-lengths.sum() // slots)


def test_padded_prefixes_are_not_run():
  sampler, params, cache, logits, rows, ends, picks = _setup()
  rng = jax.random.PRNGKey(3)
  kw = dict(width=WIDTH, max_new_tokens=NEW, method=Temperature(1.0), stop_tokens=(STOP,),
            num_samples=2)
  full = sampler.fork_continuous(params, cache, logits, rows, ends, picks, rng, slots=4, **kw)
  part = sampler.fork_continuous(params, cache, logits, rows, ends, picks, rng, slots=4,
                                 num_prefixes=5, **kw)
  np.testing.assert_array_equal(part.tokens[:10], full.tokens[:10])
  np.testing.assert_array_equal(part.lengths[10:], 0)
  np.testing.assert_array_equal(part.tokens[10:], 0)
  assert int(part.busy) == int(np.asarray(full.lengths[:10]).sum())
  # The prefix count is traced: both calls ran one compiled program.
  assert sampler.num_traces == 1


def test_sharded_over_eight_devices_equals_one_device():
  """Length-aware attention (switch branches) and the arena under a data-parallel mesh."""
  from pavjax import sharding as shd  # pylint: disable=import-outside-toplevel
  sampler, params, cache, logits, rows, ends, picks = _setup(attn_block=4)
  rng = jax.random.PRNGKey(3)
  kw = dict(width=WIDTH, max_new_tokens=NEW, method=Temperature(1.0), stop_tokens=(STOP,),
            num_samples=8)
  want = sampler.fork_continuous(params, cache, logits, rows, ends, picks, rng, slots=8, **kw)
  static = sampler.fork_prefixes(params, cache, logits, rows, ends, picks, rng, **kw)
  mesh = shd.make_mesh({"data": -1})
  assert mesh.devices.size == 8
  with shd.activate(mesh, shd.DEFAULT_RULES):
    sharded = Sampler(sampler.lm)
    got = sharded.fork_continuous(params, cache, logits, rows, ends, picks, rng, slots=8, **kw)
    got_static = sharded.fork_prefixes(params, cache, logits, rows, ends, picks, rng, **kw)
  np.testing.assert_array_equal(got.tokens, want.tokens)
  np.testing.assert_array_equal(got_static.tokens, static.tokens)
  np.testing.assert_array_equal(got.tokens, static.tokens)


@pytest.mark.parametrize("method", [Temperature(1.0), Greedy()], ids=["temperature", "greedy"])
def test_generate_continuous_equals_generate(method):
  """Prompts prefilled at once and decoded through a smaller arena: `generate`'s tokens,
  and padded prompts beyond `num_prompts` are not run."""
  sampler, params = _setup()[:2]
  prompts = [[2, 3, 4], [5, 6, 7, 8, 9], [10, 11], [4, 4, 4, 4], [7]]
  tokens, lengths = left_pad(prompts + [prompts[0]] * 3, buckets=(8,))
  tokens, lengths = jnp.asarray(tokens), jnp.asarray(lengths)
  rng, n = jax.random.PRNGKey(5), 3
  kw = dict(max_new_tokens=NEW, method=method, stop_tokens=(STOP,), num_samples=n)
  static = sampler.generate(params, tokens, lengths, rng, **kw)
  keys = sampler_lib.row_keys_for(rng, 8 * n)
  cont = sampler.generate_continuous(params, tokens, lengths, keys, slots=4,
                                     num_prompts=len(prompts), **kw)
  real = len(prompts) * n
  np.testing.assert_array_equal(cont.tokens[:real], static.tokens[:real])
  np.testing.assert_array_equal(cont.lengths[:real], static.lengths[:real])
  np.testing.assert_array_equal(cont.finished[:real], static.finished[:real])
  np.testing.assert_allclose(cont.logprobs[:real], static.logprobs[:real], atol=1e-5)
  np.testing.assert_array_equal(cont.lengths[real:], 0)
  lengths = np.asarray(static.lengths[:real])
  assert int(cont.busy) == lengths.sum()
  if isinstance(method, Temperature):
    assert lengths.min() < lengths.max()
