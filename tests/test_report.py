"""Report helpers on hand-made curves."""

from pavjax import report


def test_rl_sample_efficiency_by_hand():
  rows = lambda pts: [{"step": s, "eval/accuracy": a} for s, a in pts]
  outcome = rows([(0, 0.1), (50, 0.2), (100, 0.4)])
  pav = rows([(0, 0.1), (50, 0.3), (100, 0.5)])
  se = report.rl_sample_efficiency(pav, outcome)
  assert (se["target"], se["pav_steps"], se["ratio"]) == (0.4, 100, 1.0)
  se = report.rl_sample_efficiency(rows([(0, 0.1), (25, 0.45)]), outcome)
  assert se["ratio"] == 4.0
  # Outcome-RL that ends below its start sets no target worth reaching.
  se = report.rl_sample_efficiency(pav, rows([(0, 0.3), (100, 0.2)]))
  assert se["ratio"] is None and "below" in se["note"]


def test_verifiers_that_do_not_beat_a_constant_are_flagged():
  evals = {"PRM-Q": {"mse": 0.35, "constant/mse": 0.19},
           "ORM": {"mse": 0.10, "constant/mse": 0.19},
           "old run": {"mse": 0.30}}  # written before the baseline existed: not judged
  lines = report.uninformative_verifiers(evals)
  assert len(lines) == 1 and "PRM-Q does not beat a constant" in lines[0]
  assert "0.350" in lines[0] and "0.190" in lines[0]


def test_constant_label_verifiers_are_flagged():
  summaries = {"PRM-Q": {"constant_labels": 0.0}, "ORM": {"constant_labels": None},
               "prover's Q^mu": {"constant_labels": 1.0},
               "old run": {"eval": {}}, "missing": None}  # no field: not judged
  lines = report.constant_label_verifiers(summaries)
  assert lines == [
      "**The PRM-Q was trained on labels that are all 0:** it can only learn a constant "
      "(the policy never succeeded in its rollouts), so its scores rank nothing.",
      "**The prover's Q^mu was trained on labels that are all 1:** it can only learn a "
      "constant (the policy always succeeded in its rollouts), so its scores rank nothing."]


def test_efficiency_section_without_ratios_when_orm_stays_at_zero():
  lines = report.efficiency_section({"efficiency_vs_orm": {},
                                     "efficiency_note": "the ORM curve stays at 0"})
  assert lines[1] == "## Compute efficiency vs ORM best-of-N (search stage)"
  assert lines[3].startswith("**The ORM best-of-N curve stays at accuracy 0 at every N, so no "
                             "speed-up is given:**")
  assert not any("speed-up |" in line or line.startswith("| ") for line in lines)
  # With ratios: the table, one row per method.
  eff = {"bon:pav": {"target_accuracy": 0.5, "speedup": 4.0, "reference_rises": True}}
  lines = report.efficiency_section({"efficiency_vs_orm": eff, "efficiency_note": None})
  assert "| bon:pav | 0.500 | 4.00 |" in lines
  assert not any("stays at accuracy 0" in line for line in lines)
  # No search results (or an old one without an ORM curve): no section.
  assert report.efficiency_section({}) == []
  assert report.efficiency_section({"efficiency_vs_orm": {}}) == []


def test_rft_fallback_is_named_in_accuracy_and_stages(tmp_path):
  ev = {"accuracy": 0.25}
  summaries = {"sft": {"eval": ev, "step": 10}, "rft": {"eval": ev, "step": 0}}
  path = report.write(str(tmp_path), summaries, {"sft": 1.0, "rft": 2.0},
                      {"sft": "ran", "rft": "ran"})
  text = open(path, encoding="utf-8").read()
  assert "fallback" not in text and "| RFT | 0.250 |" in text
  summaries["rft"]["fallback"] = "no correct sample among 16: RFT kept the initial policy"
  text = open(report.write(str(tmp_path), summaries, {}, {"rft": "ran"}), encoding="utf-8").read()
  assert "| RFT (fallback: initial policy kept) | 0.250 |" in text
  assert "| rft | complete (fallback: initial policy kept) |" in text
  assert "no correct sample among 16: RFT kept the initial policy" in text


