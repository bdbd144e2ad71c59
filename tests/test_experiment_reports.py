"""experiments/*/report.py on hand-made run directories: intervals, seed spreads, verdicts, bands."""

import math
import pathlib

from pavjax import stats
from tests.files import load_script
from tests.files import write_json as _write

_ROOT = pathlib.Path(__file__).resolve().parents[1] / "experiments"


def _script(name):
  return load_script(_ROOT / name / "report.py", f"{name}_report")


def _row(text, start):
  (row,) = [line for line in text.splitlines() if line.startswith(start)]
  return [c.strip() for c in row.strip("|").split("|")]


def _t(diffs, lo, hi, signed=False):
  """'mean [low, high]' of the t interval of `diffs`, cut to [lo, hi]."""
  mean = sum(diffs) / len(diffs)
  half = _t_half(diffs)
  f = (lambda x: f"{x:+.3f}") if signed else (lambda x: f"{x:.3f}")
  return f"{f(mean)} [{f(max(mean - half, lo))}, {f(min(mean + half, hi))}]"


def _t_half(diffs):
  """Half-width of the t interval of the mean of `diffs` (t quantile from scipy-free tables:
  df 1 is the Cauchy quantile tan(0.475 pi))."""
  n = len(diffs)
  mean = sum(diffs) / n
  sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1))
  assert n == 2
  return math.tan(0.475 * math.pi) * sd / math.sqrt(n)


def test_didactic_report_intervals_and_seed_comparisons(tmp_path, plots):
  runs, out = tmp_path / "runs", tmp_path / "out"
  cfg = {"sample": {"num_eval": 4}, "rl": {"eval_pass_ns": "1,2"}}
  batch = {("pav", 0): [0.5, 0.7], ("pav", 1): [0.7, 0.9],  # run averages 0.6, 0.8
           ("outcome", 0): [0.1, 0.3], ("outcome", 1): [0.2, 0.4]}  # 0.2, 0.3
  final = {("pav", 0): 0.5, ("pav", 1): 0.75, ("outcome", 0): 0.25, ("outcome", 1): 0.0}
  for (reward, seed), accs in batch.items():
    run = runs / f"{reward}_seed{seed}"
    _write(run / "config.json", cfg)
    _write(run / "metrics.jsonl", [{"step": s, "rl/accuracy": a} for s, a in zip((10, 20), accs)])
    _write(run / "eval.jsonl", [{"step": 50, "eval/pass_at_1": 0.25, "eval/pass_at_2": 0.5}])
    _write(run / "summary.json", {"eval": {"sample_accuracy": final[reward, seed]}})
  for gamma, seed, accs in ((5, 0, [0.6, 0.8]), (5, 1, [0.5, 0.7]), (10, 0, [0.8, 0.8]),
                            (10, 1, [0.7, 0.9])):
    _write(runs / f"gamma{gamma}_seed{seed}" / "metrics.jsonl",
           [{"step": s, "rl/accuracy": a} for s, a in zip((10, 20), accs)])
  _script("didactic").main([f"--runs={runs}", f"--out={out}"])
  text = (out / "results.md").read_text()
  # (a): each seed's final sampled accuracy over 4 problems x 2 samples = 8 draws.
  row = _row(text, "| pav | 2 |")
  assert f"seed 0: {stats.wilson(4, 8).text()} (n=8)" in row[3]
  assert f"seed 1: {stats.wilson(6, 8).text()} (n=8)" in row[3]
  # Run averages 0.6, 0.8: each seed, then mean 0.7 and the t interval over the two seeds.
  assert row[4] == "0: 0.600, 1: 0.800"
  assert row[5] == _t([0.6, 0.8], 0, 1) + " (min 0.600, max 0.800)"
  assert row[5] == "0.700 [0.000, 1.000] (min 0.600, max 0.800)"  # t(1) = 12.7: cut to [0, 1]
  # PAV - outcome per seed: +0.4, +0.5 -> mean +0.45, t(1) says little: no difference.
  row = _row(text, "| PAV - outcome, batch accuracy averaged over the run |")
  assert row[1:] == ["2", "0: +0.400, 1: +0.500", _t([0.4, 0.5], -1, 1, signed=True),
                     "no difference detected"]
  # (c): Pass@N cells with Wilson intervals over the 4 replicates; bands on the plot.
  row = _row(text, "| pav_seed0 |")
  assert row == ["pav_seed0", "4", stats.wilson(1, 4).text(), stats.wilson(2, 4).text()]
  _, bands = plots["fig3c_pass_at_n_iter50.png"]
  w = stats.wilson(2, 4)
  assert bands["pav_seed0"][1] == (2, w.low, w.high)
  # (b): gamma 5 (0.7, 0.6) vs outcome-only over the first 20 iterations (0.2, 0.3).
  row = _row(text, "| 5 | 2 |")
  assert row[5] == _t([0.5, 0.3], -1, 1, signed=True)
  assert row[6] == "no difference detected"
  assert "| gamma 5 - gamma 10 | 2 | 0: -0.100, 1: -0.200 |" in text
  assert (out / "fig3b_gamma.png").exists()
  assert "Setting (from the runs' config.json): policy transformer" in text


