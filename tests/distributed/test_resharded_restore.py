"""A train state saved on one mesh restores onto others: bitwise values, target shardings.

Saved on a 1-D mesh of 8 devices (parameters split 8 ways over `fsdp`), restored
through `Checkpointer.restore` onto (2, 4) = tensor x fsdp, (1, 8) = fsdp x data
(parameters replicated on all 8) and one device; each target's layout comes from
`training.train_state_spec` on that mesh, as a resumed job would build it.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pavjax import checkpoint as ckpt_lib
from pavjax import config_lib
from pavjax import sharding as shd
from pavjax import training
from pavjax.models import Transformer, TransformerConfig

MODEL = TransformerConfig(vocab_size=16, embed_dim=64, num_layers=2, num_heads=4,
                          num_kv_heads=2, head_dim=16, mlp_dim=128, max_len=16)
SAVED_MESH = {"fsdp": 8}
TARGETS = {
    "(2, 4)": ({"tensor": 2, "fsdp": 4}, 8),
    "(1, 8)": ({"fsdp": 1, "data": 8}, 8),
    "one device": ({"data": 1}, 1),
}


def _spec(mesh_cfg, num_devices):
  mesh = shd.make_mesh(mesh_cfg, jax.devices()[:num_devices])
  tx = training.make_optimizer(config_lib.base_config("sft").optim, num_steps=10)
  example = jnp.zeros((shd.data_parallel_size(mesh), 8), jnp.int32)
  return training.train_state_spec(Transformer(MODEL), tx, 0, example, mesh, shd.DEFAULT_RULES)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
  """(checkpoint dir, host copy of the state) after saving on the (8,) mesh."""
  spec = _spec(SAVED_MESH, 8)
  state = spec.init()
  # Distinct values in every float leaf (Adam's moments start at zero), elementwise,
  # so the layout stays the (8,) one.
  bump = lambda x: (x + jnp.arange(x.size, dtype=x.dtype).reshape(x.shape) * 1e-3
                    if jnp.issubdtype(x.dtype, jnp.floating) else x)
  state = jax.jit(lambda s: jax.tree.map(bump, s), out_shardings=spec.shardings)(state)
  embedding = state.params["embedding"]
  assert embedding.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp")
  assert embedding.addressable_shards[0].data.size == embedding.size // 8
  directory = str(tmp_path_factory.mktemp("resharded"))
  c = ckpt_lib.Checkpointer(directory, every=1, keep=3)
  c.save(7, state)
  c.close()
  return directory, jax.tree.map(np.asarray, state)


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_restore_onto_another_mesh(saved, target):
  directory, original = saved
  mesh_cfg, num_devices = TARGETS[target]
  abstract = _spec(mesh_cfg, num_devices).abstract
  c = ckpt_lib.Checkpointer(directory, every=1, keep=3)
  restored = c.restore(7, abstract)
  c.close()
  assert c.restored_step == 7
  got = jax.tree_util.tree_flatten_with_path(restored)[0]
  want = jax.tree.leaves(original)
  targets = jax.tree.leaves(abstract)
  assert len(got) == len(want) == len(targets)
  for (path, leaf), value, spec in zip(got, want, targets):
    name = jax.tree_util.keystr(path)
    assert leaf.sharding == spec.sharding, (name, leaf.sharding, spec.sharding)
    assert leaf.shape == value.shape and leaf.dtype == value.dtype, name
    np.testing.assert_array_equal(np.asarray(leaf), value, err_msg=name)
    # Each device holds exactly the slice the target sharding assigns it.
    for shard in leaf.addressable_shards:
      np.testing.assert_array_equal(np.asarray(shard.data), value[shard.index], err_msg=name)
  # The embedding [vocab, embed] splits 2 x 4 ways on (2, 4) and not at all on the others.
  embedding = restored.params["embedding"]
  pieces = {"(2, 4)": 8, "(1, 8)": 1, "one device": 1}[target]
  assert embedding.addressable_shards[0].data.size == embedding.size // pieces
  assert len(embedding.sharding.device_set) == num_devices


def test_params_only_restore_onto_two_by_four(saved):
  """The init_from path (`restore_params`) reshards the same way."""
  directory, original = saved
  abstract = _spec(*TARGETS["(2, 4)"]).abstract.params
  params = ckpt_lib.restore_params(directory, abstract)
  for leaf, value, spec in zip(jax.tree.leaves(params), jax.tree.leaves(original.params),
                               jax.tree.leaves(abstract)):
    assert leaf.sharding == spec.sharding
    np.testing.assert_array_equal(np.asarray(leaf), value)
