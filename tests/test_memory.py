"""LM-head chunking (`train.logits_chunk`): the same numbers, and no [B, T, V] logits in memory.

The numeric tests compare the chunked losses and gradients with the one-piece head
(float32 round-off). The memory tests compile the SFT and RL train steps at a 32k
vocabulary and read XLA's buffer assignment (`memory_analysis`, nothing runs): the
chunked steps' scratch memory must stay well below one [B, T, V] float32 tensor,
while the one-piece path's (the code before chunking) must exceed it.
"""

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pavjax import config_lib
from pavjax import supervised
from pavjax import training
from pavjax.jobs import rl as rl_job
from pavjax.main import run_job
from pavjax.models import Made, MadeConfig, Transformer, TransformerConfig

CFG = TransformerConfig(vocab_size=48, embed_dim=32, num_layers=2, num_heads=4, num_kv_heads=2,
                        head_dim=8, mlp_dim=64, max_len=64)


def _model(cfg):
  model = Transformer(cfg)
  params = nn.unbox(model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32))["params"])
  # Non-zero value head, so the values' gradient path is exercised too.
  params["value_w"] = jax.random.normal(jax.random.PRNGKey(1), params["value_w"].shape) * 0.1
  return model, params


def _tokens(b, t, vocab, seed=0):
  return jnp.asarray(np.random.default_rng(seed).integers(0, vocab, (b, t)), jnp.int32)


def _close(a, b, what):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-5, err_msg=what)


@pytest.mark.parametrize("variant", [
    {},  # tied embeddings
    {"tie_embeddings": False, "final_softcap": 3.0},  # untied head + Gemma 2's final soft-cap
])
def test_chunked_sft_loss_and_grads_equal_the_full_head(variant):
  cfg = dataclasses.replace(CFG, **variant)
  model, params = _model(cfg)
  inputs, targets = _tokens(3, 21, cfg.vocab_size), _tokens(3, 21, cfg.vocab_size, seed=1)
  mask = jnp.asarray(np.random.default_rng(2).random((3, 21)) < 0.7, jnp.float32)

  @functools.partial(jax.jit, static_argnums=(1, 2))
  def loss_and_grads(p, chunk, capped=True):
    m = model if capped else Transformer(dataclasses.replace(cfg, final_softcap=0.0))
    loss = lambda q: training.sequence_cross_entropy(m, q, inputs, targets, mask, chunk=chunk)
    return jax.value_and_grad(loss, has_aux=True)(p)

  full, g_full = loss_and_grads(params, 0)
  got, g = loss_and_grads(params, 4)  # 21 positions: 6 chunks, the last one padded
  _close(got, full, "loss and accuracy")
  _close(g, g_full, "grads")
  # The full path is the old code: `token_cross_entropy` of the model's logits.
  old = jax.jit(lambda p: training.token_cross_entropy(
      model.apply({"params": p}, inputs).logits, targets, mask))(params)
  _close(full, old, "full path vs token_cross_entropy")
  if cfg.final_softcap:  # the chunks are soft-capped too: without the cap the loss moves
    uncapped, _ = loss_and_grads(params, 4, False)
    assert abs(float(uncapped[0]) - float(full[0])) > 1e-3


def test_chunked_rl_loss_grads_and_stats_equal_the_full_head():
  cfg = dataclasses.replace(CFG, final_softcap=4.0)
  model, params = _model(cfg)
  b, w = 4, 19
  rng = np.random.default_rng(3)
  batch = {"tokens": _tokens(b, w, cfg.vocab_size),
           "mask": jnp.asarray(rng.random((b, w)) < 0.8, jnp.float32),
           "returns": jnp.asarray(rng.normal(size=(b, w)), jnp.float32),
           "outcome": jnp.asarray(rng.integers(0, 2, (b, 1)), jnp.float32),
           "dense": jnp.zeros((b, 1), jnp.float32)}
  logprobs = jax.jit(functools.partial(rl_job.token_logprobs, model), static_argnums=2)
  ref = logprobs(params, batch["tokens"], 0)
  # The reference log-probs (the KL term's) are chunked the same way.
  _close(logprobs(params, batch["tokens"], 5), ref, "token_logprobs")
  batch["ref_logp"] = ref - 0.1
  tx = training.make_optimizer(config_lib.base_config("rl").optim, num_steps=10)
  state = training.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                              opt_state=tx.init(params), rng=jax.random.PRNGKey(0))
  outs = {}
  for chunk in (0, 5):  # 18 scored positions: 4 chunks, the last one padded
    step = jax.jit(functools.partial(
        rl_job.rl_train_step, model=model, tx=tx, nonfinite="stop",
        estimator="reinforce_value", group_size=2, kl_coef=0.05, value_coef=0.5,
        log_ratio_clamp=10.0, logits_chunk=chunk))
    outs[chunk] = step(state, batch)
  (s0, m0), (s5, m5) = outs[0], outs[5]
  for key in ("train/loss", "rl/kl", "rl/entropy", "rl/value_loss", "train/grad_norm"):
    np.testing.assert_allclose(m5[key], m0[key], rtol=1e-5, atol=1e-6, err_msg=key)
  assert float(m0["rl/kl"]) > 0 and float(m0["rl/entropy"]) > 0
  _close(s5.params, s0.params, "params after one RL step")