def test_didactic_report_names_the_setting_and_averages_over_each_horizon(tmp_path, plots):
  del plots
  runs, out = tmp_path / "runs", tmp_path / "out"
  cfg = {"sample": {"num_eval": 4}, "rl": {"eval_pass_ns": "1", "num_prompts": 1,
                                           "group_size": 64, "estimator": "group_mean",
                                           "kl_coef": 0.0, "alpha": 1.0},
         "optim": {"lr": 0.001, "warmup_steps": 0, "end_lr_frac": 1.0},
         "model": {"arch": "made", "hidden_sizes": [128, 128, 128]}}
  _write(runs / "sft" / "config.json", {"train": {"num_steps": 50},
                                        "optim": {"lr": 0.001, "warmup_steps": 50,
                                                  "end_lr_frac": 0.1}})
  for reward, accs in (("pav", [0.0, 0.9, 1.0, 1.0]), ("outcome", [0.0, 0.0, 0.0, 0.5])):
    run = runs / f"{reward}_seed0"
    _write(run / "config.json", cfg)
    _write(run / "metrics.jsonl", [{"step": s, "rl/accuracy": a}
                                   for s, a in zip((10, 20, 30, 40), accs)])
    _write(run / "eval.jsonl", [])
    _write(run / "summary.json", {"eval": {"sample_accuracy": accs[-1]}})
  gammas = {(1, 0): [0.0, 0.0, 0.2, 0.6], (1, 1): [0.0, 0.2, 0.4, 0.6],
            (10, 0): [0.5, 0.5, 0.9, 0.9], (10, 1): [0.6, 0.6], (10, 2): [0.1, 0.3, 0.5, 0.7]}
  for (gamma, seed), accs in gammas.items():  # gamma 10 seed 1 stopped at iteration 20
    _write(runs / f"gamma{gamma}_seed{seed}" / "metrics.jsonl",
           [{"step": 10 * (i + 1), "rl/accuracy": a} for i, a in enumerate(accs)])
  _script("didactic").main([f"--runs={runs}", f"--out={out}", "--gamma_horizons=20,99"])
  text = (out / "results.md").read_text()
  assert ("policy MADE (128, 128, 128); RL batch 1 prompts x 64 samples, estimator "
          "`group_mean`, KL coefficient 0.0, alpha 1.0, adamw lr 0.001 (constant); SFT 50 "
          "steps at lr 0.001 (warm-up 50 steps, cosine to 0.1 x peak)") in text
  assert _row(text, "| outcome | 1 |")[2] == "never"
  assert _row(text, "| pav | 1 |")[2] == "20"
  # Horizons 20 and the longest run's 40 (99 is past every run): two tables.
  first, second = text.split("## (b) Batch accuracy averaged over the first 20 ")[1].split(
      "## (b) Batch accuracy averaged over the first 40 ")
  assert "first 99" not in text
  assert _row(first, "| 1 | 2 |")[4] == "0: 0.000, 1: 0.100"
  assert _row(first, "| 10 | 3 |")[4] == "0: 0.500, 1: 0.600, 2: 0.200"
  assert _row(second, "| 1 | 2 |")[4] == "0: 0.200, 1: 0.300"
  # Seed 1 never reached 40 iterations: left out, not averaged over fewer.
  assert _row(second, "| 10 | 2 |")[4] == "0: 0.700, 2: 0.400"
  assert "per seed 0: 0.000." in first and "per seed 0: 0.125." in second
  assert (out / "fig3b_gamma.png").exists() and (out / "fig3b_gamma_40.png").exists()


