"""Metric writing (TensorBoard + JSONL, process 0 only), progress bars, plots, NaN guard."""

from __future__ import annotations

import json
import logging
import math
import os
from typing import Any, Iterable, Mapping, Sequence

import jax
import numpy as np
import tqdm


def is_lead_process() -> bool:
  return jax.process_index() == 0


class MetricWriter:
  """Scalars to TensorBoard event files and to `<workdir>/<name>.jsonl`.

  A value may also be a list (of numbers or strings, e.g. per-problem outcomes): it
  goes to the JSONL record only, never to TensorBoard.

  Only process 0 writes; on the others every method is a no-op.

  Writing is idempotent per step, so a resumed job never leaves two records of a
  step: steps only grow within a file, and writing a step at or below the last
  one recorded (a resumed run redoing steps it logged after its last checkpoint)
  first drops every record from that step on, then appends. The file is rewritten
  whole (`artifacts` style: temp file, then `os.replace`) only then, once per
  resume. On open, a torn last line left by a killed writer is dropped
  (`repair_jsonl`). TensorBoard gets the same treatment through tensorboardX's
  `purge_step`: its writer starts at the first write, purging events from a redone
  step on (`tensorboard=False`: the JSONL file alone).
  """

  def __init__(self, workdir: str, name: str = "metrics", tensorboard: bool = True):
    self.enabled = is_lead_process()
    self._tensorboard = tensorboard
    self.path = os.path.join(workdir, f"{name}.jsonl")
    self._tb_dir = os.path.join(workdir, "tensorboard", name)
    self._tb = None
    self._jsonl = None
    self._last_step: int | None = None
    if self.enabled:
      os.makedirs(workdir, exist_ok=True)
      rows = repair_jsonl(self.path)
      steps = [int(r["step"]) for r in rows if "step" in r]
      self._last_step = max(steps) if steps else None
      self._jsonl = open(self.path, "a", encoding="utf-8")

  def _drop_from(self, step: int) -> None:
    """Rewrites the file without its records of `step` and later."""
    self._jsonl.close()
    keep = [r for r in read_jsonl(self.path) if int(r.get("step", -1)) < step]
    _rewrite_jsonl(self.path, keep)
    logging.info("%s: replacing the records from step %d on (a redone step)", self.path, step)
    self._jsonl = open(self.path, "a", encoding="utf-8")

  def write(self, step: int, scalars: Mapping[str, Any]) -> None:
    if not self.enabled:
      return
    step = int(step)
    redone = self._last_step is not None and step <= self._last_step
    if self._tb is None and self._tensorboard:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      self._tb = SummaryWriter(self._tb_dir, purge_step=step if redone else None)
    if redone:
      self._drop_from(step)
    clean = {k: _json_value(v) for k, v in scalars.items()}
    for key, value in clean.items():
      if self._tb is not None and not isinstance(value, list):
        self._tb.add_scalar(key, value, step)
    self._jsonl.write(json.dumps({"step": step, **clean}) + "\n")
    self._jsonl.flush()
    self._last_step = step

  def record(self, step: int) -> dict[str, float]:
    """The scalars written for `step` ({} when none, and on processes other than 0)."""
    if not self.enabled or not os.path.exists(self.path):
      return {}
    for row in read_jsonl(self.path):
      if int(row.get("step", -1)) == int(step):
        return {k: v for k, v in row.items() if k != "step"}
    return {}

  def close(self) -> None:
    if self.enabled:
      if self._tb is not None:
        self._tb.close()
      self._jsonl.close()


def _json_value(value: Any) -> float | list:
  """A record's value as JSON: a float, or a list of floats and strings."""
  if isinstance(value, (list, tuple, np.ndarray)):
    return [v if isinstance(v, str) else float(v) for v in value]
  return float(value)


def _parse_jsonl(path: str) -> tuple[list[dict], bool]:
  """The records of `path` and whether the file is whole.

  A file is whole when every line parses and it ends with a newline. A last line
  that does not parse is torn (its writer was killed mid-line): it is dropped with
  a warning. A bad line before the last one is corruption, not a torn write: a
  ValueError naming `path:line`.
  """
  if not os.path.exists(path):
    return [], True
  with open(path, encoding="utf-8") as f:
    text = f.read()
  lines = text.split("\n")
  numbered = [(i + 1, line) for i, line in enumerate(lines) if line.strip()]
  rows, whole = [], not text or text.endswith("\n")
  for k, (lineno, line) in enumerate(numbered):
    try:
      rows.append(json.loads(line))
    except json.JSONDecodeError as e:
      if k < len(numbered) - 1:
        raise ValueError(f"{path}:{lineno}: not a JSON line ({e}); only a torn last line "
                         "is dropped") from None
      logging.warning("%s:%d: dropping a torn last line (%d characters): %s", path, lineno,
                      len(line), e)
      whole = False
  return rows, whole


