"""Task registry: `config.task.name` -> a Task built from `config.task`.

Each task module exposes `default_config() -> ConfigDict` (its knobs, every field
commented) and `make(task_cfg, workdir) -> Task`. Modules are imported lazily so a
job only pays for the task it uses.
"""

from __future__ import annotations

import importlib

import ml_collections

from pavjax.tasks.base import (Outcome, Problem, SFTArrays, Task, covering_width, sequence_arrays,
                               sft_arrays)

# name -> module path
TASKS = {
    "toy": "pavjax.tasks.toy",
    "planted": "pavjax.tasks.planted",
    "arith": "pavjax.tasks.arith",
    "jsonl_math": "pavjax.tasks.jsonl_math",
}


def _module(name: str):
  if name not in TASKS:
    raise ValueError(f"config.task.name={name!r} is not a known task; known: {sorted(TASKS)}")
  return importlib.import_module(TASKS[name])


def default_task_config(name: str) -> ml_collections.ConfigDict:
  """The task's own fields with defaults, `name` included."""
  cfg = _module(name).default_config()
  with cfg.unlocked():
    cfg.name = name
  return cfg


def make_task(task_cfg: ml_collections.ConfigDict, workdir: str | None = None) -> Task:
  """Builds the task named by `task_cfg.name`.

  Tokenizers and prepared data are cached in `task_cfg.cache_dir` when the task has
  that field and it is set (a pipeline shares one across its stages), else in `workdir`.
  """
  return _module(task_cfg.name).make(task_cfg, task_cfg.get("cache_dir") or workdir)


__all__ = ["Outcome", "Problem", "SFTArrays", "Task", "TASKS", "default_task_config",
           "make_task", "covering_width", "sequence_arrays", "sft_arrays"]