def test_chunked_sft_step_sharded_on_eight_devices_equals_full_head_on_one():
  from pavjax import sharding as shd  # pylint: disable=g-import-not-at-top
  cfg = dataclasses.replace(CFG, vocab_size=64, tie_embeddings=False)  # vocab split on tensor
  model = Transformer(cfg)
  tx = training.make_optimizer(config_lib.base_config("sft").optim, num_steps=10)
  rng = np.random.default_rng(4)
  data = {"inputs": rng.integers(0, 64, (8, 21)).astype(np.int32),
          "targets": rng.integers(0, 64, (8, 21)).astype(np.int32),
          "mask": (rng.random((8, 21)) < 0.8).astype(np.float32)}
  outs = []
  for mesh_cfg, devices, chunk in [({"data": 2, "fsdp": 2, "tensor": 2}, jax.devices(), 4),
                                   ({"data": 1}, jax.devices()[:1], 0)]:
    mesh = shd.make_mesh(mesh_cfg, devices)
    spec = training.train_state_spec(model, tx, 0, jnp.zeros((2, 8), jnp.int32), mesh,
                                     shd.DEFAULT_RULES)
    step = jax.jit(functools.partial(supervised.sft_train_step, model=model, tx=tx,
                                     nonfinite="stop", logits_chunk=chunk),
                   in_shardings=(spec.shardings, shd.batch_sharding(mesh)),
                   out_shardings=(spec.shardings, None))
    with shd.activate(mesh, shd.DEFAULT_RULES):
      outs.append(step(spec.init(), shd.shard_batch(data, mesh)))
  (s8, m8), (s1, m1) = outs
  for key in ("train/loss", "train/token_accuracy", "train/grad_norm"):
    np.testing.assert_allclose(m8[key], m1[key], rtol=1e-5, err_msg=key)
  for a, b in zip(jax.tree.leaves(s8.params), jax.tree.leaves(s1.params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)


def test_made_takes_the_full_logits_whatever_the_chunk():
  model = Made(MadeConfig(vocab_size=6, max_len=10, hidden_sizes=(20, 20)))
  params = nn.unbox(model.init(jax.random.PRNGKey(0), jnp.zeros((1, 4), jnp.int32))["params"])
  tokens = _tokens(2, 10, 6)
  stats, _ = training.token_stats(model, params, tokens, tokens[:, 1:], chunk=3, entropy=True)
  full, _ = training.token_stats(model, params, tokens, tokens[:, 1:], chunk=0, entropy=True)
  _close(stats, full, "made")
  with pytest.raises(ValueError, match="hidden"):
    model.apply({"params": params}, tokens, hidden=True)


def test_lm_head_on_hidden_states_equals_the_logits():
  cfg = dataclasses.replace(CFG, tie_embeddings=False, final_softcap=2.0)
  model, params = _model(cfg)
  tokens = _tokens(2, 12, cfg.vocab_size)
  out = model.apply({"params": params}, tokens, logits=False, hidden=True)
  assert out.logits is None and out.hidden.shape == (2, 12, cfg.embed_dim)
  part = model.apply({"params": params}, out.hidden[:, 3:7], method="lm_head")
  full = model.apply({"params": params}, tokens).logits
  np.testing.assert_allclose(part, full[:, 3:7], rtol=1e-6, atol=1e-6)
  assert float(jnp.abs(part).max()) <= 2.0  # capped


# ------------------------------------------------------------------------------ memory

V, B, T, CHUNK = 32768, 4, 256, 16
BIG = dataclasses.replace(CFG, vocab_size=V, max_len=T, num_layers=1)  # a small trunk
LOGITS_BYTES = B * T * V * 4  # one [B, T, V] float32 tensor: 128 MiB


def _temp_bytes(step_fn, batch):
  model = Transformer(BIG)
  tx = training.make_optimizer(config_lib.base_config("sft").optim, num_steps=10)

  def init():
    params = nn.unbox(model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32))["params"])
    return training.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                               opt_state=tx.init(params), rng=jax.random.PRNGKey(0))

  state = jax.eval_shape(init)  # abstract: nothing is allocated
  step = functools.partial(step_fn, model=model, tx=tx)
  compiled = jax.jit(step, donate_argnums=(0,)).lower(state, batch).compile()
  return compiled.memory_analysis().temp_size_in_bytes


