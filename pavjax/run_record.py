"""What a job's end record needs from its earlier attempts: `<workdir>/run.json`.

A job killed and rerun resumes its weights from the latest checkpoint; its end
record (`summary.json`) must not depend on where the kills fell. Three things in
that record are not in a checkpoint, and live here instead:

* values computed once at the start and never again after a resume (the RL
  policy's evaluation before its first update; where the weights first came
  from), kept by `once`;
* the wall-clock seconds of every attempt, added up (`seconds`). An attempt that
  was killed counts until the newest file it left in the workdir (metrics are
  flushed at every log step, checkpoints at every save), so the time between its
  last write and the kill is the only part lost;
* nothing else: per-step metrics are idempotent in `metrics.MetricWriter`.

Where each attempt resumed from is kept too (`attempt_origins`), for the operator;
the summary names only where the run began.

The same attempt arithmetic times the pipeline's stages (`attempt_seconds`).
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Callable

from pavjax import artifacts

RUN_RECORD = "run.json"


def newest_mtime(directory: str, exclude: tuple[str, ...] = ()) -> float | None:
  """The newest modification time of any file under `directory` (None when empty)."""
  newest = None
  skip = {os.path.abspath(p) for p in exclude}
  for root, _, files in os.walk(directory):
    for name in files:
      path = os.path.join(root, name)
      if os.path.abspath(path) in skip:
        continue
      try:
        mtime = os.stat(path).st_mtime
      except FileNotFoundError:  # removed while we walked (a checkpoint being replaced)
        continue
      newest = mtime if newest is None else max(newest, mtime)
  return newest


def attempt_seconds(directory: str, started: float | None,
                    exclude: tuple[str, ...] = ()) -> float:
  """Seconds an attempt begun at `started` ran, judged by the newest file it left."""
  if started is None:
    return 0.0
  newest = newest_mtime(directory, exclude)
  return max(0.0, newest - started) if newest is not None else 0.0


class RunRecord:
  """Seconds over attempts and once-computed values of the job in `workdir`.

  Only process 0 writes; every process reads the same file, so values kept by
  `once` agree across hosts on a shared filesystem (and are recomputed, equally,
  where the file is not visible).
  """

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, RUN_RECORD)
    record = artifacts.read_json(self.path) or {}
    self._values: dict[str, Any] = dict(record.get("values", {}))
    self._origins: list[str] = list(record.get("origins", []))
    self._before = float(record.get("seconds", 0.0)) + attempt_seconds(
        workdir, record.get("started"), exclude=(self.path,))
    self._started = time.time()
    self.attempt = int(record.get("attempts", 0)) + 1
    self._save()

  def _save(self) -> None:
    artifacts.write_json(self.path, {"seconds": self._before, "started": self._started,
                                     "attempts": self.attempt, "values": self._values,
                                     "origins": self._origins})

  def note_origin(self, origin: str) -> None:
    """Records where this attempt's state came from (`attempt_origins`)."""
    self._origins.append(origin)
    self._save()

  def seconds(self) -> float:
    """Wall-clock seconds of this attempt and every earlier one."""
    return self._before + time.time() - self._started

  def get(self, key: str, default: Any = None) -> Any:
    """The value `once` stored under `key` in an earlier or this attempt, else `default`."""
    return self._values.get(key, default)

  def once(self, key: str, compute: Callable[[], Any]) -> Any:
    """`compute()` the first time `key` is asked for in this workdir; the stored value after.

    The value must be JSON (it is written at once, so a kill right after keeps it).
    """
    if key not in self._values:
      # Round-tripped through JSON now, so a first attempt and a resumed one hand
      # their callers the same value (lists, not tuples; floats, not numpy scalars).
      self._values[key] = json.loads(json.dumps(compute(), default=float))
      self._save()
    return self._values[key]


def attempt_origins(workdir: str) -> list[str]:
  """Where each attempt of the job in `workdir` started from, oldest first (the
  summary reports only the first: it must not depend on where kills fell)."""
  record = artifacts.read_json(os.path.join(workdir, RUN_RECORD)) or {}
  return list(record.get("origins", []))
