"""Orbax checkpointing with resume order: workdir checkpoint, then init_from, then scratch.

Orbax treats any integer-named step directory as a checkpoint, including one a
kill left half-written without its temporary suffix. Before opening the manager
we move every step directory that lacks orbax's commit marker aside, so a resume
only ever sees finalized steps. When no step has its marker, that is an error
(`check_some_finalized`), not a fresh start over the whole earlier run. (A kill during an ordinary save leaves
`<step>.orbax-checkpoint-tmp`, which orbax never lists and replaces when that
step is saved again.)

A finalized step can still be damaged later (a truncated or deleted array file,
an edited tree). Restoring it raises `CorruptCheckpointError`, naming the step
and its directory; orbax itself refuses missing data rather than reading zeros.
With `fallback_on_corrupt`, the newest older step that restores is used instead
and the damaged newer ones are moved aside, with a warning. Nothing here ever
falls back to fresh weights.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import re
import sys
import tempfile
import time
from typing import Any

import jax
import orbax.checkpoint as ocp

COMMIT_MARKER = "commit_success.txt"


class CorruptCheckpointError(RuntimeError):
  """A finalized checkpoint step that cannot be restored into the requested target."""

  def __init__(self, message: str, *, step: int | None = None, path: str | None = None):
    super().__init__(message)
    self.step = step
    self.path = path


# The pieces of the traceback a failed tensorstore read leaves behind (`drop_event_loop_noise`).
_NOISE = re.compile("|".join((
    r"Traceback \(most recent call last\):",
    r'File "[^"\n]*asyncio[/\\]base_events\.py", line \d+, in (?:call_soon_threadsafe|_check_closed)',
    r"self\._check_closed\(\)",
    r"raise RuntimeError\('Event loop is closed'\)",
    r"RuntimeError: Event loop is closed",
)))


def drop_event_loop_noise(text: str) -> str:
  """`text` without the "RuntimeError: Event loop is closed" tracebacks.

  A failed tensorstore read leaves callbacks that fire after orbax closed its
  event loop; each prints such a traceback straight to file descriptor 2 (not
  through `sys.excepthook`), 100+ lines after one damaged checkpoint, from several
  threads at once, so their lines interleave mid-line. They say nothing about the
  damage, which `CorruptCheckpointError` names. Their pieces are cut out wherever
  they fall, and the lines left blank by the cut are dropped; text without the
  noise is returned unchanged.
  """
  if "Event loop is closed" not in text:
    return text
  kept = []
  for line in _NOISE.sub("", text).splitlines(keepends=True):
    if line.strip():
      kept.append(line)
  return "".join(kept)


def _settle(quiet_s: float = 0.3, limit_s: float = 3.0) -> None:
  """Frees the failed reads and waits until their callbacks stop printing.

  Inside `_without_event_loop_noise` file descriptor 2 is the capture file: it is
  settled once its size holds still for `quiet_s` (at most `limit_s` in all).
  """
  gc.collect()
  deadline = time.monotonic() + limit_s
  size = -1
  while time.monotonic() < deadline:
    try:
      now = os.fstat(2).st_size
    except OSError:
      return
    if now == size:
      return
    size = now
    time.sleep(quiet_s)


@contextlib.contextmanager
def _without_event_loop_noise():
  """Captures file descriptor 2 for the block and writes it back without the noise."""
  try:
    sys.stderr.flush()
    saved = os.dup(2)
  except (OSError, ValueError):  # no usable stderr: nothing to filter
    yield
    return
  with tempfile.TemporaryFile() as captured:
    os.dup2(captured.fileno(), 2)
    try:
      yield
    finally:
      try:
        sys.stderr.flush()
      except ValueError:
        pass
      os.dup2(saved, 2)
      os.close(saved)
      captured.seek(0)
      kept = drop_event_loop_noise(captured.read().decode("utf-8", errors="replace"))
      if kept:
        os.write(2, kept.encode("utf-8"))


def _short(exc: BaseException, limit: int = 240) -> str:
  """`Type: first line [array name]` of an exception (tensorstore errors run to pages)."""
  full = str(exc)
  text = full.strip().splitlines()
  first = (text[0] if text else "").split(" See full TensorStore details")[0]
  if len(first) > limit:
    first = first[:limit] + "..."
  # Tensorstore specs name the array inside the step as 'path': 'params.layers.w/'.
  arrays = re.findall(r"'path': '([^'/]+)/'", full)
  return f"{type(exc).__name__}: {first}" + (f" [array {arrays[-1]}]" if arrays else "")


def _sync(name: str) -> None:
  """A barrier across processes (no-op with one), after process 0 renamed things."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(name)


