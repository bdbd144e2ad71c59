"""Rollout datasets on disk: npz shards plus a manifest, resumable and pickle-free.

One row per seed response. Column h of the per-prefix arrays is the prefix that
ends after step h (h = 0 is the question alone):

  tokens      [N, W] int32  prompt + response, right-padded with 0
  prompt_len  [N]    int32
  length      [N]    int32  prompt + response tokens
  num_steps   [N]    int32
  step_ends   [N, H] int32  sequence index of each step's last token (-1 = none)
  outcome     [N]    float32 Rex of the seed response
  reason      [N]    int32  index into pavjax.tasks.base.REASONS
  mc_success  [N, H+1] int32  successful completions from each prefix
  mc_count    [N, H+1] int32  completions run (0 for the terminal prefix)
  q_hat       [N, H+1] float32 Q estimate of each prefix: success / count, the
                       outcome itself for the terminal prefix, NaN past the end
  problem     [N]    int32  index of the problem in its split
  seed        [N]    int32  which of the problem's n_cov seeds

The manifest records the config hash, the shards written and the budget spent;
a shard file appears atomically, so a killed job loses at most the shard it was
writing and never leaves a half-written one that looks complete.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Mapping

import numpy as np

from pavjax import metrics

MANIFEST = "manifest.json"
FIELDS = ("tokens", "prompt_len", "length", "num_steps", "step_ends", "outcome", "reason",
          "mc_success", "mc_count", "q_hat", "problem", "seed")


def config_hash(obj: Mapping[str, Any]) -> str:
  return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def shard_path(directory: str, index: int) -> str:
  return os.path.join(directory, f"shard_{index:05d}.npz")


def write_shard(directory: str, index: int, arrays: Mapping[str, np.ndarray]) -> None:
  """Writes one shard atomically (temp file, then rename)."""
  missing = set(FIELDS) - set(arrays)
  if missing:
    raise ValueError(f"rollout shard lacks fields {sorted(missing)}")
  os.makedirs(directory, exist_ok=True)
  final = shard_path(directory, index)
  tmp = final + ".tmp.npz"
  np.savez(tmp, **{k: np.asarray(arrays[k]) for k in FIELDS})
  os.replace(tmp, final)


def read_manifest(directory: str) -> dict | None:
  return metrics.read_json(os.path.join(directory, MANIFEST))


def write_manifest(directory: str, manifest: Mapping[str, Any]) -> None:
  os.makedirs(directory, exist_ok=True)
  path = os.path.join(directory, MANIFEST)
  with open(path + ".tmp", "w", encoding="utf-8") as f:
    json.dump(manifest, f, indent=2, sort_keys=True)
    f.write("\n")
  os.replace(path + ".tmp", path)


def _pad_to(a: np.ndarray, width: int, axis: int, value) -> np.ndarray:
  if a.shape[axis] >= width:
    return a
  pad = [(0, 0)] * a.ndim
  pad[axis] = (0, width - a.shape[axis])
  return np.pad(a, pad, constant_values=value)


def load(directory: str) -> dict[str, np.ndarray]:
  """Concatenates every shard listed as done in the manifest (pickle-free)."""
  manifest = read_manifest(directory)
  if manifest is None:
    raise FileNotFoundError(f"no rollout dataset at {directory} (missing {MANIFEST})")
  parts = []
  for index in sorted(manifest["shards_done"]):
    with np.load(shard_path(directory, index), allow_pickle=False) as z:
      parts.append({k: z[k] for k in FIELDS})
  if not parts:
    raise ValueError(f"rollout dataset at {directory} has no finished shard")
  width = max(p["tokens"].shape[1] for p in parts)
  steps = max(p["step_ends"].shape[1] for p in parts)
  fill = {"tokens": 0, "step_ends": -1, "mc_success": 0, "mc_count": 0, "q_hat": np.nan}
  out = {}
  for key in FIELDS:
    arrays = [p[key] for p in parts]
    if key == "tokens":
      arrays = [_pad_to(a, width, 1, 0) for a in arrays]
    elif key == "step_ends":
      arrays = [_pad_to(a, steps, 1, -1) for a in arrays]
    elif key in ("mc_success", "mc_count", "q_hat"):
      arrays = [_pad_to(a, steps + 1, 1, fill[key]) for a in arrays]
    out[key] = np.concatenate(arrays, axis=0)
  return out


def prefix_positions(data: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
  """Sequence index of the token each prefix ends on, and which prefixes exist.

  Column 0 (the question) ends on the last prompt token; column h on step h's
  last token. Returns (positions [N, H+1] with -1 where absent, mask [N, H+1]).
  """
  n, h = data["step_ends"].shape
  pos = np.full((n, h + 1), -1, np.int32)
  pos[:, 0] = data["prompt_len"] - 1
  pos[:, 1:] = data["step_ends"]
  mask = pos >= 0
  return pos, mask