# --- intervals and paired comparisons on a hand-made pipeline workdir --------------------------
import os

from pavjax import stats
from tests.files import write_json as _write

_Z2 = stats.Z95 ** 2


def _uids(n):
  return [f"validation-{i}" for i in range(n)]


def _pipeline_workdir(root, per_problem: bool):
  """Stage outputs of a pipeline run, by hand: 8 SFT/RFT problems, 40 search problems,
  10 RL problems. `per_problem=False` is a workdir from before per-problem outcomes
  were stored."""
  def ev(per, **extra):
    out = {"accuracy": sum(per) / len(per), **extra}
    if per_problem:
      out.update(per_problem=per, problem_uids=_uids(len(per)))
    return out

  sft = [1, 1, 0, 0, 0, 0, 0, 0]
  rft = [1, 1, 1, 1, 0, 0, 0, 0]
  reasons = lambda per: {"reason/correct": float(sum(per)), "reason/wrong": float(len(per) - sum(per))}
  orm4 = [1] * 8 + [0] * 32          # ORM best-of-4 = the whole pool of 4: 0/1 per problem
  beam4 = list(orm4)                 # PAV beam agrees with it on every problem
  pav4 = [1] * 20 + [0] * 20         # PAV-as-ORM: 12 more problems right, none lost
  curves = {"bon:orm": [{"n": 1, "accuracy": 0.25, "flops": 1e6},
                        {"n": 4, "accuracy": 0.2, "flops": 4e6}],
            "bon:pav": [{"n": 1, "accuracy": 0.25, "flops": 1e6},
                        {"n": 4, "accuracy": 0.5, "flops": 4e6}],
            "pav_beam": [{"n": 2, "accuracy": 0.1, "flops": 3e6},
                         {"n": 4, "accuracy": 0.2, "flops": 6e6}]}
  rows = [  # a row of an earlier config of the same (method, N) comes first: not used
      {"method": "pav_beam", "n": 4, "variant": "", "accuracy": 0.9,
       "per_problem": [1] * 36 + [0] * 4, "config_hash": "old"}]
  for method, n, per in (("bon:orm", 1, [0.25] * 40), ("bon:orm", 4, orm4),
                         ("bon:pav", 1, [0.25] * 40), ("bon:pav", 4, pav4),
                         ("pav_beam", 2, [1] * 4 + [0] * 36), ("pav_beam", 4, beam4)):
    row = {"method": method, "n": n, "variant": "", "accuracy": sum(per) / 40,
           "config_hash": "new"}
    if per_problem:
      row["per_problem"] = per
    rows.append(row)
  _write(os.path.join(root, "search", "rows.jsonl"), rows)
  rl_start = [1] * 3 + [0] * 7
  for name in ("rl_pav", "rl_outcome"):
    _write(os.path.join(root, name, "config.json"),
           {"rl": {"prover": {"kind": "bok"}, "alpha": 1.0}, "sample": {"num_eval": 10}})
  _write(os.path.join(root, "rl_pav", "eval.jsonl"),
         [{"step": 0, "eval/accuracy": 0.3}, {"step": 4, "eval/accuracy": 1.0}])
  _write(os.path.join(root, "rl_outcome", "eval.jsonl"),
         [{"step": 0, "eval/accuracy": 0.3}, {"step": 4, "eval/accuracy": 0.3}])
  return {
      "sft": {"step": 10, "eval": ev(sft, **reasons(sft))},
      "rft": {"step": 4, "eval": ev(rft, **reasons(rft))},
      "search": {"curves": curves, "problems": 40, "efficiency_vs_orm": {},
                 "efficiency_note": None, "settings": {}},
      "rl_pav": {"step": 4, "eval": ev([1] * 10, pass_at_1=1.0, pass_at_2=1.0),
                 "initial_eval": ev(rl_start, pass_at_1=0.3, pass_at_2=0.45),
                 "hacking_alerts": []},
      # Old RL evaluations keep no reason counts: n comes from the stage's sample.num_eval.
      "rl_outcome": {"step": 4, "eval": ev(rl_start, pass_at_1=0.3, pass_at_2=0.4),
                     "initial_eval": ev(rl_start, pass_at_1=0.3, pass_at_2=0.45)},
  }


