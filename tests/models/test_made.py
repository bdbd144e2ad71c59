"""MADE policy: autoregressive masks, cached decode == full forward, forking, jobs."""

import dataclasses
import os
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pavjax import config_lib
from pavjax import metrics
from pavjax import sharding as shd
from pavjax import testing
from pavjax import training
from pavjax.main import run_job
from pavjax.models import Made, MadeConfig, TokenCache, made
from pavjax.sampling import MadeLM, Sampler, Temperature, cached_lm, left_pad
from pavjax.sampling import sampler as sampler_lib

sys.path.insert(0, ".")
from configs import rl as rl_config  # noqa: E402
from configs import sft as sft_config  # noqa: E402

CFG = MadeConfig(vocab_size=16, max_len=16, hidden_sizes=(64, 48, 64))


def _init(cfg=CFG, seed=0):
  model = Made(cfg)
  boxed = model.init(jax.random.PRNGKey(seed), jnp.zeros((1, 4), jnp.int32))["params"]
  return model, boxed, nn.unbox(boxed)


def _random_params(params, seed=1):
  """Every entry random, masked-out ones and the zero-initialized value head included.

  The masks must then hide the masked entries by themselves (init zeros do not count).
  """
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
  return jax.tree.unflatten(tree, [jax.random.normal(k, x.shape) for k, x in zip(keys, leaves)])


def test_axes_count_and_degrees():
  _, boxed, params = _init()
  testing.assert_params_named_and_counted(boxed, CFG.num_params())
  np.testing.assert_array_equal(made.hidden_degrees(64, 16), np.repeat(np.arange(16), 4))
  # Masked-out weights start at zero.
  mask_in = made.made_masks(16, CFG.hidden_sizes)[0]
  assert float(jnp.abs(params["w_in"] * (1 - mask_in[:, None, :])).max()) == 0.0


@pytest.mark.parametrize("width", [16, 11])
def test_output_at_r_depends_only_on_tokens_up_to_r(width):
  model, _, params = _init()
  params = _random_params(params)
  fwd = jax.jit(lambda x: model.apply({"params": params}, x, values=True))
  rng = np.random.default_rng(0)
  tokens = rng.integers(0, CFG.vocab_size, (3, width)).astype(np.int32)
  base = fwd(tokens)
  for p in range(width):
    changed = tokens.copy()
    changed[:, p] = (changed[:, p] + 1 + rng.integers(0, CFG.vocab_size - 1, 3)) % CFG.vocab_size
    out = fwd(changed)
    np.testing.assert_array_equal(out.logits[:, :p], base.logits[:, :p])
    np.testing.assert_array_equal(out.values[:, :p], base.values[:, :p])
    # ... and the changed token is read where it may be (the check is not vacuous).
    # Token p reaches output p only through the few degree-p units of each layer,
    # which ReLU can switch off for one row, so this asks it of some row.
    assert np.abs(out.logits[:, p] - base.logits[:, p]).max() > 1e-6
    assert np.abs(out.values[:, p] - base.values[:, p]).max() > 1e-6


def test_cached_prefill_and_decode_match_full_forward():
  model, _, params = _init()
  params = _random_params(params, seed=2)
  prompts = [[3, 4, 5], [7, 8, 9, 10, 11, 12], [1]]
  padded, lengths = left_pad(prompts)  # bucket 8
  extra = np.array([[13, 14, 15], [2, 6, 0], [9, 9, 9]], np.int32)
  cache = TokenCache.create(batch=3, size=11, start=padded.shape[1] - lengths)
  out = model.apply({"params": params}, jnp.asarray(padded), cache=cache, values=True)
  step_logits, step_values = [out.logits[:, -1]], [out.values[:, -1]]
  cache = out.cache
  for t in range(extra.shape[1]):
    out = model.apply({"params": params}, jnp.asarray(extra[:, t:t + 1]), cache=cache,
                      values=True)
    cache = out.cache
    step_logits.append(out.logits[:, -1])
    step_values.append(out.values[:, -1])
  assert int(cache.index) == 11
  for b, p in enumerate(prompts):
    full = model.apply({"params": params}, jnp.asarray([p + list(extra[b])]), values=True)
    want = slice(len(p) - 1, None)  # after the prompt, then after each extra token
    np.testing.assert_allclose(jnp.stack([s[b] for s in step_logits]), full.logits[0, want],
                               atol=2e-5, rtol=2e-5)
    np.testing.assert_allclose(jnp.stack([s[b] for s in step_values]), full.values[0, want],
                               atol=2e-5, rtol=2e-5)


