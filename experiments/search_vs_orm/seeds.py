"""Search comparisons over seeds: each seed's accuracy and the seed-paired differences.

  python experiments/search_vs_orm/seeds.py runs/search_planted_g10/search \
      runs/search_planted_g10/search_seed{1,2,3,4} --ns=16,64,128

Each directory is one search job's workdir run with `--config.seed=k` (the seed is read
from its `config.json`). Per (method, N): every seed's accuracy with its 95% interval over
the problems, the mean over seeds and its spread; then PAV beam and PAV DVTS minus the
`Q^pi` beam and ORM best-of-N, paired by seed (Student t over the per-seed differences),
and pooled over every (seed, problem) pair (the score interval of the paired difference).
"""

from __future__ import annotations

import argparse
import json
import os

from pavjax import artifacts
from pavjax import metrics
from pavjax import stats

METHODS = ("bon:orm", "q_beam", "pav_beam", "dvts")
COMPARE = (("pav_beam", "q_beam"), ("dvts", "q_beam"), ("pav_beam", "bon:orm"))


def load(workdir: str) -> tuple[int, dict]:
  with open(os.path.join(workdir, artifacts.CONFIG), encoding="utf-8") as f:
    seed = int(json.load(f)["seed"])
  rows = metrics.read_jsonl(os.path.join(workdir, artifacts.SEARCH_ROWS))
  return seed, {(r["method"], r["n"]): r["per_problem"] for r in rows
                if not r.get("variant") and r.get("per_problem")}


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("workdirs", nargs="+")
  parser.add_argument("--ns", default="16,64,128")
  args = parser.parse_args(argv)
  ns = [int(n) for n in args.ns.split(",")]
  runs = dict(load(w) for w in args.workdirs)
  seeds = sorted(runs)
  print(f"# Search over {len(seeds)} seeds ({', '.join(map(str, seeds))})\n")
  print("| method | N | " + " | ".join(f"seed {s}" for s in seeds) +
        " | mean (sd) [95% t over seeds] |")
  print("|---|---|" + "---|" * (len(seeds) + 1))
  for method in METHODS:
    for n in ns:
      per = {s: runs[s].get((method, n)) for s in seeds}
      if not all(per.values()):
        continue
      ivs = {s: stats.mean_interval(per[s]) for s in seeds}
      cells = [ivs[s].text() for s in seeds]
      sp = stats.seed_spread({s: iv.estimate for s, iv in ivs.items()}, within=(0.0, 1.0))
      print(f"| {method} | {n} | " + " | ".join(cells) +
            f" | {sp.mean:.3f} ({sp.std:.3f}) {sp.interval.bounds()} |")
  print("\n| comparison | seeds | per seed | mean [95% t] | verdict |")
  print("|---|---|---|---|---|")
  pooled = []
  for a, b in COMPARE:
    for n in ns:
      if not all(runs[s].get((a, n)) and runs[s].get((b, n)) for s in seeds):
        continue
      acc = lambda m: {s: stats.mean_interval(runs[s][(m, n)]).estimate for s in seeds}
      print(stats.seed_comparison_row(f"{a} - {b}, N={n}", acc(a), acc(b)))
      xa = [x for s in seeds for x in runs[s][(a, n)]]
      xb = [x for s in seeds for x in runs[s][(b, n)]]
      diff = stats.paired_difference(xa, xb)
      pooled.append(f"| {a} - {b}, N={n} | {diff.n} | {diff.text(signed=True)} | "
                    f"{stats.verdict(diff)} |")
  print("\nPooled over every (seed, problem) pair:\n")
  print("| comparison | searches | difference [95%] | verdict |\n|---|---|---|---|")
  print("\n".join(pooled))


if __name__ == "__main__":
  main()