def read_jsonl(path: str) -> list[dict]:
  """The records of a JSONL file, one per line ([] when it does not exist).

  A torn last line (its writer was killed mid-line) is dropped with a logged
  warning; a bad line anywhere else raises a ValueError naming `path:line`.
  """
  return _parse_jsonl(path)[0]


def _rewrite_jsonl(path: str, rows: Sequence[Mapping[str, Any]]) -> None:
  tmp = f"{path}.tmp.{os.getpid()}"
  with open(tmp, "w", encoding="utf-8") as f:
    f.writelines(json.dumps(r) + "\n" for r in rows)
  os.replace(tmp, path)


def repair_jsonl(path: str) -> list[dict]:
  """`read_jsonl`, and a file that was not whole (a torn last line, or a last line
  without its newline) is rewritten with only its good records (process 0 only), so
  that lines appended next start on a line of their own."""
  rows, whole = _parse_jsonl(path)
  if not whole and is_lead_process():
    _rewrite_jsonl(path, rows)
  return rows


def read_json(path: str) -> Any | None:
  """The JSON value in `path`, or None when the file does not exist."""
  if not os.path.exists(path):
    return None
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def progress(total: int, initial: int = 0, desc: str = "") -> tqdm.tqdm:
  """A progress bar on process 0 (disabled elsewhere)."""
  return tqdm.tqdm(total=total, initial=initial, desc=desc, disable=not is_lead_process(),
                   dynamic_ncols=True, mininterval=1.0)


def reduce_metrics(history: Sequence[Mapping[str, Any]]) -> tuple[dict[str, float], list[int]]:
  """Fetches buffered per-step metrics in one device_get.

  Returns the means over finite steps and the offsets of bad steps (a step is bad
  when any of its metrics is NaN or infinite).
  """
  host = jax.device_get(list(history))
  bad = [i for i, m in enumerate(host)
         if not all(np.all(np.isfinite(np.asarray(v))) for v in m.values())]
  good = [m for i, m in enumerate(host) if i not in bad]
  keys = host[0].keys() if host else ()
  means = {k: float(np.mean([np.asarray(m[k], np.float64) for m in good])) if good else math.nan
           for k in keys}
  return means, bad


class NonFiniteError(FloatingPointError):
  """Raised by the guard before a checkpoint with non-finite values could be written."""


def plot_curves(rows: Iterable[Mapping[str, Any]], keys: Sequence[str], path: str,
                title: str = "", x_key: str = "step") -> str | None:
  """Plots `keys` against `x_key` from metric rows into a PNG; returns its path."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  rows = list(rows)
  present = [k for k in keys if any(k in r for r in rows)]
  if not present or not is_lead_process():
    return None
  fig, axes = plt.subplots(1, len(present), figsize=(4.5 * len(present), 3.4), squeeze=False)
  for ax, key in zip(axes[0], present):
    pts = [(r[x_key], r[key]) for r in rows if key in r and math.isfinite(r[key])]
    if pts:
      xs, ys = zip(*pts)
      ax.plot(xs, ys, marker="." if len(xs) < 30 else None)
    ax.set_xlabel(x_key)
    ax.set_title(key)
    ax.grid(alpha=0.3)
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def plot_series(series: Mapping[str, Sequence[tuple[float, float]]], path: str, *,
                xlabel: str, ylabel: str, title: str = "", log_base: int | None = None,
                bands: Mapping[str, Sequence[tuple[float, float, float]]] | None = None
                ) -> str | None:
  """Several named (x, y) curves on one axis (e.g. accuracy vs N per method).

  `bands` optionally gives (x, low, high) per name, drawn as a shaded spread.
  """
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  if not is_lead_process() or not any(series.values()):
    return None
  fig, ax = plt.subplots(figsize=(6.4, 4.2))
  for name, pts in series.items():
    pts = sorted((x, y) for x, y in pts if math.isfinite(x) and math.isfinite(y))
    if not pts:
      continue
    xs, ys = zip(*pts)
    line, = ax.plot(xs, ys, marker="o", markersize=3, label=name)
    if bands and bands.get(name):
      bx, lo, hi = zip(*sorted(bands[name]))
      ax.fill_between(bx, lo, hi, color=line.get_color(), alpha=0.2)
  if log_base:
    ax.set_xscale("log", base=log_base)
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  if title:
    ax.set_title(title)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path
