"""Tables and plots of the didactic experiment from the runs' metrics and summaries.

  python experiments/didactic/report.py --runs=runs/didactic --out=experiments/didactic
Writes results.md and PNGs into --out; every number comes from the run files.

Intervals (`pavjax.stats`). Every planted problem is the same prompt, so the evaluation's
samples are independent draws from the policy: a sampled accuracy or a Pass@N over
`sample.num_eval` "problems" x `max(rl.eval_pass_ns)` samples gets the Wilson interval
of that many draws (Pass@N: of its `num_eval` subsets-averaged replicates, conservative).
Comparisons over seeds pair runs by seed and give each seed's difference, their mean,
min-max and the Student-t 95% interval of the mean, with the verdict word it implies.
"""

import argparse
import glob
import json
import os
import re

import numpy as np

from pavjax import metrics
from pavjax import prover_diagnostics
from pavjax import stats


def _load(run):
  rows = metrics.read_jsonl(os.path.join(run, "metrics.jsonl"))
  evals = metrics.read_jsonl(os.path.join(run, "eval.jsonl"))
  return rows, evals


def _curve(rows, key="rl/accuracy"):
  return [(r["step"], r[key]) for r in rows if key in r]


def _config(run):
  path = os.path.join(run, "config.json")
  if not os.path.exists(path):
    return {}
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def eval_sizes(run):
  """(problems, samples per problem) of a run's evaluations, from its config (0 if unknown)."""
  cfg = _config(run)
  problems = int(cfg.get("sample", {}).get("num_eval", 0) or 0)
  ns = str(cfg.get("rl", {}).get("eval_pass_ns", "") or "")
  samples = max((int(x) for x in ns.split(",") if x.strip()), default=0)
  return problems, samples


def _seed(run):
  m = re.search(r"_seed(\d+)$", os.path.basename(run))
  return int(m.group(1)) if m else os.path.basename(run)


def _spread_cell(sp):
  """'0.955 [0.90, 1.01] (min 0.93, max 0.97)': mean, t interval over seeds, range."""
  if not sp.values:
    return "n/a"
  iv = ("n/a" if len(sp.values) < 2 else
        f"[{sp.interval.low:.3f}, {sp.interval.high:.3f}]")
  return f"{sp.mean:.3f} {iv} (min {sp.min:.3f}, max {sp.max:.3f})"


def setting_line(runs_dir):
  """What setting the runs were in, read from one RL run's and the SFT run's config.json."""
  rl_cfg = next((c for c in map(_config, sorted(glob.glob(os.path.join(runs_dir, "*_seed*"))))
                 if c.get("rl")), {})
  sft_cfg = _config(os.path.join(runs_dir, "sft"))
  if not rl_cfg:
    return "Setting: unknown (no RL run's config.json)."
  rl, optim, model = rl_cfg.get("rl", {}), rl_cfg.get("optim", {}), rl_cfg.get("model", {})
  net = (f"MADE {tuple(model.get('hidden_sizes', ()))}" if model.get("arch") == "made"
         else f"transformer size={model.get('size', '?')}")
  schedule = lambda o: ("constant" if not o.get("warmup_steps") and o.get("end_lr_frac") == 1.0
                        else f"warm-up {o.get('warmup_steps')} steps, cosine to "
                        f"{o.get('end_lr_frac')} x peak")
  sft = (f"SFT {sft_cfg.get('train', {}).get('num_steps')} steps at lr "
         f"{sft_cfg.get('optim', {}).get('lr')} ({schedule(sft_cfg.get('optim', {}))})"
         if sft_cfg else "SFT: no config.json")
  return (f"Setting (from the runs' config.json): policy {net}; RL batch "
          f"{rl.get('num_prompts')} prompts x {rl.get('group_size')} samples, estimator "
          f"`{rl.get('estimator')}`, KL coefficient {rl.get('kl_coef')}, alpha {rl.get('alpha')}, "
          f"{optim.get('name', 'adamw')} lr {optim.get('lr')} ({schedule(optim)}); {sft}.")


def _first_cell(steps):
  return ", ".join("never" if s is None else str(s) for s in steps)


def gamma_curves(runs_dir):
  """{gamma: {seed: [(step, batch accuracy)]}} of the (b) runs `gamma<g>_seed<s>`."""
  curves = {}
  for run in glob.glob(os.path.join(runs_dir, "gamma*")):
    m = re.fullmatch(r"gamma([0-9.]+)(?:_seed(\d+))?", os.path.basename(run))
    rows = _load(run)[0] if os.path.exists(run + "/metrics.jsonl") else []
    if m and rows:
      seed = int(m.group(2)) if m.group(2) is not None else 0
      curves.setdefault(float(m.group(1)), {})[seed] = _curve(rows)
  return curves


