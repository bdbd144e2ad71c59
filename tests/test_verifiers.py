"""Held-out verifier metrics on a hand-built rollout dataset."""

import dataclasses

import numpy as np

from pavjax import stats
from pavjax import trajectories
from pavjax import verifiers


def _dataset():
  # Prompt [1, 2]; one-token steps. Seeds A and B both open with step 5, C with 6.
  tokens = np.array([[1, 2, 5, 7], [1, 2, 5, 8], [1, 2, 6, 7]], np.int32)
  data = trajectories.Trajectories(
      tokens=tokens, prompt_len=np.array([2, 2, 2], np.int32),
      length=np.array([4, 4, 4], np.int32),
      # Column 0 ends on the last prompt token, column h on step h's last token.
      prefix_ends=np.array([[1, 2, 3], [1, 2, 3], [1, 2, 3]], np.int32),
      outcome=np.array([1.0, 0.0, 0.0], np.float32), reason=np.zeros(3, np.int32),
      problem=np.zeros(3, np.int32), finished=np.ones(3, bool),
      # MC Q_hat of (question, after step 1, after step 2) per seed: the two
      # copies of prefix [1, 2, 5] got different estimates (0.75, 0.25).
      columns={"q_hat": np.array([[0.5, 0.75, 1.0], [0.25, 0.25, 0.0], [0.5, 0.0, 0.0]])})
  # A causal verifier gives equal prefixes equal scores.
  pred = np.array([[0.4, 0.6, 0.9], [0.4, 0.6, 0.2], [0.4, 0.3, 0.1]])
  return data, pred


def test_prefix_ids_name_equal_text_equally():
  data, _ = _dataset()
  assert trajectories.prefix_mask(data).all()
  ids = trajectories.prefix_ids(data)
  assert len(set(ids[:, 0])) == 1  # the question
  assert ids[0, 1] == ids[1, 1] != ids[2, 1]
  assert len(set(ids[:, 2])) == 3


def test_sibling_metrics_rank_distinct_steps_by_merged_q():
  data, pred = _dataset()
  out = verifiers.evaluate_predictions(pred, data)
  # Siblings of the question: step 5 (merged target 0.5, predicted 0.6) over
  # step 6 (0, 0.3): right. Siblings of [1, 2, 5]: 7 (1.0, 0.9) over 8 (0, 0.2):
  # right. [1, 2, 6] has one child. So 2 of 2 pairs, in 2 groups.
  assert out["siblings/pair_accuracy"] == 1.0
  assert out["siblings/num_groups"] == 2
  # Advantage signs (true A = 0 has no sign): A +,+; B 0,-; C -,0 -> 4 of 4.
  assert out["siblings/sign_accuracy"] == 1.0
  np.testing.assert_allclose(out["mse"], np.mean((pred - data["q_hat"]) ** 2))
  assert "constant/mse" not in out
  # The constant baseline over the same 9 prefixes, by hand: squared gaps from 0.5
  # of (0.5, 0.75, 1, 0.25, 0.25, 0, 0.5, 0, 0) sum to 1.1875.
  out = verifiers.evaluate_predictions(pred, data, prior=0.5)
  np.testing.assert_allclose(out["constant/mse"], 1.1875 / 9)


def test_constant_gain_and_parent_pair_accuracy_carry_intervals_over_their_units():
  data, pred = _dataset()
  data = dataclasses.replace(data, problem=np.array([0, 0, 1], np.int32))
  out = verifiers.evaluate_predictions(pred, data, prior=0.5)
  # Squared errors per row, by hand: verifier (0.0425, 0.185, 0.11), constant 0.5
  # (0.3125, 0.375, 0.5). Problem 0 holds rows 0-1 (6 prefixes), problem 1 row 2 (3).
  verifier = np.array([(0.0425 + 0.185) / 6, 0.11 / 3])
  constant = np.array([(0.3125 + 0.375) / 6, 0.5 / 3])
  want = stats.t_interval(constant - verifier)
  np.testing.assert_allclose(out["constant_gain"], np.mean(constant - verifier))
  np.testing.assert_allclose([out["constant_gain/low"], out["constant_gain/high"]],
                             [want.low, want.high])
  assert out["constant_gain/n"] == 2
  # Both sibling groups order their one pair right (see above): 2 parents at 1.0.
  wilson = stats.wilson(2, 2)
  assert out["siblings/parent_pair_accuracy"] == 1.0
  assert out["siblings/parent_pair_accuracy/n"] == 2
  np.testing.assert_allclose(out["siblings/parent_pair_accuracy/low"], wilson.low)
  # Without a prior there is no constant to beat, hence no gain.
  assert "constant_gain" not in verifiers.evaluate_predictions(pred, data)
