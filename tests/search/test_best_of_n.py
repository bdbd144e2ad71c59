"""Best-of-N rules, votes and compute ratios against hand counts and closed forms."""

import math

import numpy as np
import pytest

from pavjax.search import best_of_n as bon
from pavjax.search import compute


def test_aggregate_steps_on_hand_arrays():
  s = np.array([[0.9, 0.2, 0.6], [0.5, 0.4, 0.0], [0.3, 0.0, 0.0]])
  m = np.array([[1, 1, 1], [1, 1, 0], [0, 0, 0]], bool)
  np.testing.assert_allclose(bon.aggregate_steps(s, m, "min"), [0.2, 0.4, 0.0])
  np.testing.assert_allclose(bon.aggregate_steps(s, m, "last"), [0.6, 0.4, 0.0])
  np.testing.assert_allclose(bon.aggregate_steps(s, m, "prod"), [0.9 * 0.2 * 0.6, 0.2, 0.0])
  with pytest.raises(ValueError, match="aggregate 'mean'"):
    bon.aggregate_steps(s, m, "mean")


def test_answer_ids_group_equal_answers_per_problem():
  ids = bon.answer_ids([["7", None, "3", "7"], ["3", "3", None, None]])
  np.testing.assert_array_equal(ids, [[0, -1, 1, 0], [0, 0, -1, -1]])


def test_majority_and_weighted_votes_with_ties_and_missing_answers():
  answers = np.array([
      [0, 1, 1, 0, 2],     # tie 0 vs 1 (2 votes each): 0 is seen first -> index 0
      [-1, 2, 1, 2, -1],   # answer 2 wins -> its first member, index 1
      [-1, -1, -1, -1, -1],  # nobody answers -> the first response
  ])
  np.testing.assert_array_equal(bon.choose("majority", answers, None), [0, 1, 0])
  w = np.array([[0.1, 0.5, 0.5, 0.1, 0.9],   # totals: a0 0.2, a1 1.0, a2 0.9
                [0.9, 0.2, 0.7, 0.2, 0.9],   # a2 0.4 < a1 0.7 (no-answer weight ignored)
                [0.1, 0.2, 0.3, 0.4, 0.5]])
  np.testing.assert_array_equal(bon.choose("weighted", answers, w), [1, 2, 0])
  np.testing.assert_array_equal(bon.choose("bon", answers, w), [4, 0, 4])


def _pool(correct, scores):
  p, m = correct.shape
  return bon.Pool(correct=correct, answers=np.tile(np.arange(m), (p, 1)),
                  scores={"v": scores}, policy_tokens=np.full((p, m), 5),
                  prompt_tokens=np.full(p, 3))


def test_full_pool_accuracy_and_counters_by_hand():
  correct = np.array([[0, 1, 0, 0], [0, 0, 0, 0], [1, 0, 1, 0]], bool)
  scores = np.array([[0.1, 0.9, 0.3, 0.2], [0.5, 0.1, 0.2, 0.3], [0.2, 0.1, 0.9, 0.3]])
  res = bon.accuracy_curves(_pool(correct, scores), [4])
  assert res["pass"][0]["accuracy"] == pytest.approx(2 / 3)
  assert res["bon:v"][0]["accuracy"] == pytest.approx(2 / 3)
  # Every answer differs, so the vote falls to the first response of each problem.
  assert res["majority"][0]["per_problem"] == [0.0, 0.0, 1.0]
  row = res["bon:v"][0]
  assert (row["policy_tokens"], row["prefill_tokens"], row["verifier_tokens"]) == (20, 3, 32)
  assert res["majority"][0]["verifier_tokens"] == 0.0


def test_subset_estimates_match_closed_forms():
  rng = np.random.default_rng(0)
  m, n = 16, 4
  correct = rng.random((6, m)) < 0.3
  scores = rng.random((6, m))
  res = bon.accuracy_curves(_pool(correct, scores), [n], num_subsets=4000, seed=1)
  # Pass@n: 1 - C(m - c, n) / C(m, n) for c correct of m.
  c = correct.sum(1)
  exact_pass = np.mean([1 - math.comb(m - k, n) / math.comb(m, n) for k in c])
  # Best-of-n: the response ranked r-th (0 = best) is chosen iff it is in the subset
  # and none ranked above it is: C(m - 1 - r, n - 1) / C(m, n).
  exact_bon = []
  for i in range(6):
    order = np.argsort(-scores[i])
    exact_bon.append(sum(math.comb(m - 1 - r, n - 1) / math.comb(m, n) * correct[i, j]
                         for r, j in enumerate(order)))
  se = 0.5 / math.sqrt(4000 * 6)
  assert abs(res["pass"][0]["accuracy"] - exact_pass) < 5 * se
  assert abs(res["bon:v"][0]["accuracy"] - np.mean(exact_bon)) < 5 * se


def test_pool_rejects_mismatched_shapes():
  with pytest.raises(ValueError, match=r"Pool.scores\[v\] has shape"):
    bon.Pool(correct=np.zeros((2, 3), bool), answers=np.zeros((2, 3), int),
             scores={"v": np.zeros((2, 4))}, policy_tokens=np.zeros((2, 3)),
             prompt_tokens=np.zeros(2))


def test_flops_and_compute_to_reach():
  assert compute.flops({"prefill_tokens": 10, "policy_tokens": 90, "verifier_tokens": 50},
                       policy_params=1000, verifier_params=10) == 2 * (1000 * 100 + 10 * 50)
  curve = [(100.0, 0.2), (400.0, 0.6), (1600.0, 0.7)]
  # 0.4 lies halfway from 0.2 to 0.6: halfway in log-compute between 100 and 400.
  assert compute.compute_to_reach(curve, 0.4) == pytest.approx(200.0)
  assert compute.compute_to_reach(curve, 0.1) == 100.0
  assert compute.compute_to_reach(curve, 0.9) is None
  ref = [(50.0, 0.1), (800.0, 0.4)]
  out = compute.efficiency(ref, curve)
  assert out["target_accuracy"] == 0.4
  assert out["compute_ratio"] == pytest.approx(200.0 / 800.0)
  assert out["speedup"] == pytest.approx(4.0)
  assert compute.efficiency(curve, ref)["speedup"] is None  # 0.7 is never reached
  assert out["reference_rises"]
  falling = [(50.0, 0.5), (800.0, 0.4)]  # its cheap point already beats its final one
  assert not compute.efficiency(falling, curve)["reference_rises"]
