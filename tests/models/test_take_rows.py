"""`take_rows` (the KV cache's row gather) equals `jnp.take` on a mesh, and leaves its
result split over the data-parallel devices instead of whole on each one."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from pavjax import sharding as shd
from pavjax.models.kv_cache import KV_AXES, KVCache, take_rows


def _buf(rows, kv_heads=4):
  shape = (2, rows, kv_heads, 6, 3)  # [L, B, K, S, H]
  return jnp.arange(np.prod(shape), dtype=jnp.float32).reshape(shape)


def _run(mesh_cfg, buf, rows, groups=0):
  mesh = shd.make_mesh(mesh_cfg)
  spec = P(None, ("data", "fsdp"), "tensor" if buf.shape[2] % mesh.shape["tensor"] == 0
           else None)
  with shd.activate(mesh, shd.DEFAULT_RULES):
    buf = jax.device_put(buf, NamedSharding(mesh, spec))
    rows = jax.device_put(rows, NamedSharding(mesh, P()))
    fn = jax.jit(lambda b, r: take_rows(b, r, axes=KV_AXES, groups=groups))
    out = fn(buf, rows)
    text = fn.lower(buf, rows).as_text()
  return out, text


@pytest.mark.parametrize("mesh_cfg", [{"data": 2, "fsdp": 2, "tensor": 2},
                                      {"data": 1, "fsdp": 8, "tensor": 1}])
def test_ring_gather_equals_take_and_stays_split(mesh_cfg):
  buf = _buf(16)
  rows = jnp.asarray([15, 0, 7, 7, 3, 12, 8, 1], jnp.int32)  # any source row, repeats too
  out, text = _run(mesh_cfg, buf, rows)
  np.testing.assert_array_equal(np.asarray(out), np.asarray(jnp.take(buf, rows, axis=1)))
  assert "collective_permute" in text or "ppermute" in text  # the ring ran
  dp = mesh_cfg["data"] * mesh_cfg["fsdp"]
  shard_rows = {s.data.shape[1] for s in out.addressable_shards}
  assert shard_rows == {8 // dp}, shard_rows  # each device holds only its own rows


def test_grouped_gather_stays_on_device():
  groups, per_group, keep = 8, 6, 2  # 8 problems x 6 candidates, 2 survive each
  buf = _buf(groups * per_group)
  rng = np.random.default_rng(0)
  rows = np.concatenate([g * per_group + rng.choice(per_group, keep, replace=False)
                         for g in range(groups)]).astype(np.int32)
  out, text = _run({"data": 2, "fsdp": 2, "tensor": 2}, buf, jnp.asarray(rows), groups=groups)
  np.testing.assert_array_equal(np.asarray(out), np.asarray(jnp.take(buf, rows, axis=1)))
  assert "collective_permute" not in text and "ppermute" not in text
  assert {s.data.shape[1] for s in out.addressable_shards} == {groups * keep // 4}


@pytest.mark.parametrize("rows", [[3, 1, 2], [5, 0, 4, 4, 1, 3, 2, 6, 7]])
def test_rows_that_do_not_divide_fall_back_to_take(rows):
  buf = _buf(8)
  rows = jnp.asarray(rows, jnp.int32)
  out, _ = _run({"data": 2, "fsdp": 2, "tensor": 2}, buf, rows)
  np.testing.assert_array_equal(np.asarray(out), np.asarray(jnp.take(buf, rows, axis=1)))


def test_cache_gather_outside_a_mesh_is_take():
  buf = _buf(4)
  cache = KVCache(k=buf, v=-buf, start=jnp.arange(4, dtype=jnp.int32),
                  index=jnp.zeros((), jnp.int32))
  rows = jnp.asarray([3, 3, 0], jnp.int32)
  got = cache.gather(rows)
  np.testing.assert_array_equal(np.asarray(got.k), np.asarray(buf[:, rows]))
  np.testing.assert_array_equal(np.asarray(got.v), -np.asarray(buf[:, rows]))
  np.testing.assert_array_equal(np.asarray(got.start), [3, 3, 0])
