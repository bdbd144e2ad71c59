"""Meshes, logical-axis rules and shardings derived from abstract state.

Models name every parameter axis (`embed`, `mlp`, `heads`, ...); the config maps
names to mesh axes. Shardings of a whole train state come from `jax.eval_shape`
of its init function, so parameters are created already sharded and full weights
never sit on one device.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")
# Batch dimensions are split over every data-parallel mesh axis.
BATCH_AXES = ("data", "fsdp")

# Logical axis -> mesh axes, in priority order (flax resolves the first free rule).
DEFAULT_RULES = (
    ("batch", ("data", "fsdp")),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("kv", None),
    ("length", None),
    ("layers", None),
)


def resolve_mesh_shape(mesh_cfg: Mapping[str, int], num_devices: int) -> dict[str, int]:
  """Axis sizes with the single -1 replaced by "the rest of the devices"."""
  shape = dict(mesh_cfg)
  unknown = [k for k, v in shape.items() if v == -1]
  if len(unknown) > 1:
    raise ValueError(f"mesh: at most one axis may be -1, got {unknown}")
  for name, size in shape.items():
    if size != -1 and size < 1:
      raise ValueError(f"mesh.{name}={size}: sizes must be positive or -1")
  known = math.prod(v for v in shape.values() if v != -1)
  if unknown:
    if num_devices % known:
      raise ValueError(f"mesh: fixed axes multiply to {known}, which does not divide "
                       f"the {num_devices} devices")
    shape[unknown[0]] = num_devices // known
  if math.prod(shape.values()) != num_devices:
    raise ValueError(f"mesh: axis sizes {shape} multiply to {math.prod(shape.values())}, "
                     f"but there are {num_devices} devices")
  return shape


def make_mesh(mesh_cfg: Mapping[str, int], devices: Sequence[Any] | None = None) -> Mesh:
  """A mesh over `devices` (default: all) with Auto axis types.

  Auto (not Explicit) so that `with_sharding_constraint` with logical names works.
  """
  devices = list(devices) if devices is not None else jax.devices()
  shape = resolve_mesh_shape(mesh_cfg, len(devices))
  auto = (jax.sharding.AxisType.Auto,) * len(shape)
  return jax.make_mesh(tuple(shape.values()), tuple(shape.keys()), axis_types=auto,
                       devices=devices)


def rules_from_config(rules: Sequence[Sequence[Any]]) -> tuple[tuple[str, Any], ...]:
  """Normalizes config rules (lists from JSON/overrides) to flax's tuple form."""
  out = []
  for name, axes in rules:
    if isinstance(axes, list):
      axes = tuple(axes)
    out.append((name, axes))
  return tuple(out)


@contextlib.contextmanager
def activate(mesh: Mesh, rules):
  """Makes `mesh` and the logical rules current for tracing (activation constraints)."""
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules_for_mesh(rules, mesh)):
    yield


def logical_shardings(boxed_abstract: Any, mesh: Mesh, rules) -> Any:
  """NamedShardings for a pytree of (possibly) LogicallyPartitioned leaves.

  Unboxed leaves (step counters, RNG keys) are replicated.
  """
  specs = nn.get_partition_spec(boxed_abstract)
  return nn.logical_to_mesh_sharding(specs, mesh, rules_for_mesh(rules, mesh))


def rules_for_mesh(rules, mesh: Mesh) -> tuple:
  """Drops mesh axes the mesh does not have (a mesh of only `data` is still valid)."""
  out = []
  for name, axes in rules:
    if isinstance(axes, str):
      axes = axes if axes in mesh.shape else None
    elif axes is not None:
      kept = tuple(a for a in axes if a in mesh.shape)
      axes = kept if kept else None
    out.append((name, axes))
  return tuple(out)


def check_divisible(abstract: Any, shardings: Any) -> None:
  """Fails with the parameter path when a sharded dimension does not divide."""
  flat, _ = jax.tree_util.tree_flatten_with_path(abstract)
  shard_flat = jax.tree_util.tree_leaves(shardings)
  for (path, leaf), sharding in zip(flat, shard_flat):
    mesh_shape = dict(sharding.mesh.shape)
    for dim, axes in enumerate(sharding.spec):
      if axes is None:
        continue
      axes = (axes,) if isinstance(axes, str) else tuple(axes)
      size = math.prod(mesh_shape[a] for a in axes)
      if leaf.shape[dim] % size:
        name = jax.tree_util.keystr(path)
        raise ValueError(
            f"{name}: dimension {dim} has size {leaf.shape[dim]}, not divisible by mesh "
            f"axes {axes} of size {size}; change the model size or `config.rules`")


def batch_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
  """Leading axis over the data-parallel mesh axes, the rest replicated."""
  axes = tuple(a for a in BATCH_AXES if a in mesh.shape)
  return NamedSharding(mesh, P(axes, *([None] * (ndim - 1))))


def data_parallel_size(mesh: Mesh) -> int:
  return math.prod(mesh.shape[a] for a in BATCH_AXES if a in mesh.shape)


def round_to_data_parallel(rows: int, mesh: Mesh) -> int:
  """The smallest multiple of the data-parallel size that holds `rows` (fixed batch shapes)."""
  dp = data_parallel_size(mesh)
  return -(-rows // dp) * dp


def shard_batch(batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Global arrays from this process's rows of a host batch.

  Every process computes the same global batch indices and passes its own slice;
  with one process that slice is the whole batch.
  """
  out = {}
  for key, value in batch.items():
    value = np.asarray(value)
    n = value.shape[0]
    per_process = n // jax.process_count()
    start = jax.process_index() * per_process
    local = value[start:start + per_process]
    out[key] = jax.make_array_from_process_local_data(
        batch_sharding(mesh, value.ndim), local, value.shape)
  return out


def to_host(tree: Any) -> Any:
  """Numpy values of (possibly batch-sharded) arrays, the same on every process.

  One process: `jax.device_get`. Several: an array whose shards live partly on
  other processes is all-gathered first (`device_get` cannot read those), so
  host-side code (scoring responses, beam bookkeeping) sees every row.
  """
  if jax.process_count() == 1:
    return jax.device_get(tree)
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

  def fetch(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(jax.device_get(x))

  return jax.tree.map(fetch, tree)