def test_rl_vs_orm_report_intervals_and_comparisons(tmp_path, plots):
  runs, out = tmp_path / "runs", tmp_path / "out"
  cfg = {"sample": {"num_eval": 10}, "rl": {"alpha": 3.0}}
  uids = [f"v{i}" for i in range(10)]
  per_problem = {("outcome", 0): [1] * 2 + [0] * 8, ("pav_exact", 0): [1] * 9 + [0]}
  final = {("outcome", 0): (0.2, 0.2), ("outcome", 1): (0.3, 0.3),
           ("pav_exact", 0): (0.9, 0.9), ("pav_exact", 1): (0.6, 0.5)}  # (sampled, greedy)
  for (prefix, seed), (sampled, greedy) in final.items():
    run = runs / f"{prefix}_seed{seed}"
    _write(run / "config.json", cfg)
    _write(run / "eval.jsonl", [
        {"step": 0, "eval/sample_accuracy": 0.2, "eval/accuracy": 0.2, "eval/pass_at_1": 0.2,
         "eval/pass_at_4": 0.4},
        {"step": 20, "eval/sample_accuracy": sampled, "eval/accuracy": greedy,
         "eval/pass_at_1": sampled, "eval/pass_at_4": 0.5 + 0.1 * seed}])
    ev = {"accuracy": greedy}
    if (prefix, seed) in per_problem:
      ev.update(per_problem=per_problem[prefix, seed], problem_uids=uids)
    _write(run / "summary.json", {"eval": ev})
  _write(runs / "pav_exact_alpha1" / "eval.jsonl", [{"step": 20, "eval/sample_accuracy": 0.3,
                                                     "eval/accuracy": 0.3}])
  _write(runs / "pav_exact_alpha1" / "config.json", cfg)
  _script("rl_vs_orm").main([f"--runs={runs}", f"--out={out}"])
  text = (out / "results.md").read_text()
  # Every seed with its Wilson interval over 10 problems.
  row = _row(text, "| PAV-RL, exact line prover (p = 0.8) | 1 |")
  assert row[2:] == ["10", stats.wilson(6, 10).text(), stats.wilson(5, 10).text()]
  # Over seeds, paired by seed: sampled +0.7, +0.3.
  row = _row(text, "| PAV-RL, exact line prover (p = 0.8) - ORM-RL, final sampled accuracy |")
  assert row[1:] == ["2", "0: +0.700, 1: +0.300", _t([0.7, 0.3], -1, 1, signed=True),
                     "no difference detected"]
  # Seed 0 stored greedy outcomes per problem: 7 gains, no loss of 10.
  diff = stats.paired_difference(per_problem["pav_exact", 0], per_problem["outcome", 0])
  row = _row(text, "| PAV-RL, exact line prover (p = 0.8) - ORM-RL | 0 |")
  assert row[2:] == ["10", diff.text(3, signed=True), "ahead"]
  assert not [l for l in text.splitlines() if l.startswith("| PAV-RL, exact line prover "
                                                           "(p = 0.8) - ORM-RL | 1 |")]
  # Pass@N: the RL start is one evaluation (Wilson); the final policies show the seeds' range.
  row = _row(text, "| RFT (RL start) |")
  assert row == ["RFT (RL start)", "10", stats.wilson(2, 10).text(), stats.wilson(4, 10).text()]
  row = _row(text, "| ORM-RL (outcome reward) | 10 |")
  assert row[3] == "0.550 (seeds 0.500-0.600)"
  # Alpha sweep: the alpha-1 run and seed 0 at alpha 3, each with its interval.
  assert f"| 1 | 10 | {stats.wilson(3, 10).text()} | 20 |" in text
  assert f"| 3 | 10 | {stats.wilson(9, 10).text()} | 20 |" in text
  _, bands = plots["alpha_sweep.png"]
  w = stats.wilson(3, 10)
  assert bands["PAV-RL (exact prover)"][0] == (1.0, w.low, w.high)
  _, bands = plots["pass_at_n.png"]
  assert bands["ORM-RL (outcome reward)"] == [(1, 0.2, 0.3), (4, 0.5, 0.6)]