def _table_row(text, start):
  (row,) = [line for line in text.splitlines() if line.startswith(start)]
  return [c.strip() for c in row.strip("|").split("|")]


def test_report_accuracies_carry_n_and_wilson_intervals(tmp_path, plots):
  summaries = _pipeline_workdir(str(tmp_path), per_problem=True)
  text = open(report.write(str(tmp_path), summaries, {}, {}), encoding="utf-8").read()
  assert "| policy / method | accuracy | 95% interval | n | evaluated on |" in text
  # Wilson for 2 of 8 and 3 of 10 (hand-computed: center (k + z^2/2)/(n + z^2), half-width
  # z sqrt(k(n-k)/n + z^2/4)/(n + z^2)), and 8 of 40.
  assert _table_row(text, "| SFT |")[1:4] == ["0.250", "[0.071, 0.591]", "8"]
  assert _table_row(text, "| ORM-RL (outcome reward), 4 iterations |")[1:4] == [
      "0.300", "[0.108, 0.603]", "10"]
  assert _table_row(text, "| ORM best-of-N, N=4 |")[1:4] == ["0.200", "[0.105, 0.348]", "40"]
  # The stale row of an earlier config (accuracy 0.9) is not the PAV beam's.
  assert _table_row(text, "| PAV beam search, N=4 |")[1] == "0.200"
  # Pass@N cells carry intervals over the 10 RL problems: Pass@2 0.45 -> Wilson(4.5, 10).
  assert _table_row(text, "| RFT (RL start) |")[1:] == [
      "10", "0.300 [0.108, 0.603]", stats.wilson(4.5, 10).text()]
  assert report.INTERVAL_NOTE in text


def test_report_paired_comparisons_and_verdicts(tmp_path, plots):
  summaries = _pipeline_workdir(str(tmp_path), per_problem=True)
  text = open(report.write(str(tmp_path), summaries, {}, {}), encoding="utf-8").read()
  assert "## Paired comparisons" in text
  # Same outcome on all 40 problems: the interval is +-z^2/(n + z^2) = +-0.0876.
  row = _table_row(text, "| PAV beam search vs ORM best-of-N, N=4 |")
  assert row[1] == "40" and row[4:] == ["+0.000 [-0.088, +0.088]", "no difference detected"]
  # 12 gains, no loss of 40.
  row = _table_row(text, "| PAV-as-ORM vs ORM best-of-N, N=4 |")
  diff = stats.paired_difference([1] * 20 + [0] * 20, [1] * 8 + [0] * 32)
  assert row[4:] == [diff.text(3, signed=True), "ahead"] and diff.low > 0
  # All 10 right vs 3 of 10 right, the same problems.
  row = _table_row(text, "| PAV-RL vs ORM-RL (greedy) |")
  diff = stats.paired_difference([1] * 10, [1] * 3 + [0] * 7)
  assert row[4:] == [diff.text(3, signed=True), "ahead"]
  # ORM-RL ends where it started, problem by problem: +-z^2/(10 + z^2) = +-0.278.
  row = _table_row(text, "| ORM-RL vs its start (RFT; greedy) |")
  assert row[4:] == ["+0.000 [-0.278, +0.278]", "no difference detected"]
  # RFT gains 2 of 8 over SFT: McNemar's 2^2/2 = 2 < 3.84, so no difference.
  row = _table_row(text, "| RFT vs SFT |")
  assert row[1] == "8" and row[5] == "no difference detected"
  assert "Q^pi beam" not in text.split("## Paired comparisons")[1].split("## ")[0]  # not run


