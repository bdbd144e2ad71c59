"""Orbax checkpointing with resume order: workdir checkpoint, then init_from, then scratch.

Orbax treats any integer-named step directory as a checkpoint, including one a
kill left half-written without its temporary suffix. Before opening the manager
we move every step directory that lacks orbax's commit marker aside, so a resume
only ever sees finalized steps.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import jax
import orbax.checkpoint as ocp

COMMIT_MARKER = "commit_success.txt"


def is_finalized(step_dir: str) -> bool:
  """True iff orbax finished writing this step (its commit marker exists)."""
  return os.path.exists(os.path.join(step_dir, COMMIT_MARKER))


def quarantine_unfinalized(directory: str) -> list[str]:
  """Renames integer step dirs without a commit marker; returns the new paths."""
  moved = []
  if not os.path.isdir(directory) or jax.process_index() != 0:
    return moved
  for name in sorted(os.listdir(directory)):
    path = os.path.join(directory, name)
    if name.isdigit() and os.path.isdir(path) and not is_finalized(path):
      target = os.path.join(directory, f"incomplete_{name}_{int(time.time())}")
      os.rename(path, target)
      logging.warning("checkpoint step %s in %s was never finalized; moved to %s",
                      name, directory, target)
      moved.append(target)
  return moved


class Checkpointer:
  """Async, keep-N, fixed-interval checkpoints of a TrainState pytree."""

  def __init__(self, directory: str, *, every: int, keep: int, async_save: bool = True):
    self.directory = os.path.abspath(directory)
    self.every = every
    quarantine_unfinalized(self.directory)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, save_interval_steps=1, enable_async_checkpointing=async_save,
        create=True)
    self._mgr = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self) -> int | None:
    return self._mgr.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._mgr.all_steps())

  def should_save(self, step: int) -> bool:
    return self.every > 0 and step % self.every == 0

  def save(self, step: int, state: Any) -> None:
    """Starts an (async) save of `state` at `step`; the previous save is awaited first."""
    self._mgr.save(step, args=ocp.args.StandardSave(state), force=True)

  def restore(self, step: int, abstract: Any) -> Any:
    """Restores into `abstract` (ShapeDtypeStructs carrying the target shardings)."""
    return self._mgr.restore(step, args=ocp.args.StandardRestore(abstract))

  def wait(self) -> None:
    self._mgr.wait_until_finished()

  def close(self) -> None:
    self._mgr.wait_until_finished()
    self._mgr.close()


def restore_params(path: str, abstract_params: Any) -> Any:
  """Parameters of the latest finalized checkpoint under `path` (for `init_from`).

  `path` is either a checkpoint directory (latest step used) or one step directory.
  """
  path = os.path.abspath(path)
  if os.path.basename(path).isdigit():
    directory, step = os.path.dirname(path), int(os.path.basename(path))
  else:
    directory, step = path, None
  mgr = ocp.CheckpointManager(directory)
  steps = [s for s in mgr.all_steps() if is_finalized(os.path.join(directory, str(s)))]
  if step is None:
    if not steps:
      raise FileNotFoundError(f"init_from={path}: no finalized checkpoint found")
    step = max(steps)
  elif step not in steps:
    raise FileNotFoundError(f"init_from={path}: step {step} is missing or not finalized")
  restored = mgr.restore(step, args=ocp.args.PyTreeRestore(
      item={"params": abstract_params},
      restore_args=jax.tree.map(
          lambda a: ocp.ArrayRestoreArgs(sharding=a.sharding, global_shape=a.shape,
                                         dtype=a.dtype), {"params": abstract_params}),
      partial_restore=True))
  mgr.close()
  return restored["params"]