def is_finalized(step_dir: str) -> bool:
  """True iff orbax finished writing this step (its commit marker exists)."""
  return os.path.exists(os.path.join(step_dir, COMMIT_MARKER))


def step_dirs(directory: str) -> list[int]:
  """The integer-named step directories in `directory`, finalized or not, in order."""
  if not os.path.isdir(directory):
    return []
  return sorted(int(n) for n in os.listdir(directory)
                if n.isdigit() and os.path.isdir(os.path.join(directory, n)))


def check_some_finalized(directory: str) -> None:
  """Refuses a checkpoint directory whose every step lacks its commit marker.

  Moving all of them aside would silently start a fresh run over what may be the
  whole of an earlier one (a copy that lost its marker files, an interrupted
  transfer). Raises ConfigError naming the directory and the steps.
  """
  steps = step_dirs(directory)
  if steps and not any(is_finalized(os.path.join(directory, str(s))) for s in steps):
    from pavjax import config_lib  # pylint: disable=g-import-not-at-top
    raise config_lib.ConfigError(
        "workdir", f"checkpoint directory {directory} has steps {steps} and none of them "
        f"was finalized (no {COMMIT_MARKER}); nothing was moved. If they are complete copies, "
        f"restore each step's {COMMIT_MARKER}; to start the run afresh, move or delete "
        f"{directory}")


def quarantine_unfinalized(directory: str) -> list[str]:
  """Renames integer step dirs without a commit marker; returns the new paths."""
  moved = []
  if jax.process_index() != 0:
    return moved
  for step in step_dirs(directory):
    name = str(step)
    path = os.path.join(directory, name)
    if not is_finalized(path):
      target = os.path.join(directory, f"incomplete_{name}_{int(time.time())}")
      os.rename(path, target)
      logging.warning("checkpoint step %s in %s was never finalized; moved to %s",
                      name, directory, target)
      moved.append(target)
  return moved


def _set_aside(directory: str, step: int, label: str) -> str | None:
  """Renames step directory `step` to `<label>_<step>_<time>` (process 0); returns the new path."""
  source = os.path.join(directory, str(step))
  if jax.process_index() != 0 or not os.path.isdir(source):
    return None
  target = os.path.join(directory, f"{label}_{step}_{int(time.time())}")
  os.rename(source, target)
  return target


class Checkpointer:
  """Async, keep-N, fixed-interval checkpoints of a TrainState pytree.

  `fallback_on_corrupt`: when the step asked for cannot be restored, resume from
  the newest older finalized step that can (see `restore`); off by default, so a
  damaged checkpoint stops the run with an error that names it.
  """

  def __init__(self, directory: str, *, every: int, keep: int, async_save: bool = True,
               fallback_on_corrupt: bool = False):
    self.directory = os.path.abspath(directory)
    self.every = every
    self.fallback_on_corrupt = fallback_on_corrupt
    self.restored_step: int | None = None  # the step the last `restore` really used
    check_some_finalized(self.directory)
    quarantine_unfinalized(self.directory)
    _sync("pavjax_checkpoint_quarantine")
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

  def step_dir(self, step: int) -> str:
    return os.path.join(self.directory, str(step))

  def restore(self, step: int, abstract: Any) -> Any:
    """Restores `step` into `abstract` (ShapeDtypeStructs carrying the target shardings).

    Raises CorruptCheckpointError (step and directory in the message) when the
    step cannot be read into `abstract`: missing or truncated array data, a tree
    or shape that does not match. With `fallback_on_corrupt`, older finalized
    steps are tried newest first; the first that restores is returned (its step
    in `restored_step`), and the newer ones that failed are moved aside as
    `corrupt_<step>_<time>` with a warning. If no older step restores either,
    the target itself may be what changed (another model config): nothing is
    moved, and the error lists every step tried.
    """
    with _without_event_loop_noise():
      try:
        state = self._restore_one(step, abstract)
      except CorruptCheckpointError as err:
        _settle()
        if not self.fallback_on_corrupt:
          raise
        state, used = self._fall_back(step, err, abstract)
        _settle()
        self.restored_step = used
        return state
    self.restored_step = step
    return state

  def _restore_one(self, step: int, abstract: Any) -> Any:
    path = self.step_dir(step)
    if not is_finalized(path):
      raise CorruptCheckpointError(
          f"checkpoint step {step} at {path} is missing or was never finalized "
          f"(no {COMMIT_MARKER})", step=step, path=path)
    try:
      return self._mgr.restore(step, args=ocp.args.StandardRestore(abstract))
    except (KeyboardInterrupt, SystemExit):
      raise
    except Exception as e:  # orbax and tensorstore raise many types; name the step
      why = _short(e)
      logging.debug("restoring step %d failed", step, exc_info=True)
    # Not chained: the orbax error's frames hold the failed reads, whose callbacks
    # print their noise when freed; freed here, inside `restore`'s filter.
    raise CorruptCheckpointError(
        f"checkpoint step {step} at {path} cannot be restored ({why}). Move that "
        "step directory aside, or set config.checkpoint.fallback_on_corrupt=True to "
        "resume from the previous finalized step", step=step, path=path)

  def _fall_back(self, step: int, first: CorruptCheckpointError, abstract: Any):
    failed = [first]
    for older in sorted((s for s in self.all_steps() if s < step), reverse=True):
      try:
        state = self._restore_one(older, abstract)
      except CorruptCheckpointError as e:
        failed.append(e)
        continue
      for bad in failed:
        moved = _set_aside(self.directory, bad.step, "corrupt")
        logging.warning("%s; moved to %s (checkpoint.fallback_on_corrupt)", bad,
                        moved or "(by process 0)")
      _sync("pavjax_checkpoint_fallback")
      self._mgr.reload()
      logging.warning("resuming from checkpoint step %d instead of step %d, which is damaged",
                      older, step)
      return state, older
    raise CorruptCheckpointError(
        f"no finalized checkpoint under {self.directory} restores into this run's state "
        f"(tried steps {[e.step for e in failed]}; nothing was moved, since the model or "
        f"optimizer config may be what changed): " + " | ".join(str(e) for e in failed),
        step=step, path=self.step_dir(step)) from first

  def wait(self) -> None:
    self._mgr.wait_until_finished()

  def close(self) -> None:
    self._mgr.wait_until_finished()
    self._mgr.close()