def test_last_logits_equals_full_call():
  model, _, params = _init()
  lm = MadeLM(model)
  padded, lengths = left_pad([[3, 4], [5, 6, 7, 8]])
  cache = lm.init_cache(2, 12, padded.shape[1] - lengths)
  all_logits, c1 = lm(params, jnp.asarray(padded), cache)
  last, c2 = lm.last_logits(params, jnp.asarray(padded), cache)
  np.testing.assert_array_equal(last, all_logits[:, -1])
  np.testing.assert_array_equal(c1.tokens, c2.tokens)


def _next_logits(model, params, cache, tokens):
  out = model.apply({"params": params}, jnp.asarray(tokens, jnp.int32)[:, None], cache=cache)
  return out.logits[:, -1]


def test_repeat_gather_align_prefixes_equal_independent_prefills():
  model, _, params = _init()
  params = _random_params(params, seed=3)
  lm = cached_lm(model)
  assert isinstance(lm, MadeLM)
  seqs = [[1, 2, 3, 4, 5, 6, 7, 8, 9], [11, 12, 13, 14, 15], [6, 5, 4, 3, 2, 1, 0]]
  width = 12
  tokens, lengths = left_pad(seqs, buckets=(width,))
  cache = lm.init_cache(3, width + 4, width - lengths)
  _, cache = lm(params, jnp.asarray(tokens), cache)
  picks = [(0, 3), (0, 9), (1, 1), (2, 6), (1, 4)]  # (sequence, tokens kept)
  rows = jnp.asarray([s for s, _ in picks], jnp.int32)
  ends = jnp.asarray([width - len(seqs[s]) + n - 1 for s, n in picks], jnp.int32)
  prefixes = [seqs[s][:n] for s, n in picks]
  nxt = [10, 3, 7, 0, 14]

  def independent(prefs, follow):
    ptoks, plens = left_pad(prefs, buckets=(width,))
    c = lm.init_cache(len(prefs), width + 4, width - plens)
    _, c = lm(params, jnp.asarray(ptoks), c)
    return _next_logits(model, params, c, follow)

  want = independent(prefixes, nxt)
  # gather + align_prefixes: decoding resumes at slot `width` for every row.
  aligned = cache.gather(rows).align_prefixes(ends, width)
  assert int(aligned.index) == width
  np.testing.assert_allclose(_next_logits(model, params, aligned, nxt), want, atol=2e-5)
  # align_prefixes with a traced `index` (step-wise search): resume at slot 10.
  short = cache.gather(rows).align_prefixes(ends, width, index=jnp.asarray(10, jnp.int32))
  assert int(short.index) == 10
  np.testing.assert_allclose(_next_logits(model, params, short, nxt), want, atol=2e-5)
  # repeat: each row forks twice and the copies continue differently.
  twice = aligned.repeat(2)
  follow = [t for x in nxt for t in (x, (x + 5) % 16)]
  want2 = independent([p for p in prefixes for _ in range(2)], follow)
  np.testing.assert_allclose(_next_logits(model, params, twice, follow), want2, atol=2e-5)


def test_sampler_fork_prefixes_equal_independent_generate():
  model, _, params = _init(seed=4)
  sampler = Sampler(cached_lm(model))
  seqs = [[1, 2, 3, 4, 5], [11, 12, 13], [6, 5, 4, 3]]
  width = 8
  tokens, lengths = left_pad(seqs, buckets=(width,))
  picks = [(0, 2), (0, 5), (1, 1), (2, 3)]
  rows = np.array([s for s, _ in picks], np.int32)
  ends = np.array([width - len(seqs[s]) + n - 1 for s, n in picks], np.int32)
  logits_at, slots = sampler_lib.prefix_logit_slots(rows, ends, num_rows=3, width=width)
  cache, logits = sampler.prefill_sequences(params, jnp.asarray(tokens), jnp.asarray(lengths),
                                            cache_size=width + 6,
                                            logits_at=jnp.asarray(logits_at))
  rng = jax.random.PRNGKey(7)
  forked = sampler.fork_prefixes(params, cache, logits, jnp.asarray(rows), jnp.asarray(ends),
                                 jnp.asarray(slots), rng, width=width, max_new_tokens=6,
                                 method=Temperature(1.0), num_samples=3)
  ptoks, plens = left_pad([seqs[s][:n] for s, n in picks], buckets=(width,))
  independent = sampler.generate(params, jnp.asarray(ptoks), jnp.asarray(plens), rng,
                                 max_new_tokens=6, method=Temperature(1.0), num_samples=3)
  np.testing.assert_array_equal(forked.tokens, independent.tokens)
  np.testing.assert_allclose(forked.logprobs, independent.logprobs, atol=1e-4)


