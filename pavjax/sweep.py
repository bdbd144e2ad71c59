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

Every collected accuracy (a key whose last part names an accuracy or a Pass@N) carries
its number of problems n and a 95% interval (`pavjax.stats`): from the run's stored
per-problem outcomes when it has them, else from the value and n (the evaluation's
graded-response counts, else its config's `sample.num_eval`; a training batch's
`rl.num_prompts`). With a `seed` axis, sweep.md also shows every seed's value with
their mean, min, max, sd and the t interval of the mean. The plot draws the mean over
the other axes with a band that spans every run's 95% interval at that x.
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

from pavjax import stats


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


def is_accuracy(key: str) -> bool:
  """Whether a collected key is an accuracy (a mean of per-problem scores in [0, 1])."""
  leaf = key.rsplit(".", 1)[-1].rsplit("/", 1)[-1]
  return "accuracy" in leaf or leaf.startswith("pass_at")


def sample_size(key: str, summary: dict, config: dict) -> int | None:
  """How many problems an accuracy of a run's summary was measured on (None: unknown).

  `eval.*`: the stored per-problem outcomes, else the count of graded responses
  (`reason/*`, one greedy response per problem), else the config's
  `sample.num_eval`. `final_train.*`: the problems of one RL batch (`rl.num_prompts`).
  """
  head = key.split(".", 1)[0]
  if head == "eval":
    ev = summary.get("eval") or {}
    if ev.get("per_problem"):
      return len(ev["per_problem"])
    reasons = [v for k, v in ev.items() if k.startswith("reason/")]
    if reasons:
      return int(round(sum(reasons)))
    return _get(config, "sample.num_eval")
  if head == "final_train":
    return _get(config, "rl.num_prompts")
  return None


def interval(key: str, value, summary: dict, config: dict) -> stats.Interval | None:
  """The 95% interval of an accuracy (None when n is unknown or the key is no accuracy)."""
  if not is_accuracy(key) or not isinstance(value, (int, float)):
    return None
  ev = summary.get("eval") or {}
  if key == "eval.accuracy" and ev.get("per_problem"):
    return stats.mean_interval(ev["per_problem"])
  n = sample_size(key, summary, config)
  return stats.proportion(float(value), int(n)) if n else None


def _read(path: str) -> dict:
  if not os.path.exists(path):
    return {}
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def _cell(v) -> str:
  return f"{v:.4g}" if isinstance(v, float) else str(v)


def seed_tables(sweep, rows: Sequence[dict[str, Any]]) -> list[str]:
  """Per accuracy key: every seed's value with mean, min, max, sd and the t interval of the
  mean, one row per point of the other axes (none without a `seed` axis of 2+ values)."""
  if len(sweep.AXES.get("seed", [])) < 2:
    return []
  others = [a for a in sweep.AXES if a != "seed"]
  lines = []
  for key in [k for k in getattr(sweep, "COLLECT", []) if is_accuracy(k)]:
    groups: dict[tuple, dict] = {}
    for r in rows:
      if isinstance(r.get(key), (int, float)):
        groups.setdefault(tuple(r[a] for a in others), {})[r["seed"]] = float(r[key])
    if not groups:
      continue
    lines += ["", f"### {key} over seeds", "",
              "| " + " | ".join(others + ["seeds", "mean", "min", "max", "sd",
                                           "95% interval of the mean", "per seed"]) + " |",
              "|" + "---|" * (len(others) + 7)]
    for point, by_seed in groups.items():
      sp = stats.seed_spread(by_seed, within=(0.0, 1.0))
      sd = f"{sp.std:.4f}" if len(by_seed) > 1 else "n/a"
      iv = (f"[{sp.interval.low:.4f}, {sp.interval.high:.4f}]" if len(by_seed) > 1
            else "n/a (one seed)")
      per = ", ".join(f"{s}: {v:.4f}" for s, v in by_seed.items())
      lines.append("| " + " | ".join([_cell(v) for v in point] + [
          str(len(by_seed)), f"{sp.mean:.4f}", f"{sp.min:.4f}", f"{sp.max:.4f}", sd, iv, per])
                   + " |")
  return (["", "## Seeds"] + lines) if lines else []


def collect(sweep, root: str) -> tuple[list[dict[str, Any]], str]:
  """Each run's axis values and COLLECT keys (None for runs without a summary), as markdown.

  An accuracy key also gets `<key>/low`, `<key>/high` (its 95% interval) and `<key>/n`.
  """
  keys = list(getattr(sweep, "COLLECT", []))
  rows = []
  for point in expand(sweep):
    run = os.path.join(root, run_name(point))
    summary, config = _read(os.path.join(run, "summary.json")), _read(os.path.join(run, "config.json"))
    row = {**point}
    for k in keys:
      row[k] = _get(summary, k)
      if is_accuracy(k):
        iv = interval(k, row[k], summary, config)
        row[f"{k}/low"] = iv.low if iv else None
        row[f"{k}/high"] = iv.high if iv else None
        row[f"{k}/n"] = iv.n if iv else None
    rows.append(row)
  header = list(sweep.AXES)
  for k in keys:
    header += [k, "95% interval", "n"] if is_accuracy(k) else [k]
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for r in rows:
    cells = [_cell(r[a]) for a in sweep.AXES]
    for k in keys:
      cells.append(_cell(r[k]))
      if is_accuracy(k):
        known = r[f"{k}/n"] is not None
        cells += [f"[{r[f'{k}/low']:.4f}, {r[f'{k}/high']:.4f}]" if known else "n/a",
                  str(r[f"{k}/n"]) if known else "?"]
    lines.append("| " + " | ".join(cells) + " |")
  if any(is_accuracy(k) for k in keys):
    lines += ["", "95% intervals over the n problems of each run (`pavjax.stats`: the score "
              "interval of the mean of its per-problem outcomes when the run stored them, "
              "else Wilson's from the value and n; n/a: n unknown)."]
  lines += seed_tables(sweep, rows)
  return rows, "\n".join(lines)


def plot(sweep, rows: Sequence[dict[str, Any]], path: str) -> str | None:
  """COLLECT keys against axis X: the mean over the other axes, with a band spanning every
  run's 95% interval at that x (the runs' min-max where no interval is known)."""
  from pavjax import metrics  # pylint: disable=g-import-not-at-top
  x = getattr(sweep, "X", None)
  if x is None:
    return None
  series, bands = {}, {}
  for key in getattr(sweep, "COLLECT", []):
    by_x: dict[Any, list[tuple[float, float, float]]] = {}
    for r in rows:
      if isinstance(r.get(key), (int, float)):
        v = float(r[key])
        lo, hi = r.get(f"{key}/low"), r.get(f"{key}/high")
        by_x.setdefault(r[x], []).append((v, v if lo is None else lo, v if hi is None else hi))
    pts = sorted(by_x.items())
    series[key] = [(float(v), float(np.mean([y for y, _, _ in ys]))) for v, ys in pts]
    bands[key] = [(float(v), min(lo for _, lo, _ in ys), max(hi for _, _, hi in ys))
                  for v, ys in pts]
  return metrics.plot_series(series, path, xlabel=x, ylabel="value (95% band)", bands=bands,
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
