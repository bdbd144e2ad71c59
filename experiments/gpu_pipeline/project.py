"""A short run of every pipeline stage, and the full run's time projected from it.

  python experiments/gpu_pipeline/project.py --overrides [--variant=ARG]
  python experiments/gpu_pipeline/project.py --workdir=DIR [--variant=ARG] [--json=FILE]

`run.sh` runs `configs/pipeline.py:<variant>` (default: the one-GPU variant) with the
`--overrides` this prints: every stage keeps its model, batches, lengths and meshes
and does a few units of its work (training steps, rollout shards, search problems).
A stage that fits in memory here fits in the full run, whose steps have the same shapes.

`--workdir` then reads the short run and prints, per stage, its seconds and the
projected seconds of the full run. Where a stage logs a steady rate, the projection
is the short run's seconds plus the missing units at that rate (compilation and
one-time work counted once):

  * training steps (sft, rft's training, verifiers, RL): the median of
    `perf/steps_per_sec` over the stage's metric rows after the first (which holds
    the compilation);
  * rollout shards: the median gap between consecutive shard files written.

Any other work (rft's sampling, search's problems) is scaled with the whole stage's
seconds, compilation included: an upper bound, marked in the table. RL's periodic
evaluations (every `train.eval_every` iterations) are not in its step rate: each
evaluation that the full run makes beyond the short run's is added at the short
run's measured evaluation time when the run recorded one, and otherwise left out
(marked).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys

import ml_collections
import numpy as np

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, ROOT)

from pavjax import config_lib  # pylint: disable=wrong-import-position
from pavjax.jobs import pipeline  # pylint: disable=wrong-import-position

VARIANT = "size=gpu"
TRAIN_STAGES = ("sft", "rft", "verifier_q", "verifier_orm", "verifier_prover", "rl_pav",
                "rl_outcome")
ROLLOUT_STAGES = ("rollouts_train", "rollouts_validation", "rollouts_prover_train",
                  "rollouts_prover_validation")
# The short run, per stage: (field, value). A few metric rows per training stage, so
# that a rate exists after the first (compiling) one; 2-3 rollout shards of 32 problems.
SHORT = {
    **{name: (("train.num_steps", 40), ("train.log_every", 10))
       for name in ("sft", "verifier_q", "verifier_orm", "verifier_prover")},
    "rft": (("rft.num_problems", 64), ("train.num_steps", 40), ("train.log_every", 10)),
    "rollouts_train": (("rollouts.num_problems", 96), ("rollouts.problems_per_shard", 32)),
    "rollouts_validation": (("rollouts.num_problems", 64),
                            ("rollouts.problems_per_shard", 32)),
    "rollouts_prover_train": (("rollouts.num_problems", 96),
                              ("rollouts.problems_per_shard", 32)),
    "rollouts_prover_validation": (("rollouts.num_problems", 64),
                                   ("rollouts.problems_per_shard", 32)),
    "search": (("search.num_problems", 32),),
    **{name: (("train.num_steps", 8), ("train.log_every", 2)) for name in ("rl_pav", "rl_outcome")},
}


def full_config(variant: str):
  return config_lib.load_config_file(os.path.join(ROOT, "configs", "pipeline.py") + ":" + variant)


def overrides(variant: str) -> list[str]:
  """`--config.stages.<stage>.<field>=<value>` for the stages the variant runs."""
  stages = full_config(variant).stages
  return [f"--config.stages.{name}.{field}={value}"
          for name, fields in SHORT.items() if name in stages for field, value in fields]


def _rows(path: str) -> list[dict]:
  if not os.path.exists(path):
    return []
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


def steady_step_rate(stage_dir: str) -> float | None:
  """Median training steps/s after the first metric row (None with fewer than two rows)."""
  rates = [r["perf/steps_per_sec"] for r in _rows(os.path.join(stage_dir, "metrics.jsonl"))
           if "perf/steps_per_sec" in r]
  return float(np.median(rates[1:])) if len(rates) >= 2 else None


def steady_shard_seconds(stage_dir: str) -> float | None:
  """Median seconds between consecutive rollout shard files (None with fewer than two)."""
  times = sorted(os.path.getmtime(p) for p in glob.glob(os.path.join(stage_dir, "**", "shard*"),
                                                        recursive=True))
  gaps = np.diff(times)
  return float(np.median(gaps)) if len(gaps) else None


def project_stage(name: str, seconds: float, full, short, stage_dir: str) -> dict:
  """The full run's seconds for stage `name` from its short run (see the module doc)."""
  row = {"stage": name, "seconds": seconds, "how": ""}
  if name in ROLLOUT_STAGES:
    per = short.rollouts.problems_per_shard
    short_shards = -(-short.rollouts.num_problems // per)
    full_shards = -(-full.rollouts.num_problems // full.rollouts.problems_per_shard)
    gap = steady_shard_seconds(stage_dir)
    row["short"], row["full"] = f"{short_shards} shards", f"{full_shards} shards"
    if gap is not None and full.rollouts.problems_per_shard == per:
      row["rate"] = f"{gap:.1f} s/shard"
      row["projected"] = seconds + (full_shards - short_shards) * gap
    else:
      row["projected"] = seconds * full_shards / short_shards
      row["how"] = "scaled (upper bound)"
    return row
  projected, how = seconds, []
  rate = steady_step_rate(stage_dir) if name in TRAIN_STAGES else None
  if name in TRAIN_STAGES:
    s, f = short.train.num_steps, full.train.num_steps
    row["short"], row["full"] = f"{s} steps", f"{f} steps"
    if rate is None:
      projected, how = seconds * f / s, ["scaled (upper bound)"]
    else:
      row["rate"] = f"{rate:.2f} steps/s"
      projected = seconds + (f - s) / rate
      evals = _eval_seconds(stage_dir)
      every = full.train.get("eval_every", 0)
      extra = (f // every - s // every) if every else 0
      if extra > 0:
        if evals is None:
          how.append(f"+{extra} evaluations not counted")
        else:
          projected += extra * evals
          how.append(f"+{extra} evaluations at {evals:.0f} s")
  if name == "rft":  # its sampling scales with the problems (compile included)
    ratio = (full.rft.num_problems * full.rft.num_samples) / (
        short.rft.num_problems * short.rft.num_samples)
    train_s = short.train.num_steps / rate if rate else 0.0
    projected += (seconds - train_s) * (ratio - 1)
    row["short"] += f", {short.rft.num_problems} problems"
    row["full"] += f", {full.rft.num_problems} problems"
    how.append("sampling scaled (upper bound)")
  if name == "search":
    s, f = short.search.num_problems, full.search.num_problems
    row["short"], row["full"] = f"{s} problems", f"{f} problems"
    projected = seconds * f / s
    how.append("scaled (upper bound)")
  row["projected"], row["how"] = projected, "; ".join(how)
  return row


def _eval_seconds(stage_dir: str) -> float | None:
  """Seconds of one evaluation, where the stage's eval rows record it (RL's
  `perf/eval_seconds`)."""
  secs = [r["perf/eval_seconds"] for r in _rows(os.path.join(stage_dir, "eval.jsonl"))
          if "perf/eval_seconds" in r]
  return float(np.median(secs)) if secs else None


def project(workdir: str, variant: str) -> list[dict]:
  """A row per stage the short run ran, in the pipeline's order."""
  config = full_config(variant)
  with open(os.path.join(workdir, "pipeline.json"), encoding="utf-8") as f:
    run = json.load(f)
  full = config.stages
  order = [st.name for st in pipeline.stages(config)]
  rows = []
  for name in sorted(run["seconds"], key=lambda n: order.index(n) if n in order else len(order)):
    seconds = run["seconds"][name]
    with open(os.path.join(workdir, name, "config.json"), encoding="utf-8") as f:
      short = ml_collections.ConfigDict(json.load(f))
    rows.append(project_stage(name, float(seconds), full[name], short,
                              os.path.join(workdir, name)))
  return rows


def table(rows: list[dict]) -> str:
  out = ["| stage | short run | seconds | steady rate | full run | projected | how |",
         "|---|---|---|---|---|---|---|"]
  for r in rows:
    out.append(f"| {r['stage']} | {r.get('short', '')} | {r['seconds']:.0f} | "
               f"{r.get('rate', '-')} | {r.get('full', '')} | {r['projected'] / 60:.1f} min | "
               f"{r['how']} |")
  total = sum(r["projected"] for r in rows)
  short_total = sum(r["seconds"] for r in rows)
  out.append(f"| all | | {short_total:.0f} | | | {total / 3600:.2f} h | |")
  return "\n".join(out)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--variant", default=VARIANT, help="configs/pipeline.py's argument")
  parser.add_argument("--overrides", action="store_true", help="print the short run's flags")
  parser.add_argument("--workdir", help="a finished short run: print the projection")
  parser.add_argument("--json", help="also write the rows here")
  args = parser.parse_args(argv)
  if args.overrides:
    print(" ".join(overrides(args.variant)))
    return 0
  if not args.workdir:
    parser.error("give --overrides or --workdir")
  rows = project(args.workdir, args.variant)
  if args.json:
    with open(args.json, "w", encoding="utf-8") as f:
      json.dump(rows, f, indent=1)
  print(table(rows))
  return 0


if __name__ == "__main__":
  sys.exit(main())