def horizon_averages(curves, horizon):
  """[(gamma, {seed: batch accuracy averaged over steps <= horizon})], gammas ascending.

  A run counts at horizon H only if it reached H (a run still going is left out)."""
  gam = []
  for g in sorted(curves):
    accs = {seed: float(np.mean([a for s, a in c if s <= horizon]))
            for seed, c in sorted(curves[g].items()) if max(s for s, _ in c) >= horizon}
    if accs:
      gam.append((g, accs))
  return gam


def settings_table(cells, horizon):
  """Markdown: (b) at one horizon for several run directories (settings) side by side.

  `cells` is [(label, runs_dir)]. Each cell: mean [95% t interval over seeds] and the
  seeds; the settings' runs are independent, so no pairing across them.
  """
  per_cell = [(label, dict(horizon_averages(gamma_curves(d), horizon))) for label, d in cells]
  gammas = sorted({g for _, gam in per_cell for g in gam})
  lines = [f"(b) batch accuracy averaged over the first {horizon} iterations: mean "
           "[95% t interval over seeds] (seeds)", "",
           "| gamma | " + " | ".join(label for label, _ in per_cell) + " |",
           "|---|" + "---|" * len(per_cell)]
  for g in gammas:
    cells_text = []
    for _, gam in per_cell:
      accs = gam.get(g)
      if not accs:
        cells_text.append("n/a")
        continue
      sp = stats.seed_spread(accs, within=(0.0, 1.0))
      iv = (f" [{sp.interval.low:.3f}, {sp.interval.high:.3f}]" if len(accs) > 1 else "")
      cells_text.append(f"{sp.mean:.3f}{iv} ({len(accs)})")
    lines.append(f"| {g:g} | " + " | ".join(cells_text) + " |")
  return "\n".join(lines) + "\n"


SEED_COMPARISON_HEADER = [
    "| comparison (A - B, paired by seed) | seeds | per seed | mean [95% t interval] | verdict |",
    "|---|---|---|---|---|"]


