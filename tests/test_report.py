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