def test_didactic_settings_table_side_by_side(tmp_path):
  runs = {"a": {(1, 0): [0.0, 0.2], (1, 1): [0.2, 0.4], (3, 0): [0.5, 0.5]},
          "b": {(1, 0): [0.6, 0.8], (1, 1): [0.4, 0.6], (1, 2): [0.5]}}  # b seed 2 stopped early
  for cell, gammas in runs.items():
    for (gamma, seed), accs in gammas.items():
      _write(tmp_path / cell / f"gamma{gamma}_seed{seed}" / "metrics.jsonl",
             [{"step": 10 * (i + 1), "rl/accuracy": a} for i, a in enumerate(accs)])
  out = tmp_path / "out"
  _script("didactic").main([f"--out={out}", "--gamma_horizons=20",
                            f"--settings=first={tmp_path / 'a'},second={tmp_path / 'b'}"])
  text = (out / "settings.md").read_text()
  assert "| gamma | first | second |" in text
  # gamma 1: first averages 0.1, 0.3; second 0.7, 0.6 (seed 2 never reached 20 iterations).
  a = stats.seed_spread({0: 0.1, 1: 0.3}, within=(0.0, 1.0))
  b = stats.seed_spread({0: 0.7, 1: 0.5}, within=(0.0, 1.0))
  assert _row(text, "| 1 |") == [
      "1", f"0.200 [{a.interval.low:.3f}, {a.interval.high:.3f}] (2)",
      f"0.600 [{b.interval.low:.3f}, {b.interval.high:.3f}] (2)"]
  assert _row(text, "| 3 |") == ["3", "0.500 (1)", "n/a"]


def test_compare_runs_lines_up_two_reports_verdicts(tmp_path, capsys, plots):
  """experiments/tiny_pipeline/compare_runs.py on two reports written by pavjax.report."""
  from pavjax import report  # pylint: disable=g-import-not-at-top
  module = load_script(_ROOT / "tiny_pipeline" / "compare_runs.py", "compare_runs")
  paths = []
  for run, gains in (("a", 12), ("b", 1)):  # 12 of 40 problems gained vs 1: ahead vs not
    root = tmp_path / run
    _write(root / "search" / "rows.jsonl", [
        {"method": m, "n": 4, "variant": "", "accuracy": sum(per) / 40, "per_problem": per}
        for m, per in (("bon:orm", [0] * 40), ("pav_beam", [1] * gains + [0] * (40 - gains)))])
    curves = {"bon:orm": [{"n": 4, "accuracy": 0.0, "flops": 4e6}],
              "pav_beam": [{"n": 4, "accuracy": gains / 40, "flops": 3e6}]}
    summaries = {"search": {"curves": curves, "problems": 40, "efficiency_vs_orm": {},
                            "efficiency_note": None, "settings": {}}}
    paths.append(report.write(str(root), summaries, {}, {}))
  assert module.main(paths) == 0
  out = capsys.readouterr().out
  claim = _row(out, "| PAV beam search beats ORM best-of-N")
  assert claim[1].endswith("**shown**") and claim[2].endswith("not shown (no difference "
                                                                "detected)")
  assert claim[3] == "**no**"
  assert _row(out, "| PAV beam N=4")[3] == "**no**"
  assert _row(out, "| PAV beam search vs ORM best-of-N, N=4")[3] == "**no**"  # at equal N
  assert "3 row(s) where the runs' verdicts differ." in out


def test_search_seeds_table_and_seed_paired_comparisons(tmp_path, capsys):
  """experiments/search_vs_orm/seeds.py on two hand-made search workdirs (seeds 0 and 1)."""
  module = load_script(_ROOT / "search_vs_orm" / "seeds.py", "search_seeds")
  runs = {0: {"pav_beam": [1] * 10 + [0] * 10, "q_beam": [1] * 5 + [0] * 15},
          1: {"pav_beam": [1] * 12 + [0] * 8, "q_beam": [0] * 14 + [1] * 6}}
  dirs = []
  for seed, per in runs.items():
    root = tmp_path / f"seed{seed}"
    _write(root / "config.json", {"seed": seed})
    _write(root / "rows.jsonl", [{"method": m, "n": 64, "variant": "", "per_problem": p,
                                  "accuracy": sum(p) / 20} for m, p in per.items()])
    dirs.append(str(root))
  module.main(dirs + ["--ns=64"])
  out = capsys.readouterr().out
  row = _row(out, "| pav_beam | 64 |")
  assert row[2] == stats.wilson(10, 20).text() and row[3] == stats.wilson(12, 20).text()
  assert row[4].startswith("0.550 (0.071) [")
  cmp = _row(out, "| pav_beam - q_beam, N=64 | 2 |")
  assert cmp[1] == "2" and cmp[2] == "0: +0.250, 1: +0.300"
  assert cmp[3] == _t([0.25, 0.3], -1.0, 1.0, signed=True)
  pooled = _row(out, "| pav_beam - q_beam, N=64 | 40 |")
  diff = stats.paired_difference(runs[0]["pav_beam"] + runs[1]["pav_beam"],
                                 runs[0]["q_beam"] + runs[1]["q_beam"])
  assert pooled[2] == diff.text(signed=True) and pooled[3] == stats.verdict(diff)