def test_report_problem_lists_that_differ_are_not_paired(tmp_path, plots):
  summaries = _pipeline_workdir(str(tmp_path), per_problem=True)
  summaries["rl_outcome"]["eval"]["problem_uids"] = _uids(9) + ["test-0"]
  text = open(report.write(str(tmp_path), summaries, {}, {}), encoding="utf-8").read()
  row = _table_row(text, "| PAV-RL vs ORM-RL (greedy) |")
  assert row[4:] == ["+0.700 (point only)", "n/a (unpaired: not the same problems)"]


def test_report_of_an_older_workdir_without_per_problem_outcomes(tmp_path, plots):
  summaries = _pipeline_workdir(str(tmp_path), per_problem=False)
  text = open(report.write(str(tmp_path), summaries, {}, {}), encoding="utf-8").read()
  # Intervals from accuracy and n alone: n from the reason counts (SFT), the search's
  # problem count, the RL stage's sample.num_eval.
  assert _table_row(text, "| SFT |")[1:4] == ["0.250", "[0.071, 0.591]", "8"]
  assert _table_row(text, "| ORM best-of-N, N=4 |")[1:4] == ["0.200", "[0.105, 0.348]", "40"]
  assert _table_row(text, "| ORM-RL (outcome reward), 4 iterations |")[1:4] == [
      "0.300", "[0.108, 0.603]", "10"]
  for start, delta in (("| PAV beam search vs ORM best-of-N, N=4 |", "+0.000"),
                       ("| PAV-RL vs ORM-RL (greedy) |", "+0.700")):
    row = _table_row(text, start)
    assert row[1] == "40/40" or row[1] == "10/10"
    assert row[4:] == [f"{delta} (point only)", "n/a (unpaired: per-problem outcomes not stored)"]
  assert "| ahead |" not in text and "| behind |" not in text


def test_report_plots_draw_95_bands(tmp_path, plots):
  summaries = _pipeline_workdir(str(tmp_path), per_problem=True)
  report.write(str(tmp_path), summaries, {}, {})
  series, bands = plots["rl_accuracy.png"]
  assert series["rl_outcome"] == [(0, 0.3), (4, 0.3)]
  w = stats.wilson(3, 10)
  assert bands["rl_outcome"] == [(0, w.low, w.high), (4, w.low, w.high)]
  assert bands["rl_pav"][-1] == (4, stats.wilson(10, 10).low, 1.0)
  series, bands = plots["search_accuracy_vs_n.png"]
  w = stats.wilson(8, 40)
  assert bands["ORM best-of-N"][-1] == (4, w.low, w.high)
  assert set(bands) == set(series) == {"ORM best-of-N", "PAV-as-ORM best-of-N", "PAV beam search"}
  _, bands = plots["pass_at_n.png"]
  assert bands["ORM-RL"] == [(n, stats.wilson(k, 10).low, stats.wilson(k, 10).high)
                             for n, k in ((1, 3), (2, 4))]


def test_uninformative_verifier_line_names_its_prefixes_and_the_missing_interval():
  (line,) = report.uninformative_verifiers({"PRM-Q": {"mse": 0.35, "constant/mse": 0.19,
                                                     "num_prefixes": 120}})
  assert "on 120 held-out prefixes" in line and "no interval" in line


def test_efficiency_section_names_the_target_interval():
  eff = {"bon:pav": {"target_accuracy": 0.2, "speedup": 4.0, "reference_rises": True}}
  target = report.measure(0.2, per_problem=[1] * 8 + [0] * 32)
  lines = report.efficiency_section({"efficiency_vs_orm": eff}, target)
  (line,) = [l for l in lines if l.startswith("The target")]
  assert "0.200 [0.105, 0.348] (n=40)" in line and "not a tested difference" in line


