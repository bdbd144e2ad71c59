"""Sharding: rules -> parameter shardings; 8-device train step == 1-device step."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from pavjax import config_lib
from pavjax import sharding as shd
from pavjax import tasks
from pavjax import training
from pavjax import supervised
from pavjax.models import Transformer, TransformerConfig

MODEL = TransformerConfig(vocab_size=16, embed_dim=32, num_layers=2, num_heads=4,
                          num_kv_heads=2, head_dim=8, mlp_dim=64, max_len=16)


def _one_step(mesh_cfg, devices):
  mesh = shd.make_mesh(mesh_cfg, devices)
  rules = shd.DEFAULT_RULES
  optim = config_lib.base_config("sft").optim
  tx = training.make_optimizer(optim, num_steps=10)
  model = Transformer(MODEL)
  spec = training.train_state_spec(model, tx, 0, jnp.zeros((2, 8), jnp.int32), mesh, rules)
  state = spec.init()
  task = tasks.make_task(tasks.default_task_config("toy"))
  data = tasks.sft_arrays(task, task.split("train")[:8], MODEL.max_len)
  batch = shd.shard_batch({"inputs": data.inputs, "targets": data.targets, "mask": data.mask},
                          mesh)
  step = jax.jit(functools.partial(supervised.sft_train_step, model=model, tx=tx, nonfinite="stop"),
                 in_shardings=(spec.shardings, shd.batch_sharding(mesh)),
                 out_shardings=(spec.shardings, None))
  with shd.activate(mesh, rules):
    for _ in range(2):
      state, metrics = step(state, batch)
  return state, metrics, spec


def test_mesh_resolution_and_errors():
  assert shd.resolve_mesh_shape({"data": -1, "fsdp": 2, "tensor": 1}, 8) == {
      "data": 4, "fsdp": 2, "tensor": 1}
  with pytest.raises(ValueError, match="multiply to 4"):
    shd.resolve_mesh_shape({"data": 2, "fsdp": 2, "tensor": 1}, 8)
  with pytest.raises(ValueError, match="at most one axis"):
    shd.resolve_mesh_shape({"data": -1, "fsdp": -1}, 8)


def test_eight_devices_match_one_device_and_shardings_follow_rules():
  assert jax.device_count() == 8, "needs 8 (faked) devices; see tests/conftest.py"
  s8, m8, spec8 = _one_step({"data": 2, "fsdp": 2, "tensor": 2}, jax.devices())
  s1, m1, _ = _one_step({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
  np.testing.assert_allclose(m8["train/loss"], m1["train/loss"], rtol=1e-5)
  for a, b in zip(jax.tree.leaves(s8.params), jax.tree.leaves(s1.params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)
  for a, b in zip(jax.tree.leaves(s8.opt_state), jax.tree.leaves(s1.opt_state)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)

  params = s8.params
  expect = {
      ("embedding",): P("tensor", "fsdp"),
      ("layers", "attn", "wq"): P(None, "fsdp", "tensor", None),
      ("layers", "attn", "wk"): P(None, "fsdp", "tensor", None),
      ("layers", "attn", "wo"): P(None, "tensor", None, "fsdp"),
      ("layers", "mlp", "w_gate"): P(None, "fsdp", "tensor"),
      ("layers", "mlp", "w_down"): P(None, "tensor", "fsdp"),
      ("final_norm", "scale"): P("fsdp"),
  }
  for path, want in expect.items():
    leaf = params
    for key in path:
      leaf = leaf[key]
    assert leaf.sharding.spec == want, (path, leaf.sharding.spec)
    # Parameters are really split: each device holds 1/(product of used axes).
    used = [a for a in want if a is not None]
    assert leaf.addressable_shards[0].data.size == leaf.size // (2 ** len(used))
  assert s8.step.sharding.spec == P()


def test_indivisible_dimension_is_named():
  mesh = shd.make_mesh({"data": 1, "fsdp": 1, "tensor": 8})
  model = Transformer(MODEL)  # 4 heads cannot split 8 ways
  tx = training.make_optimizer(config_lib.base_config("sft").optim, 10)
  with pytest.raises(ValueError, match=r"params\['layers'\]\['attn'\]\['w[kq]'\]: dimension 2.*not divisible"):
    training.train_state_spec(model, tx, 0, jnp.zeros((8, 4), jnp.int32), mesh,
                              shd.DEFAULT_RULES)
