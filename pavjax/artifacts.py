"""What jobs leave on disk: content hashes, atomic writes, completion markers, output names.

Every file a later stage or a resumed job trusts is written here, so the rules hold
everywhere: a file appears whole or not at all (temp file, then `os.replace`), only
process 0 writes shared outputs, and a cache is reused only when the content hash of
what made it matches. Stage outputs are named once, below; the pipeline's links and
the report use these names, never path literals.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Mapping

import jax
import numpy as np

# --- names of what a job writes into its workdir ------------------------------------------
CONFIG = "config.json"  # the resolved config (the run's record of itself)
SUMMARY = "summary.json"  # a job's final summary
CHECKPOINTS = "checkpoints"  # orbax checkpoints (train jobs)
EVAL_LOG = "eval.jsonl"  # evaluations over training
EVAL_OUTCOMES_LOG = "eval_outcomes.jsonl"  # RL: each evaluation's per-problem outcomes
STAGE_STATE = "stage.json"  # the pipeline's completion marker of a stage
SEARCH_POOL = "pool"  # search: the best-of-N pool, a trajectory table
SEARCH_PROVER_POOL = "pool_prover.npz"  # search: the prover's Q^mu of the pool
SEARCH_ROWS = "rows.jsonl"  # search: one finished (method, N) result per line
RFT_POOL = "rft_pool"  # RFT: the sampled responses, a trajectory table
TASK_CACHE = "task"  # pipeline: the task's tokenizer and prepared data, made once


def rollouts_dir(split: str) -> str:
  """A rollouts job's trajectory table of `split`, relative to its workdir."""
  return os.path.join("rollouts", split)


# --- hashing and writing ------------------------------------------------------------------
def content_hash(obj: Any, length: int = 16) -> str:
  """A short stable hash of a JSON-able value (dict keys sorted)."""
  blob = json.dumps(obj, sort_keys=True, default=str).encode()
  return hashlib.sha256(blob).hexdigest()[:length]


def is_lead_process() -> bool:
  return jax.process_index() == 0


def _replace_atomically(path: str, write) -> None:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = f"{path}.tmp.{os.getpid()}"
  write(tmp)
  os.replace(tmp, path)


def write_json(path: str, obj: Any) -> None:
  """Writes JSON atomically (process 0 only): a reader never sees half a file."""
  if not is_lead_process():
    return

  def write(tmp):
    with open(tmp, "w", encoding="utf-8") as f:
      json.dump(obj, f, indent=2, sort_keys=True, default=float)
      f.write("\n")

  _replace_atomically(path, write)


def read_json(path: str) -> Any | None:
  """The JSON value in `path`, or None when the file does not exist."""
  if not os.path.exists(path):
    return None
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def write_bytes(path: str, data: bytes) -> None:
  """Writes a binary file atomically (every process may call it: same bytes, same name)."""

  def write(tmp):
    with open(tmp, "wb") as f:
      f.write(data)

  _replace_atomically(path, write)


def save_npz(path: str, arrays: Mapping[str, np.ndarray]) -> None:
  """Writes arrays to an npz atomically (no pickle: object arrays are refused on load)."""

  def write(tmp):
    with open(tmp, "wb") as f:  # a file object: np.savez would append '.npz' to a name
      np.savez(f, **{k: np.asarray(v) for k, v in arrays.items()})

  _replace_atomically(path, write)


def load_npz(path: str) -> dict[str, np.ndarray]:
  with np.load(path, allow_pickle=False) as z:
    return {k: z[k] for k in z.files}


HASH_KEY = "content_hash"


def save_cached(path: str, chash: str, arrays: Mapping[str, np.ndarray]) -> None:
  """An npz cache keyed by the content hash of what made it (process 0 only)."""
  if is_lead_process():
    save_npz(path, {HASH_KEY: np.asarray(chash), **arrays})


def load_cached(path: str, chash: str) -> dict[str, np.ndarray] | None:
  """The arrays of a cache written by `save_cached` with hash `chash`, else None."""
  if not os.path.exists(path):
    return None
  arrays = load_npz(path)
  if str(arrays.pop(HASH_KEY, "")) != chash:
    return None
  return arrays


# --- completion markers -------------------------------------------------------------------
def read_marker(directory: str, name: str = STAGE_STATE) -> dict | None:
  """The completion record in `directory`, or None."""
  return read_json(os.path.join(directory, name))


def write_marker(directory: str, record: Mapping[str, Any], name: str = STAGE_STATE) -> None:
  """Records progress of the work in `directory`: `record` holds at least `hash`, `complete`."""
  write_json(os.path.join(directory, name), dict(record))


def is_complete(directory: str, chash: str, name: str = STAGE_STATE) -> bool:
  """Whether the work in `directory` finished with content hash `chash`."""
  record = read_marker(directory, name)
  return bool(record and record.get("hash") == chash and record.get("complete"))