def _plot_gamma(gam, outcome, theory, horizon, path):
  """Fig. 3b: accuracy vs gamma (seed spread) beside the exact theory terms."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  gs = [g for g, _ in gam]
  fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
  accs = [list(a.values()) for _, a in gam]
  mean = [np.mean(a) for a in accs]
  left.plot(gs, mean, marker="o",
            label=f"PAV-RL, mu_gamma (mean of {len(accs[0])} seeds, min-max shaded)")
  left.fill_between(gs, [min(a) for a in accs], [max(a) for a in accs], alpha=0.2)
  for g, a in zip(gs, accs):  # every seed
    left.scatter([g] * len(a), a, s=6, color="C0", alpha=0.6)
  if outcome:
    o = list(outcome.values())
    left.axhline(np.mean(o), color="gray", ls="--",
                 label=f"outcome only ({len(o)} seeds, min-max shaded)")
    left.axhspan(min(o), max(o), color="gray", alpha=0.1)
  left.set(xlabel="prover gamma", ylabel=f"batch accuracy averaged over {horizon} iterations",
           title="RL runs")
  left.legend(fontsize=7)
  for key in ("distinguishability", "alignment", "predicted"):
    right.plot(gs, [theory.get(g, {}).get(key, np.nan) for g in gs], marker="o", label=key)
  right.set(xlabel="prover gamma", ylabel="exact term (one NPG step from mu_5)",
            title="Theorem 3.1 terms")
  right.legend(fontsize=7)
  for ax in (left, right):
    ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def main(argv=None):
  parser = argparse.ArgumentParser()
  parser.add_argument("--runs", default="runs/didactic")
  parser.add_argument("--out", default="experiments/didactic")
  parser.add_argument("--gamma_horizons", default="200,400",
                      help="(b): average each run's batch accuracy over its first H "
                      "iterations, for each H the runs reach (their longest always)")
  parser.add_argument("--settings", default="",
                      help="label=runs_dir,...: instead of one report, write --out/"
                      "settings.md, (b) of these run directories side by side")
  args = parser.parse_args(argv)
  if args.settings:
    cells = [tuple(c.split("=", 1)) for c in args.settings.split(",") if c.strip()]
    os.makedirs(args.out, exist_ok=True)
    text = "# (b) across settings (generated by report.py --settings)\n\n" + "\n".join(
        f"- {label}: {setting_line(d)}" for label, d in cells) + "\n\n" + "\n".join(
            settings_table(cells, int(h)) for h in args.gamma_horizons.split(",") if h.strip())
    with open(os.path.join(args.out, "settings.md"), "w", encoding="utf-8") as f:
      f.write(text)
    print(text)
    return
  os.makedirs(args.out, exist_ok=True)
  lines = ["# Didactic results (generated by report.py)", "",
           "Intervals are 95% (`pavjax.stats`): Wilson's over the evaluation's independent "
           "samples for one run; over seeds, the Student-t interval of the mean. A verdict "
           "is *ahead* / *behind* when the interval excludes 0, else *no difference "
           "detected*.", "", setting_line(args.runs), ""]

  # (a) accuracy vs iterations, mean and min-max over seeds.
  series, bands, table, run_avg, finals = {}, {}, [], {}, {}
  for reward in ("pav", "outcome"):
    runs = [r for r in sorted(glob.glob(os.path.join(args.runs, f"{reward}_seed*")))
            if os.path.exists(r + "/metrics.jsonl")]
    curves = [dict(_curve(_load(r)[0])) for r in runs]
    if not curves:
      continue
    steps = sorted(set.intersection(*[set(c) for c in curves]))
    acc = np.array([[c[s] for s in steps] for c in curves])
    name = f"{reward} (mean of {len(curves)} seeds, min-max shaded)"
    series[name] = list(zip(steps, acc.mean(0)))
    bands[name] = list(zip(steps, acc.min(0), acc.max(0)))
    first_90 = [next((s for s, a in zip(steps, row) if a >= 0.9), None) for row in acc]
    run_avg[reward] = {_seed(r): float(row.mean()) for r, row in zip(runs, acc)}
    finals[reward] = {}
    for r in runs:
      with open(os.path.join(r, "summary.json"), encoding="utf-8") as f:
        final = json.load(f)["eval"]["sample_accuracy"]
      problems, samples = eval_sizes(r)
      finals[reward][_seed(r)] = (final, problems * samples)
    table.append((reward, len(curves), first_90))
  if series:
    metrics.plot_series(series, os.path.join(args.out, "fig3a_accuracy.png"),
                        xlabel="RL iteration", ylabel="training batch accuracy",
                        title="planted: PAV (mu_10) vs outcome-only", bands=bands)
    lines += ["## (a) Accuracy vs iterations", "",
              "| reward | seeds | first logged step with batch accuracy >= 0.9 (per seed) | "
              "final sampled accuracy per seed [95% interval] (n samples) | batch accuracy "
              "averaged over the run, per seed | mean [95% t interval over seeds] (min, max) |",
              "|---|---|---|---|---|---|"]
    for reward, n, f90 in table:
      fin = "; ".join(
          f"seed {s}: {stats.proportion(v, k).text() if k else f'{v:.3f}'} (n={k or '?'})"
          for s, (v, k) in finals[reward].items())
      per = ", ".join(f"{s}: {v:.3f}" for s, v in run_avg[reward].items())
      lines.append(f"| {reward} | {n} | {_first_cell(f90)} | {fin} | {per} | "
                   f"{_spread_cell(stats.seed_spread(run_avg[reward], within=(0.0, 1.0)))} |")
    if "pav" in run_avg and "outcome" in run_avg:
      lines += ["", *SEED_COMPARISON_HEADER,
                stats.seed_comparison_row("PAV - outcome, batch accuracy averaged over the run",
                                    run_avg["pav"], run_avg["outcome"]),
                stats.seed_comparison_row("PAV - outcome, final sampled accuracy",
                                    {s: v for s, (v, _) in finals["pav"].items()},
                                    {s: v for s, (v, _) in finals["outcome"].items()})]
    lines += ["", "![fig3a](fig3a_accuracy.png)", ""]

  # (c) Pass@N at fixed iterations (the paper reads it at 100).
  for at in (50, 100):
    pass_series, pass_bands, sizes = {}, {}, {}
    for reward in ("pav", "outcome"):
      for run in sorted(glob.glob(os.path.join(args.runs, f"{reward}_seed*"))):
        evals = [e for e in _load(run)[1] if e["step"] == at]
        if evals:
          pts = sorted((int(k.split("_")[-1]), v) for k, v in evals[0].items()
                       if k.startswith("eval/pass_at_"))
          name = os.path.basename(run)
          pass_series[name] = pts
          sizes[name] = eval_sizes(run)[0]
          if sizes[name]:
            ivs = [stats.proportion(v, sizes[name]) for _, v in pts]
            pass_bands[name] = [(n, iv.low, iv.high) for (n, _), iv in zip(pts, ivs)]
    if not pass_series:
      continue
    png = f"fig3c_pass_at_n_iter{at}.png"
    metrics.plot_series(pass_series, os.path.join(args.out, png), xlabel="N",
                        ylabel="Pass@N (95% band)", log_base=2,
                        title=f"Pass@N at iteration {at}", bands=pass_bands)
    ns = sorted({n for pts in pass_series.values() for n, _ in pts})
    lines += [f"## (c) Pass@N at iteration {at} [95% interval over n replicates]", "",
              "| run | n | " + " | ".join(f"N={n}" for n in ns) + " |",
              "|---|---|" + "---|" * len(ns)]
    for name, pts in pass_series.items():
      d, k = dict(pts), sizes[name]
      cells = [("n/a" if n not in d else stats.proportion(d[n], k).text() if k
                else f"{d[n]:.3f}") for n in ns]
      lines.append(f"| {name} | {k or '?'} | " + " | ".join(cells) + " |")
    lines += ["", f"![fig3c]({png})", ""]

  # (b) batch accuracy averaged over the first H iterations vs gamma (each seed, mean,
  # t interval, min-max), the outcome-only runs over the same iterations as a reference,
  # and the exact Theorem 3.1 terms beside it; one table per horizon H.
  curves = gamma_curves(args.runs)
  outcome_curves = {_seed(r): _curve(_load(r)[0])
                    for r in sorted(glob.glob(os.path.join(args.runs, "outcome_seed*")))
                    if os.path.exists(r + "/metrics.jsonl")}
  longest = max((max(s for s, _ in c) for g in curves.values() for c in g.values()), default=0)
  horizons = sorted({h for h in (int(x) for x in args.gamma_horizons.split(",") if x.strip())
                     if h < longest} | ({longest} if longest else set()))
  theory = {}
  if curves:
    theory = {r["param"]: r for r in prover_diagnostics.planted_sweep(gammas=sorted(curves),
                                                                      bok_ks=())
              if r["kind"] == "gamma"}
  for horizon in horizons:
    # A run counts at horizon H only if it reached H (a run still going is left out).
    gam = horizon_averages(curves, horizon)
    if not gam:
      continue
    outcome = {seed: float(np.mean([a for s, a in c if s <= horizon]))
               for seed, c in outcome_curves.items() if c and max(s for s, _ in c) >= horizon}
    lines += [f"## (b) Batch accuracy averaged over the first {horizon} iterations vs prover "
              "gamma", "",
              "| gamma | seeds | mean [95% t interval] (min, max) | sd | per seed | "
              "vs outcome-only, paired by seed: mean difference [95% t interval] | verdict | "
              "distinguishability | alignment | predicted gain |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for g, accs in gam:
      t = theory.get(g, {})
      sp = stats.seed_spread(accs, within=(0.0, 1.0))
      sd = f"{sp.std:.3f}" if len(accs) > 1 else "n/a"
      d = stats.seed_difference(accs, outcome, within=(-1.0, 1.0))
      diff = ("n/a" if not d.values else f"{d.mean:+.3f} [{d.interval.low:+.3f}, "
              f"{d.interval.high:+.3f}]" if len(d.values) > 1 else f"{d.mean:+.3f} (one seed)")
      per = ", ".join(f"{seed}: {a:.3f}" for seed, a in accs.items())
      lines.append(f"| {g:g} | {len(accs)} | {_spread_cell(sp)} | {sd} | {per} | {diff} | "
                   f"{stats.verdict(d.interval) if d.values else 'n/a'} | "
                   f"{t.get('distinguishability', float('nan')):.4g} | "
                   f"{t.get('alignment', float('nan')):.4g} | {t.get('predicted', float('nan')):.4g} |")
    if outcome:
      o = stats.seed_spread(outcome, within=(0.0, 1.0))
      lines += ["", f"Outcome-only reference (the (a) runs over their first {horizon} "
                f"iterations, {len(outcome)} seeds): {_spread_cell(o)}, per seed "
                + ", ".join(f"{seed}: {a:.3f}" for seed, a in outcome.items()) + "."]
    best = max(gam, key=lambda ga: np.mean(list(ga[1].values())))
    lines += ["", f"Each gamma against the best mean (gamma {best[0]:g}), paired by seed:", "",
              *SEED_COMPARISON_HEADER]
    lines += [stats.seed_comparison_row(f"gamma {g:g} - gamma {best[0]:g}", accs, best[1])
              for g, accs in gam if g != best[0]]
    png = "fig3b_gamma.png" if horizon == horizons[0] else f"fig3b_gamma_{horizon}.png"
    _plot_gamma(gam, outcome, theory, horizon, os.path.join(args.out, png))
    lines += ["", f"![fig3b]({png})", ""]
  with open(os.path.join(args.out, "results.md"), "w", encoding="utf-8") as f:
    f.write("\n".join(lines) + "\n")
  print("\n".join(lines))


if __name__ == "__main__":
  main()
