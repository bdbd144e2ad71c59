"""Metric writing (TensorBoard + JSONL, process 0 only), progress bars, plots, NaN guard."""

from __future__ import annotations

import json
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

  Only process 0 writes; on the others every method is a no-op.
  """

  def __init__(self, workdir: str, name: str = "metrics"):
    self.enabled = is_lead_process()
    self.path = os.path.join(workdir, f"{name}.jsonl")
    self._tb = None
    self._jsonl = None
    if self.enabled:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      os.makedirs(workdir, exist_ok=True)
      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard", name))
      self._jsonl = open(self.path, "a", encoding="utf-8")

  def write(self, step: int, scalars: Mapping[str, Any]) -> None:
    if not self.enabled:
      return
    clean = {k: float(v) for k, v in scalars.items()}
    for key, value in clean.items():
      self._tb.add_scalar(key, value, step)
    self._jsonl.write(json.dumps({"step": int(step), **clean}) + "\n")
    self._jsonl.flush()

  def close(self) -> None:
    if self.enabled:
      self._tb.close()
      self._jsonl.close()


def read_jsonl(path: str) -> list[dict]:
  if not os.path.exists(path):
    return []
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


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
