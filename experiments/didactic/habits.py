"""What trained planted policies write: distinct responses and the most common ones.

  python experiments/didactic/habits.py runs/didactic/pav_seed0 runs/didactic/outcome_seed0 \
    runs/didactic/gamma1_seed0
Samples --samples responses (the run's own sampling settings, temperature 1) from each
run's final checkpoint and prints a table: the numbers behind README.md's "degenerate habit".
"""

import argparse
import collections
import json
import os

import jax
import ml_collections

from pavjax import runtime
from pavjax import evaluation
from pavjax.sampling import Sampler, cached_lm
from pavjax.sampling import methods


def habits(run: str, num_samples: int, seed: int) -> dict:
  """Counts of each distinct response of `run`'s final policy (planted tokens)."""
  with open(os.path.join(run, "config.json"), encoding="utf-8") as f:
    config = ml_collections.ConfigDict(json.load(f))
  env = runtime.setup(config, run)
  params = runtime.load_params(env, os.path.join(run, "checkpoints"), "run")
  problem = env.task.split("validation")[0]  # planted: every problem is the same prompt
  [group] = evaluation.sample_responses(
      env.task, Sampler(cached_lm(env.model), pad_id=env.task.pad_id), params, [problem],
      rng=jax.random.PRNGKey(seed), mesh=env.mesh, method=methods.from_config(config.sample),
      max_new_tokens=config.sample.max_new_tokens, batch_size=num_samples,
      num_samples=num_samples)
  counts = collections.Counter(" ".join(map(str, env.task.from_ids(r.tokens))) for r in group)
  correct = sum(r.outcome.reward for r in group) / len(group)
  return {"counts": counts, "accuracy": correct}


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("runs", nargs="+")
  parser.add_argument("--samples", type=int, default=256)
  parser.add_argument("--top", type=int, default=3)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args()
  print(f"| run | accuracy | distinct of {args.samples} | most common (count) |")
  print("|---|---|---|---|")
  for run in args.runs:
    h = habits(run, args.samples, args.seed)
    top = ", ".join(f"`{seq}` ({n})" for seq, n in h["counts"].most_common(args.top))
    print(f"| {os.path.basename(run)} | {h['accuracy']:.3f} | {len(h['counts'])} | {top} |")


if __name__ == "__main__":
  main()
