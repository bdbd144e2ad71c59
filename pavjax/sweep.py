"""Sweeps: products of config overrides, run in sequence (or printed), collected into a table.

A sweep file (e.g. experiments/didactic/sweep.py) defines:

  CONFIG = "configs/rl.py:task=planted,size=test,reward=pav,prover=procedural"
  FIXED = {"init_from": "runs/didactic/sft/checkpoints"}   # overrides of every run
  AXES = {"rl.prover.gamma": [1, 5, 10], "seed": [0, 1]}  # their product is the sweep
  COLLECT = ["eval.accuracy"]   # dotted keys of each run's summary.json
  X = "rl.prover.gamma"         # optional: plot COLLECT against this axis

Usage:
  python -m pavjax.sweep experiments/didactic/sweep.py --root=runs/gamma_sweep        # run all
  python -m pavjax.sweep experiments/didactic/sweep.py --root=... --print             # commands only
  python -m pavjax.sweep experiments/didactic/sweep.py --root=... --collect            # table + plot

Each run gets its own workdir `<root>/<axis>=<value>,...`; the jobs resume or skip
finished work, so rerunning a sweep after an interruption continues it. A cluster
launcher can take the `--print` lines as they are.
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import json
import os
import shlex
import subprocess
import sys
from typing import Any, Sequence

import numpy as np


def load(path: str):
  spec = importlib.util.spec_from_file_location("pavjax_sweep_file", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  for name in ("CONFIG", "AXES"):
    if not hasattr(module, name):
      raise ValueError(f"{path}: a sweep file must define {name}")
  return module


def expand(sweep) -> list[dict[str, Any]]:
  """One dict of axis values per run, in product order."""
  keys = list(sweep.AXES)
  return [dict(zip(keys, values)) for values in itertools.product(*sweep.AXES.values())]


def run_name(point: dict[str, Any]) -> str:
  return ",".join(f"{k}={v}" for k, v in point.items())


def command(sweep, point: dict[str, Any], root: str) -> list[str]:
  """The `python -m pavjax.main` command line of one run."""
  args = [sys.executable, "-m", "pavjax.main", f"--config={sweep.CONFIG}",
          f"--workdir={os.path.join(root, run_name(point))}"]
  for key, value in {**getattr(sweep, "FIXED", {}), **point}.items():
    args.append(f"--config.{key}={value}")
  return args


def _get(summary: dict, dotted: str):
  node: Any = summary
  for part in dotted.split("."):
    if not isinstance(node, dict) or part not in node:
      return None
    node = node[part]
  return node


def collect(sweep, root: str) -> tuple[list[dict[str, Any]], str]:
  """Each run's axis values and COLLECT keys (None for runs without a summary), as markdown."""
  keys = list(getattr(sweep, "COLLECT", []))
  rows = []
  for point in expand(sweep):
    path = os.path.join(root, run_name(point), "summary.json")
    summary = {}
    if os.path.exists(path):
      with open(path, encoding="utf-8") as f:
        summary = json.load(f)
    rows.append({**point, **{k: _get(summary, k) for k in keys}})
  cols = list(sweep.AXES) + keys
  lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
  for r in rows:
    cells = [f"{r[c]:.4g}" if isinstance(r[c], float) else str(r[c]) for c in cols]
    lines.append("| " + " | ".join(cells) + " |")
  return rows, "\n".join(lines)


def plot(sweep, rows: Sequence[dict[str, Any]], path: str) -> str | None:
  """COLLECT keys against axis X: mean over the other axes, with a min-max band."""
  from pavjax import metrics  # pylint: disable=g-import-not-at-top
  x = getattr(sweep, "X", None)
  if x is None:
    return None
  series, bands = {}, {}
  for key in getattr(sweep, "COLLECT", []):
    by_x: dict[Any, list[float]] = {}
    for r in rows:
      if isinstance(r.get(key), (int, float)):
        by_x.setdefault(r[x], []).append(float(r[key]))
    pts = sorted(by_x.items())
    series[key] = [(float(v), float(np.mean(ys))) for v, ys in pts]
    bands[key] = [(float(v), min(ys), max(ys)) for v, ys in pts]
  return metrics.plot_series(series, path, xlabel=x, ylabel="value", bands=bands,
                             title=os.path.basename(os.path.dirname(path)))


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("sweep_file")
  parser.add_argument("--root", required=True, help="parent directory of the runs' workdirs")
  parser.add_argument("--print", action="store_true", help="print the commands, run nothing")
  parser.add_argument("--collect", action="store_true", help="only collect finished runs")
  args = parser.parse_args(argv)
  sweep = load(args.sweep_file)
  if not args.collect:
    for point in expand(sweep):
      cmd = command(sweep, point, args.root)
      print(shlex.join(cmd), flush=True)
      if not args.print:
        subprocess.run(cmd, check=True)
  if args.print:
    return 0
  rows, table = collect(sweep, args.root)
  os.makedirs(args.root, exist_ok=True)
  with open(os.path.join(args.root, "sweep.md"), "w", encoding="utf-8") as f:
    f.write(table + "\n")
  with open(os.path.join(args.root, "sweep.json"), "w", encoding="utf-8") as f:
    json.dump(rows, f, indent=2)
  plot(sweep, rows, os.path.join(args.root, "sweep.png"))
  print(table)
  return 0


if __name__ == "__main__":
  sys.exit(main())