def test_per_problem_outcomes_feed_a_paired_comparison():
  """evaluation.per_problem_outcomes: each problem's uid and mean reward, in order; what
  report.eval_measure pairs on."""
  from pavjax import evaluation  # pylint: disable=g-import-not-at-top
  from pavjax.tasks import base  # pylint: disable=g-import-not-at-top
  right, wrong = base.Outcome(1.0, "correct"), base.Outcome(0.0, "wrong")
  problems = [base.Problem(uid=f"p{i}", prompt="q", steps=("a",), answer="1") for i in range(3)]
  resp = lambda p, o: evaluation.Response(p, [1], [0.0], True, o)
  groups = [[resp(problems[0], right)], [resp(problems[1], wrong)],
            [resp(problems[2], right), resp(problems[2], wrong)]]  # two samples: mean 0.5
  rec = evaluation.per_problem_outcomes(groups)
  assert rec == {"problem_uids": ["p0", "p1", "p2"], "per_problem": [1.0, 0.0, 0.5]}
  m = report.eval_measure({"accuracy": 0.5, **rec})
  assert m.interval == stats.mean_interval([1.0, 0.0, 0.5]) and m.uids == ("p0", "p1", "p2")


def test_a_verifier_whose_gain_interval_covers_zero_is_flagged_with_it():
  gain = {"constant_gain": 0.01, "constant_gain/low": -0.02, "constant_gain/high": 0.04,
          "constant_gain/n": 30}
  (line,) = report.uninformative_verifiers(
      {"PRM-Q": {"mse": 0.18, "constant/mse": 0.19, **gain},  # point ahead, interval not
       "ORM": {"mse": 0.10, "constant/mse": 0.19, **gain, "constant_gain/low": 0.05}})
  assert "PRM-Q does not beat a constant" in line
  assert "+0.0100 [-0.0200, +0.0400] per problem over 30 problems" in line


def test_each_beam_width_meets_the_cheapest_orm_budget_that_spends_at_least_its_flops():
  curves = {"bon:orm": [{"n": n, "accuracy": 0.1, "flops": n * 1e6} for n in (1, 2, 4, 8)],
            "pav_beam": [{"n": 2, "accuracy": 0.5, "flops": 3e6},
                         {"n": 4, "accuracy": 0.6, "flops": 8e6},
                         {"n": 8, "accuracy": 0.7, "flops": 9e6}]}  # dearer than ORM's best
  per = {("bon:orm", 4): [0] * 9 + [1], ("bon:orm", 8): [0] * 9 + [1],
         ("pav_beam", 2): [1] * 5 + [0] * 5, ("pav_beam", 4): [1] * 6 + [0] * 4}
  rows = report.equal_compute_comparisons(curves, per, 10)
  assert [r[0] for r in rows] == [
      "PAV beam N=2 (3e+06 FLOPs) vs ORM best-of-4 (4e+06 FLOPs)",
      "PAV beam N=4 (8e+06 FLOPs) vs ORM best-of-8 (8e+06 FLOPs)"]
  assert rows[1][1].per_problem == tuple([1.0] * 6 + [0.0] * 4)


def test_claims_table_says_shown_only_where_the_interval_excludes_the_null():
  sib = {"siblings/parent_pair_accuracy": 0.55, "siblings/parent_pair_accuracy/low": 0.45,
         "siblings/parent_pair_accuracy/high": 0.65, "siblings/parent_pair_accuracy/n": 40}
  summaries = {
      "verifier_q": {"eval": {"constant_gain": 0.05, "constant_gain/low": 0.02,
                              "constant_gain/high": 0.08, "constant_gain/n": 64, **sib}},
      "verifier_orm": {"eval": {"constant_gain": -0.05, "constant_gain/low": -0.08,
                                "constant_gain/high": -0.02, "constant_gain/n": 64}}}
  beam, orm = [1] * 12 + [0] * 28, [1] * 2 + [0] * 38  # 10 gains, no loss of 40
  equal = [("PAV beam N=4 vs ORM best-of-16", report.measure(0.3, per_problem=beam),
            report.measure(0.05, per_problem=orm))]
  rl = (report.measure(0.3, per_problem=[1] * 3 + [0] * 7),
        report.measure(0.3, per_problem=[0] * 7 + [1] * 3))  # 3 gains, 3 losses
  text = "\n".join(report.claims_section(summaries, rl, equal))
  verdict = lambda start: _table_row(text, start)[-1]
  assert verdict("| the PRM-Q beats a constant") == "**shown**"
  assert verdict("| the ORM beats a constant") == "contradicted"
  # A point estimate above chance (0.55) whose interval covers 0.5 is not shown.
  assert verdict("| the PRM-Q orders sibling steps") == "not shown (no difference detected)"
  row = _table_row(text, "| PAV beam search beats ORM best-of-N")
  assert row[2] == stats.paired_difference(beam, orm).text(3) and row[4] == "**shown**"
  assert verdict("| PAV-RL beats outcome-RL") == "not shown (no difference detected)"
  assert report.claims_section({}, None, []) == []


