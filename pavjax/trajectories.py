"""The trajectory table: step-segmented responses, the one thing every stage passes on.

Rollouts, the RFT pool, the search pool and RL batches are all B responses to
problems, cut into steps, with values attached to each prefix. One table holds them:

  tokens       [B, W]   int32   prompt + response, right-padded with the pad id (0)
  prompt_len   [B]      int32
  length       [B]      int32   prompt + response tokens
  prefix_ends  [B, H+1] int32   sequence index of the last token of each prefix:
                                column 0 the question (last prompt token), column h
                                the end of step h; -1 where the response has no step h
  outcome      [B]      float32 the outcome reward Rex
  reason       [B]      int32   index into `pavjax.tasks.base.REASONS`
  problem      [B]      int32   index of the problem in its split
  finished     [B]      bool    the response emitted EOS
  columns      name -> [B] or [B, H+1] arrays: per-row or per-prefix values
               (`q_hat`, `mc_success`, `mc_count`, verifier predictions, `seed`, ...)

Everything else (step mask, step count, token step ids, loss mask, prefix ids for
sibling and parent groups) is a function of the table, never a stored copy.

`from_responses` is the only place in the package that cuts a response into steps:
it asks the Task (`Task.segment_steps`). A response with more than H steps keeps
its first H - 1 and merges the rest into step H, so the last prefix always ends
where the response ends.

On disk a table is a directory of npz shards plus `manifest.json` (schema version,
content hash of what made it, shards done, budget). A shard appears atomically, so
a killed writer loses at most the shard in progress. No pickle.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from typing import Any, Mapping, Sequence

import numpy as np

from pavjax import artifacts
from pavjax.tasks import base

SCHEMA_VERSION = 2
MANIFEST = "manifest.json"
CORE = ("tokens", "prompt_len", "length", "prefix_ends", "outcome", "reason", "problem",
        "finished")


@dataclasses.dataclass(frozen=True)
class Trajectories:
  """B step-segmented responses as fixed-shape host arrays (see the module docstring)."""

  tokens: np.ndarray
  prompt_len: np.ndarray
  length: np.ndarray
  prefix_ends: np.ndarray
  outcome: np.ndarray
  reason: np.ndarray
  problem: np.ndarray
  finished: np.ndarray
  columns: Mapping[str, np.ndarray] = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    b = self.tokens.shape[0]
    for name in CORE[1:]:
      if getattr(self, name).shape[0] != b:
        raise ValueError(f"trajectory field {name!r} has {getattr(self, name).shape[0]} rows, "
                         f"tokens has {b}")
    for name, col in self.columns.items():
      if col.shape[0] != b:
        raise ValueError(f"trajectory column {name!r} has {col.shape[0]} rows, tokens has {b}")

  def __len__(self) -> int:
    return self.tokens.shape[0]

  def __getitem__(self, name: str) -> np.ndarray:
    """A core field or a named value column, by name."""
    if name in CORE:
      return getattr(self, name)
    if name not in self.columns:
      raise KeyError(f"no trajectory column {name!r}; columns: {sorted(self.columns)}")
    return self.columns[name]

  @property
  def max_steps(self) -> int:
    """H: steps a row can hold."""
    return self.prefix_ends.shape[1] - 1

  def with_columns(self, **columns: np.ndarray) -> Trajectories:
    """The same rows with columns added or replaced."""
    return dataclasses.replace(self, columns={**self.columns, **columns})

  def take(self, rows) -> Trajectories:
    """The table of the given rows (indices or a boolean mask), in that order."""
    pick = {name: getattr(self, name)[rows] for name in CORE}
    return Trajectories(**pick, columns={k: v[rows] for k, v in self.columns.items()})

  def response(self, i: int) -> list[int]:
    """Response token ids of row i (EOS included when emitted)."""
    return [int(t) for t in self.tokens[i, self.prompt_len[i]:self.length[i]]]

  def prompt(self, i: int) -> list[int]:
    return [int(t) for t in self.tokens[i, :self.prompt_len[i]]]

  def arrays(self) -> dict[str, np.ndarray]:
    """Every field and column by name (the on-disk layout)."""
    out = {name: getattr(self, name) for name in CORE}
    for name, col in self.columns.items():
      if name in CORE:
        raise ValueError(f"column name {name!r} clashes with a core field")
      out[name] = col
    return out


# --- derived views -------------------------------------------------------------------------
def prefix_mask(t: Trajectories) -> np.ndarray:
  """[B, H+1] which prefixes exist (column 0, the question, always)."""
  return t.prefix_ends >= 0


def step_mask(t: Trajectories) -> np.ndarray:
  """[B, H] which steps exist."""
  return t.prefix_ends[:, 1:] >= 0


def num_steps(t: Trajectories) -> np.ndarray:
  """[B] steps of each response."""
  return step_mask(t).sum(1).astype(np.int32)


def last_prefix_mask(t: Trajectories) -> np.ndarray:
  """[B, H+1] only the terminal prefix of each row (where an ORM reads)."""
  mask = np.zeros(t.prefix_ends.shape, bool)
  mask[np.arange(len(t)), num_steps(t)] = True
  return mask


def token_step_ids(t: Trajectories) -> np.ndarray:
  """[B, W] the step (0-based) each response token belongs to; -1 on prompt and padding."""
  b, w = t.tokens.shape
  ids = np.full((b, w), -1, np.int32)
  cols = np.arange(w)
  for h in range(t.max_steps):
    start, stop = t.prefix_ends[:, h] + 1, t.prefix_ends[:, h + 1] + 1
    inside = (cols[None] >= start[:, None]) & (cols[None] < stop[:, None])
    ids[inside & (t.prefix_ends[:, h + 1] >= 0)[:, None]] = h
  return ids


def loss_mask(t: Trajectories, mask_unfinished: bool = False) -> np.ndarray:
  """[B, W] float32: 1 on the response tokens of every step.

  With `mask_unfinished`, rows that never emitted EOS get no loss (their rows stay).
  """
  b, w = t.tokens.shape
  keep = num_steps(t) > 0
  if mask_unfinished:
    keep &= t.finished
  end = t.prefix_ends.max(1) + 1
  cols = np.arange(w)[None]
  inside = (cols >= t.prompt_len[:, None]) & (cols < end[:, None])
  return (inside & keep[:, None]).astype(np.float32)


def prefix_ids(t: Trajectories) -> np.ndarray:
  """[B, H+1] int64 an id per prefix: a hash of its tokens (-1 where absent).

  Equal ids are the same text, whichever row wrote it, so siblings (distinct steps
  from one parent) are the steps whose column h - 1 ids agree.
  """
  out = np.full(t.prefix_ends.shape, -1, np.int64)
  for i, j in zip(*np.nonzero(t.prefix_ends >= 0)):
    end = int(t.prefix_ends[i, j]) + 1
    digest = hashlib.blake2b(np.asarray(t.tokens[i, :end], np.int32).tobytes(), digest_size=8)
    out[i, j] = int.from_bytes(digest.digest(), "little", signed=True)
  return out


# --- the constructor -----------------------------------------------------------------------
def from_responses(task: base.Task, prompts: Sequence[Sequence[int]],
                   responses: Sequence[Sequence[int]], problems: Sequence[base.Problem],
                   problem_index: Sequence[int], *, max_steps: int, width: int | None = None,
                   columns: Mapping[str, np.ndarray] | None = None) -> Trajectories:
  """Grades and segments sampled responses into a table (the one place steps are cut).

  Args:
    task: grades each response (`is_correct`) and says where its steps end.
    prompts, responses, problems: one entry per row.
    problem_index: per row, the problem's index in its split.
    max_steps: H; a response's steps past H - 1 merge into step H.
    width: W (default: the longest row); a longer row is an error.
    columns: value columns to attach.
  """
  b = len(responses)
  seqs = [list(p) + list(r) for p, r in zip(prompts, responses)]
  w = width if width is not None else max((len(s) for s in seqs), default=1)
  tokens = np.full((b, w), task.pad_id, np.int32)
  ends = np.full((b, max_steps + 1), -1, np.int32)
  outcome = np.zeros(b, np.float32)
  reason = np.zeros(b, np.int32)
  finished = np.zeros(b, bool)
  for i, (prompt, resp, problem, seq) in enumerate(zip(prompts, responses, problems, seqs)):
    if len(seq) > w:
      raise ValueError(f"row {i}: {len(seq)} tokens exceed the table width {w}")
    tokens[i, :len(seq)] = seq
    graded = task.is_correct(resp, problem)
    outcome[i] = graded.reward
    reason[i] = base.REASONS.index(graded.reason)
    finished[i] = task.eos_id in resp
    p = len(prompt)
    ends[i, 0] = p - 1
    for h, (_, stop) in enumerate(task.segment_steps(list(resp))):
      ends[i, min(h, max_steps - 1) + 1] = p + stop - 1
  return Trajectories(
      tokens=tokens, prompt_len=np.array([len(p) for p in prompts], np.int32),
      length=np.array([len(s) for s in seqs], np.int32), prefix_ends=ends, outcome=outcome,
      reason=reason, problem=np.asarray(problem_index, np.int32).reshape(b), finished=finished,
      columns=dict(columns or {}))


def concatenate(tables: Sequence[Trajectories]) -> Trajectories:
  """Rows of several tables, padded to the widest tokens and most steps."""
  if not tables:
    raise ValueError("no trajectory table to concatenate")
  width = max(t.tokens.shape[1] for t in tables)
  cols = max(t.prefix_ends.shape[1] for t in tables)
  names = set(tables[0].columns)
  for t in tables[1:]:
    if set(t.columns) != names:
      raise ValueError(f"tables with different columns: {sorted(names)} vs {sorted(t.columns)}")

  def padded(a: np.ndarray, axis_len: int, fill) -> np.ndarray:
    if a.ndim < 2 or a.shape[1] >= axis_len:
      return a
    return np.pad(a, [(0, 0), (0, axis_len - a.shape[1])] + [(0, 0)] * (a.ndim - 2),
                  constant_values=fill)

  def per_prefix(a: np.ndarray, t: Trajectories) -> bool:
    return a.ndim == 2 and a.shape[1] == t.prefix_ends.shape[1]

  core = {}
  for name in CORE:
    parts = [getattr(t, name) for t in tables]
    if name == "tokens":
      parts = [padded(a, width, 0) for a in parts]
    elif name == "prefix_ends":
      parts = [padded(a, cols, -1) for a in parts]
    core[name] = np.concatenate(parts)
  columns = {}
  for name in sorted(names):
    parts = []
    for t in tables:
      a = t.columns[name]
      fill = np.nan if np.issubdtype(a.dtype, np.floating) else 0
      parts.append(padded(a, cols, fill) if per_prefix(a, t) else a)
    columns[name] = np.concatenate(parts)
  return Trajectories(**core, columns=columns)


# --- on disk ---------------------------------------------------------------------------------
def shard_path(directory: str, index: int) -> str:
  return os.path.join(directory, f"shard_{index:05d}.npz")


def write_shard(directory: str, index: int, table: Trajectories) -> None:
  """Writes one shard atomically."""
  artifacts.save_npz(shard_path(directory, index), table.arrays())


def read_shard(path: str) -> Trajectories:
  arrays = artifacts.load_npz(path)
  missing = [k for k in CORE if k not in arrays]
  if missing:
    raise ValueError(f"{path}: not a trajectory shard of schema {SCHEMA_VERSION} "
                     f"(lacks {missing}); rerun the job that wrote it in a new workdir")
  return Trajectories(**{k: arrays.pop(k) for k in CORE}, columns=arrays)


def read_manifest(directory: str) -> dict | None:
  return artifacts.read_json(os.path.join(directory, MANIFEST))


def new_manifest(chash: str, **fields: Any) -> dict:
  """A manifest for a table being written: no shard done yet."""
  return {"schema": SCHEMA_VERSION, "config_hash": chash, "shards_done": [], "budget": {},
          "complete": False, **fields}


def write_manifest(directory: str, manifest: Mapping[str, Any]) -> None:
  artifacts.write_json(os.path.join(directory, MANIFEST), manifest)


def load(directory: str) -> Trajectories:
  """Every finished shard of the table in `directory`, concatenated in shard order."""
  manifest = read_manifest(directory)
  if manifest is None:
    raise FileNotFoundError(f"no trajectory table at {directory} (missing {MANIFEST})")
  schema = manifest.get("schema", 1)
  if schema != SCHEMA_VERSION:
    raise ValueError(f"{directory}: trajectory table of schema {schema}, this pavjax reads "
                     f"{SCHEMA_VERSION}; rerun the job that wrote it in a new workdir")
  shards = [read_shard(shard_path(directory, i)) for i in sorted(manifest["shards_done"])]
  if not shards:
    raise ValueError(f"trajectory table at {directory} has no finished shard")
  return concatenate(shards)


def save(directory: str, table: Trajectories, chash: str, **fields: Any) -> None:
  """Writes a whole table as one shard, complete (process 0 only)."""
  if not artifacts.is_lead_process():
    return
  write_shard(directory, 0, table)
  manifest = new_manifest(chash, num_shards=1, **fields)
  manifest.update(shards_done=[0], complete=True)
  write_manifest(directory, manifest)


def load_if_complete(directory: str, chash: str) -> Trajectories | None:
  """The table in `directory` if it is complete and was made with hash `chash`."""
  manifest = read_manifest(directory)
  if (manifest is None or not manifest.get("complete") or manifest.get("config_hash") != chash
      or manifest.get("schema", 1) != SCHEMA_VERSION):
    return None
  return load(directory)
