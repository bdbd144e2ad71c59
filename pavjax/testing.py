"""Test helpers: a hand-made bigram LM, checkpoint restore, NaN injection, param checks.

The toy task (running digit sums) lives in `pavjax.tasks.toy`.
"""

from __future__ import annotations

import os

import flax.linen as nn
import jax
import numpy as np

from pavjax.models.kv_cache import KVCache


class BigramLM:
  """A hand-made `CachedLM` for sampler and search tests: logits = params[last token].

  `params` is a [V, V] logit table; the cache only advances its index.
  """

  def init_cache(self, batch, size, start):
    return KVCache.create(num_layers=1, batch=batch, size=size, num_kv_heads=1, head_dim=1,
                          start=start)

  def __call__(self, params, tokens, cache):
    return params[tokens], cache.replace(index=cache.index + tokens.shape[1])


def restore_state(workdir: str, step: int):
  """The full train state a job checkpointed at `step` in `workdir` (for exact-resume tests)."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  mgr = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"))
  state = mgr.restore(step, args=ocp.args.StandardRestore())
  mgr.close()
  return state


def poison_loss_on_steps(monkeypatch, bad_steps) -> None:
  """Makes a job's loss NaN on the given 1-based steps (its batch mask becomes NaN).

  Patches `sharding.shard_batch`, which every training job calls once per step.
  """
  from pavjax import sharding as shd  # pylint: disable=g-import-not-at-top
  real, calls = shd.shard_batch, []

  def poisoned(batch, mesh):
    calls.append(1)
    if len(calls) in bad_steps:
      batch = {**batch, "mask": batch["mask"] * np.nan}
    return real(batch, mesh)

  monkeypatch.setattr(shd, "shard_batch", poisoned)


def assert_params_named_and_counted(boxed, num_params: int) -> None:
  """Every parameter of `boxed` (from `model.init`) carries one logical axis name
  per dimension, and the unboxed sizes add up to `num_params` (the config's count)."""
  leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
  assert all(isinstance(x, nn.LogicallyPartitioned) for x in leaves)
  for leaf in leaves:
    assert len(leaf.names) == leaf.value.ndim, leaf.names
  assert sum(x.size for x in jax.tree.leaves(nn.unbox(boxed))) == num_params
