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
