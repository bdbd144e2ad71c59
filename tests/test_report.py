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
  assert "| rft | ran (fallback: initial policy kept) |" in text
  assert "no correct sample among 16: RFT kept the initial policy" in text