def test_rl_run_averages_pair_the_runs_over_their_shared_evaluations():
  u = _uids(4)
  row = lambda step, per, uids=u: {"step": step, "per_problem": per, "problem_uids": uids}
  pav = [row(0, [0, 0, 0, 1]), row(2, [1, 0, 0, 1]), row(3, [1, 1, 1, 1]),
         row(4, [1, 1, 0, 1])]
  outcome = [row(0, [0, 0, 0, 1]), row(2, [0, 0, 0, 1]), row(4, [1, 0, 0, 0])]
  a, b, steps = report.rl_run_averages(pav, outcome)
  # Step 0 (the shared start) and step 3 (PAV-RL's alone) are left out: steps 2 and 4.
  assert steps == [2, 4]
  assert a.per_problem == (1.0, 0.5, 0.0, 1.0) and b.per_problem == (0.5, 0.0, 0.0, 0.5)
  assert a.accuracy == 0.625 and a.uids == tuple(u)
  diff, word = report.paired(a, b)
  assert diff.estimate == 0.375 and diff == stats.paired_difference(
      [1, 0.5, 0, 1], [0.5, 0, 0, 0.5])
  # Different problems at a shared step, or no shared step after the start: no pairing.
  assert report.rl_run_averages(pav, outcome[:2] + [row(4, [1, 0, 0, 0], _uids(5)[1:])]) is None
  assert report.rl_run_averages(pav[:1], outcome) is None


def test_report_claims_the_rl_curve_comparison_from_eval_outcomes(tmp_path, plots):
  summaries = _pipeline_workdir(str(tmp_path), per_problem=True)
  u = _uids(10)
  for name, per in (("rl_pav", [[1] * 6 + [0] * 4, [1] * 10]),
                    ("rl_outcome", [[1] * 3 + [0] * 7, [1] * 3 + [0] * 7])):
    _write(os.path.join(str(tmp_path), name, "eval_outcomes.jsonl"),
           [{"step": s, "per_problem": p, "problem_uids": u} for s, p in zip((2, 4), per)])
  text = open(report.write(str(tmp_path), summaries, {}, {}), encoding="utf-8").read()
  label = "accuracy averaged over 2 evaluations (iterations 2-4)"
  diff = stats.paired_difference([1] * 3 + [1] * 3 + [0.5] * 4, [1] * 3 + [0] * 7)
  row = _table_row(text, f"| PAV-RL vs ORM-RL, {label} |")
  assert row[1] == "10" and row[4:] == [diff.text(3, signed=True), "ahead"]
  row = _table_row(text, "| PAV-RL learns sooner than outcome-RL")
  assert row[1] == f"{label}: difference" and row[2] == diff.text(3) and row[4] == "**shown**"
  # Without the files (an older workdir) the claim is left out, not guessed.
  for name in ("rl_pav", "rl_outcome"):
    os.remove(os.path.join(str(tmp_path), name, "eval_outcomes.jsonl"))
  text = open(report.write(str(tmp_path), summaries, {}, {}), encoding="utf-8").read()
  assert "learns sooner" not in text