def _holds_policy_and_value(mgr, step: int, abstract_params: Any) -> bool:
  """Whether step `step` stores {'policy', 'value'} parameters where a plain tree is wanted."""
  if isinstance(abstract_params, dict) and "policy" in abstract_params:
    return False
  try:
    stored = mgr.item_metadata(step)["params"]
  except (KeyError, TypeError, ValueError, FileNotFoundError):
    return False
  return hasattr(stored, "keys") and set(stored.keys()) == {"policy", "value"}


def restore_params(path: str, abstract_params: Any) -> Any:
  """Parameters of the latest finalized checkpoint under `path` (for `init_from`).

  `path` is either a checkpoint directory (latest step used) or one step directory.
  A checkpoint of RL with a separate value network (params {'policy', 'value'},
  `models.PolicyAndValue`) gives its policy.
  """
  path = os.path.abspath(path)
  if os.path.basename(path).isdigit():
    directory, step = os.path.dirname(path), int(os.path.basename(path))
  else:
    directory, step = path, None
  mgr = ocp.CheckpointManager(directory, item_handlers=ocp.PyTreeCheckpointHandler())
  steps = [s for s in mgr.all_steps() if is_finalized(os.path.join(directory, str(s)))]
  if step is None:
    if not steps:
      raise FileNotFoundError(f"init_from={path}: no finalized checkpoint found")
    step = max(steps)
  elif step not in steps:
    raise FileNotFoundError(f"init_from={path}: step {step} is missing or not finalized")
  try:
    policy_only = _holds_policy_and_value(mgr, step, abstract_params)
    target = {"params": {"policy": abstract_params} if policy_only else abstract_params}
    restored = mgr.restore(step, args=ocp.args.PyTreeRestore(
        item=target,
        restore_args=jax.tree.map(
            lambda a: ocp.ArrayRestoreArgs(sharding=a.sharding, global_shape=a.shape,
                                           dtype=a.dtype), target),
        partial_restore=True))
    if policy_only:
      restored = {"params": restored["params"]["policy"]}
  except (KeyboardInterrupt, SystemExit):
    raise
  except Exception as e:  # name the step, whatever orbax or tensorstore raised
    step_path = os.path.join(directory, str(step))
    raise CorruptCheckpointError(
        f"init_from: parameters of checkpoint step {step} at {step_path} cannot be "
        f"restored ({_short(e)})", step=step, path=step_path) from e
  finally:
    mgr.close()
  # partial_restore leaves a parameter the checkpoint lacks as its abstract value:
  # refuse it here rather than train from a ShapeDtypeStruct (or zeros) later.
  missing = [jax.tree_util.keystr(p) for p, leaf in
             jax.tree_util.tree_flatten_with_path(restored["params"])[0]
             if not isinstance(leaf, jax.Array)]
  if missing:
    step_path = os.path.join(directory, str(step))
    raise CorruptCheckpointError(
        f"init_from: checkpoint step {step} at {step_path} has no data for parameters "
        f"{missing[:5]}{' ...' if len(missing) > 5 else ''}", step=step, path=step_path)
  return restored["params"]
