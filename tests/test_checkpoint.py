"""Checkpoint helpers: commit markers, quarantine, params-only restore (init_from)."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pavjax import checkpoint as ckpt_lib
from pavjax import sharding as shd


def _state(mesh, scale):
  sh = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  w = jax.device_put(jnp.arange(16.0) * scale, sh)
  return {"step": jnp.int32(scale), "params": {"w": w}, "opt_state": {"mu": w * 0}}


def test_quarantine_then_resume_latest_finalized(tmp_path):
  mesh = shd.make_mesh({"data": -1})
  c = ckpt_lib.Checkpointer(str(tmp_path), every=1, keep=5)
  c.save(1, _state(mesh, 1))
  c.save(2, _state(mesh, 2))
  c.close()
  os.makedirs(tmp_path / "3" / "default")  # a kill left this without a commit marker
  c = ckpt_lib.Checkpointer(str(tmp_path), every=1, keep=5)
  assert c.latest_step() == 2 and c.all_steps() == [1, 2]
  assert not (tmp_path / "3").exists()
  abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding),
                          _state(mesh, 0))
  restored = c.restore(2, abstract)
  np.testing.assert_array_equal(restored["params"]["w"], np.arange(16.0) * 2)
  assert restored["params"]["w"].sharding == abstract["params"]["w"].sharding
  c.close()


def test_restore_params_only_onto_another_mesh(tmp_path):
  mesh8 = shd.make_mesh({"data": -1})
  c = ckpt_lib.Checkpointer(str(tmp_path), every=1, keep=5)
  c.save(4, _state(mesh8, 4))
  c.close()
  mesh2 = shd.make_mesh({"data": 2}, jax.devices()[:2])
  target = {"w": jax.ShapeDtypeStruct((16,), jnp.float32, sharding=jax.sharding.NamedSharding(
      mesh2, jax.sharding.PartitionSpec("data")))}
  params = ckpt_lib.restore_params(str(tmp_path), target)
  np.testing.assert_array_equal(params["w"], np.arange(16.0) * 4)
  assert params["w"].sharding == target["w"].sharding
  with pytest.raises(FileNotFoundError, match="no finalized checkpoint"):
    ckpt_lib.restore_params(str(tmp_path / "empty"), target)