def test_sharded_state_on_eight_devices_matches_one_device():
  model = Made(CFG)
  tx = training.make_optimizer(config_lib.base_config("rl").optim, num_steps=10)
  tokens = np.random.default_rng(0).integers(0, 16, (8, 12)).astype(np.int32)
  outs = []
  for mesh_cfg, devices in [({"data": 2, "fsdp": 2, "tensor": 2}, jax.devices()),
                            ({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])]:
    mesh = shd.make_mesh(mesh_cfg, devices)
    spec = training.train_state_spec(model, tx, 0, jnp.zeros((2, 8), jnp.int32), mesh,
                                     shd.DEFAULT_RULES)
    state = spec.init()
    with shd.activate(mesh, shd.DEFAULT_RULES):
      fwd = jax.jit(lambda p, x: model.apply({"params": p}, x, values=True))
      out = fwd(state.params, shd.shard_batch({"t": tokens}, mesh)["t"])
    outs.append((np.asarray(out.logits), np.asarray(out.values)))
  np.testing.assert_allclose(outs[0][0], outs[1][0], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(outs[0][1], outs[1][1], rtol=1e-5, atol=1e-5)


def test_made_beam_prefixes_must_fit_its_positions():
  from configs import search as search_config  # pylint: disable=g-import-not-at-top
  from pavjax.jobs import search as search_job  # pylint: disable=g-import-not-at-top
  config = search_config.get_config("task=planted,size=made")
  search_job.check_made_fits(config, prompt_len=1)  # 1 + 10 x 1 tokens of 16 positions
  config.search.max_steps = 16
  with pytest.raises(config_lib.ConfigError,
                     match=r"config\.search\.max_steps: beam prefixes reach 17 tokens.*max_len=16"):
    search_job.check_made_fits(config, prompt_len=1)
  config = search_config.get_config("task=planted,size=test")  # a transformer: no limit
  config.search.max_steps = 16
  search_job.check_made_fits(config, prompt_len=1)


def test_bad_made_fields_name_the_field():
  config = sft_config.get_config("task=planted,size=made")
  config_lib.validate(config, 8, prompt_len=1)
  config.model.hidden_sizes = (128, 0)
  with pytest.raises(config_lib.ConfigError, match="model.hidden_sizes"):
    config_lib.validate(config, 8, prompt_len=1)
  config = sft_config.get_config("task=planted,size=made")
  config.model.arch = "mlp"
  with pytest.raises(config_lib.ConfigError, match="model.arch"):
    config_lib.validate(config, 8, prompt_len=1)
  config.model.arch = "transformer"  # a MADE preset has no transformer fields
  with pytest.raises(config_lib.ConfigError, match="model.arch"):
    config_lib.validate(config, 8, prompt_len=1)
  with pytest.raises(config_lib.ConfigError, match="model.size"):
    sft_config.get_config("task=planted,size=mady")
  # Transformer presets gain no field (their config hashes stay as they were).
  assert "arch" not in sft_config.get_config("task=planted,size=test").model


def test_sft_then_rl_smoke_on_planted(tmp_path):
  sft = sft_config.get_config("task=planted,size=made")
  sft.train.num_steps = 6
  sft.train.batch_size = 16
  sft.train.log_every = 3
  sft.checkpoint.every = 6
  sft.sample.num_eval = 8
  sft.sample.batch_size = 8
  out = run_job(sft, str(tmp_path / "sft"))
  assert out["step"] == 6 and out["params"] == MadeConfig(17, 16).num_params()
  ckpt = str(tmp_path / "sft" / "checkpoints")
  assert os.path.isdir(os.path.join(ckpt, "6"))

  rl = rl_config.get_config("task=planted,size=made,prover=procedural,reward=pav")
  rl.init_from = ckpt
  rl.rl.num_prompts, rl.rl.group_size = 8, 2  # prompts shard over the 8 devices
  rl.train.batch_size = 16
  rl.train.num_steps = 3
  rl.train.log_every = 1
  rl.train.eval_every = 0
  rl.checkpoint.every = 3
  rl.rl.eval_pass_ns = "1,2"
  rl.sample.num_eval = 8
  rl.sample.batch_size = 8
  out = run_job(rl, str(tmp_path / "rl"))
  assert out["step"] == 3 and out["origin"].startswith("init_from")
  rows = metrics.read_jsonl(str(tmp_path / "rl" / "metrics.jsonl"))
  assert [r["step"] for r in rows] == [1, 2, 3]
  assert all(np.isfinite(r["train/loss"]) for r in rows)
  assert os.path.isdir(str(tmp_path / "rl" / "checkpoints" / "3"))


def test_action_ids_restrict_the_softmax_and_leave_the_rest_unchanged():
  full_cfg = MadeConfig(vocab_size=17, max_len=16, hidden_sizes=(32, 32))
  section = config_lib.made_model_config("made")
  section.max_len, section.hidden_sizes = 16, (32, 32)
  cfg = MadeConfig.from_config(section, 17, action_ids=range(15, 0, -1))
  assert cfg == dataclasses.replace(full_cfg, action_ids=tuple(range(1, 16)))
  assert cfg.action_ids == tuple(range(1, 16))
  _, _, params = _init(full_cfg, seed=2)
  params = _random_params(params, seed=3)  # pad and BOS logits as large as any other
  tokens = np.random.default_rng(0).integers(1, 17, (4, 9)).astype(np.int32)
  free = Made(full_cfg).apply({"params": params}, tokens, values=True)
  held = Made(cfg).apply({"params": params}, tokens, values=True)
  allowed = np.arange(17)[(np.arange(17) >= 1) & (np.arange(17) <= 15)]
  np.testing.assert_array_equal(held.logits[..., allowed], free.logits[..., allowed])
  np.testing.assert_array_equal(held.values, free.values)
  assert np.all(np.asarray(held.logits[..., [0, 16]]) == made.MASKED_LOGIT)
  probs = jax.nn.softmax(held.logits, axis=-1)
  assert float(probs[..., [0, 16]].max()) == 0.0
  np.testing.assert_allclose(probs[..., allowed].sum(-1), 1.0, atol=1e-5)
  logp = jax.nn.log_softmax(held.logits, axis=-1)
  assert np.all(np.isfinite(np.asarray(logp)))  # a masked loss term stays 0, not NaN
  for bad in ((), (0, 17), (-1, 3)):
    with pytest.raises(ValueError, match="action ids"):
      MadeConfig.from_config(config_lib.made_model_config("made"), 17, action_ids=bad)


def test_sampled_tokens_never_leave_the_action_ids():
  full_cfg = MadeConfig(vocab_size=17, max_len=16, hidden_sizes=(32, 32))
  cfg = dataclasses.replace(full_cfg, action_ids=tuple(range(1, 16)))
  _, _, params = _init(full_cfg, seed=5)
  # Push pad and BOS up so an unmasked policy samples them often.
  params = dict(params, b_out=params["b_out"].at[:, jnp.array([0, 16])].set(3.0))
  prompts, lengths = left_pad([[16]] * 8, buckets=(1,))
  seen = {}
  for name, c in (("free", full_cfg), ("held", cfg)):
    out = Sampler(cached_lm(Made(c))).generate(
        params, jnp.asarray(prompts), jnp.asarray(lengths), jax.random.PRNGKey(0),
        max_new_tokens=10, method=Temperature(1.0), num_samples=32)
    seen[name] = np.asarray(out.tokens)
  assert np.isin(seen["free"], [0, 16]).mean() > 0.2  # the control: the test can fail
  assert seen["held"].shape == (256, 10)
  assert not np.isin(seen["held"], [0, 16]).any()
  assert set(np.unique(seen["held"])) <= set(range(1, 16))


def test_planted_jobs_build_the_made_on_the_task_action_ids_and_the_transformer_unchanged(
    tmp_path):
  from pavjax import runtime  # pylint: disable=g-import-not-at-top
  from pavjax import tasks  # pylint: disable=g-import-not-at-top
  from pavjax.models import arch  # pylint: disable=g-import-not-at-top
  task = tasks.make_task(sft_config.get_config("task=planted,size=made").task)
  assert task.action_ids == tuple(range(1, 16))
  assert task.pad_id not in task.action_ids and task.bos_id not in task.action_ids
  assert task.eos_id in task.action_ids
  env = runtime.setup(sft_config.get_config("task=planted,size=made"), str(tmp_path / "m"))
  assert env.model_cfg.action_ids == task.action_ids
  section = sft_config.get_config("task=planted,size=test").model
  assert (arch.model_config_from(section, 17, task.action_ids)
          == arch.model_config_from(section, 17))
  toy = tasks.make_task(sft_config.get_config("task=toy,size=made").task)
  assert toy.action_ids is None