def _spec(shape, dtype=jnp.float32):
  return jax.ShapeDtypeStruct(shape, dtype)


def test_sft_step_memory_without_full_logits():
  batch = {"inputs": _spec((B, T), jnp.int32), "targets": _spec((B, T), jnp.int32),
           "mask": _spec((B, T))}
  temp = {c: _temp_bytes(functools.partial(supervised.sft_train_step, nonfinite="skip",
                                           logits_chunk=c), batch) for c in (CHUNK, 0)}
  assert temp[0] > LOGITS_BYTES, temp  # the one-piece head holds [B, T, V] logits (and more)
  assert temp[CHUNK] < LOGITS_BYTES / 2, temp


def test_rl_step_memory_without_full_logits():
  batch = {"tokens": _spec((B, T), jnp.int32), "mask": _spec((B, T)), "returns": _spec((B, T)),
           "outcome": _spec((B, 1)), "dense": _spec((B, 1)), "ref_logp": _spec((B, T))}
  step = functools.partial(rl_job.rl_train_step, nonfinite="skip", estimator="reinforce_value",
                           group_size=1, kl_coef=0.01, value_coef=0.5, log_ratio_clamp=10.0)
  temp = {c: _temp_bytes(functools.partial(step, logits_chunk=c), batch) for c in (CHUNK, 0)}
  assert temp[0] > LOGITS_BYTES, temp
  assert temp[CHUNK] < LOGITS_BYTES / 2, temp


# ------------------------------------------------------------------------------ config


def test_logits_chunk_is_validated_and_named(tmp_path):
  import sys  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, ".")
  from configs import sft as sft_config  # pylint: disable=g-import-not-at-top
  config = sft_config.get_config("task=toy,size=test")
  assert config.train.logits_chunk == 256
  config.train.logits_chunk = -1
  with pytest.raises(config_lib.ConfigError, match=r"^config\.train\.logits_chunk: ") as err:
    run_job(config, str(tmp_path / "w"))
  assert err.value.field == "train.logits_chunk"


def test_sft_job_reads_logits_chunk_and_trains_the_same(tmp_path, monkeypatch):
  import sys  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, ".")
  from configs import sft as sft_config  # pylint: disable=g-import-not-at-top
  from pavjax import metrics  # pylint: disable=g-import-not-at-top
  chunks = []
  real = training.chunked_stats
  monkeypatch.setattr(training, "chunked_stats",
                      lambda *a, **k: chunks.append(k["chunk"]) or real(*a, **k))
  losses = {}
  for chunk in (0, 4):
    config = sft_config.get_config("task=toy,size=test")
    config.train.num_steps, config.train.batch_size, config.train.log_every = 2, 8, 1
    config.train.logits_chunk = chunk
    config.checkpoint.every = 2
    config.sample.num_eval = config.sample.batch_size = 8
    config.task.num_train, config.task.num_eval = 32, 8
    run_job(config, str(tmp_path / str(chunk)))
    rows = metrics.read_jsonl(str(tmp_path / str(chunk) / "metrics.jsonl"))
    losses[chunk] = [r["train/loss"] for r in rows]
  assert chunks and set(chunks) == {4}  # traced with the config's chunk, and only then
  np.testing.assert_allclose(losses[4], losses[0], rtol=1e-5)
