"""Calibration table and rank statistics among sibling steps, against hand values."""

import numpy as np

from pavjax import rewards


def test_calibration_table_hand_values():
  pred = np.array([0.05, 0.15, 0.12, 0.95, 1.0, 0.5])
  target = np.array([0.0, 0.0, 1.0, 1.0, 1.0, 0.0])
  mask = np.array([1, 1, 1, 1, 1, 0])
  table = rewards.calibration_table(pred, target, num_bins=10, mask=mask)
  np.testing.assert_allclose(table.bin_low[[0, 9]], [0.0, 0.9])
  np.testing.assert_allclose(table.bin_high[[0, 9]], [0.1, 1.0])
  np.testing.assert_array_equal(table.count, [1, 2, 0, 0, 0, 0, 0, 0, 0, 2])
  np.testing.assert_allclose(table.mean_pred[[0, 1, 9]], [0.05, 0.135, 0.975])
  np.testing.assert_allclose(table.mean_target[[0, 1, 9]], [0.0, 0.5, 1.0])
  assert np.all(np.isnan(table.mean_pred[2:9]))
  np.testing.assert_allclose(table.ece, (0.05 + 2 * 0.365 + 2 * 0.025) / 5)
  assert np.isnan(rewards.calibration_table(pred, target, mask=np.zeros(6)).ece)


def test_rank_correlations_with_ties_hand_values():
  x, y = [1, 2, 3, 4, 5], [5, 6, 7, 8, 7]
  np.testing.assert_allclose(rewards.average_ranks(y), [1, 2, 3.5, 5, 3.5])
  # Average ranks of y are [1, 2, 3.5, 5, 3.5]: sum dx dy = 8, sum dx^2 = 10, sum dy^2 = 9.5.
  np.testing.assert_allclose(rewards.spearman(x, y), 8 / np.sqrt(95))
  # 8 concordant, 1 discordant, 1 pair tied in y only: tau_b = 7 / sqrt(10 * 9).
  np.testing.assert_allclose(rewards.kendall_tau(x, y), 7 / np.sqrt(90))
  # Ties on both sides.
  np.testing.assert_allclose(rewards.spearman([1, 1, 2, 3], [1, 2, 2, 3]), 3.75 / 4.5)
  np.testing.assert_allclose(rewards.kendall_tau([1, 1, 2, 3], [1, 2, 2, 3]), 4 / 5)
  np.testing.assert_allclose(rewards.spearman(x, x[::-1]), -1.0)
  np.testing.assert_allclose(rewards.kendall_tau(x, x[::-1]), -1.0)
  assert np.isnan(rewards.spearman([1, 2, 3], [4, 4, 4]))
  assert np.isnan(rewards.kendall_tau([1], [2]))


def test_sign_accuracy_hand_values():
  pred = np.array([0.2, 0.1, 0.0, -0.4, 0.3])
  true = np.array([0.1, -0.2, 0.3, -0.1, 0.01])
  np.testing.assert_allclose(rewards.sign_accuracy(pred, true), 3 / 5)
  np.testing.assert_allclose(rewards.sign_accuracy(pred, true, tol=0.05), 2 / 4)
  np.testing.assert_allclose(rewards.sign_accuracy(pred, true, mask=[1, 1, 0, 0, 0]), 1 / 2)
  assert np.isnan(rewards.sign_accuracy(pred, np.zeros(5)))


def test_sibling_metrics_hand_values():
  # Parent 0 has three children, parent 1 two, parent 2 one (no sibling: skipped);
  # the masked step would flip parent 1's order if it counted.
  true = np.array([0.1, -0.2, 0.3, 0.05, -0.1, 0.4, 0.9])
  pred = np.array([0.2, 0.1, 0.0, 0.1, -0.3, -0.5, -9.0])
  parents = np.array([0, 0, 0, 1, 1, 2, 1])
  mask = np.array([1, 1, 1, 1, 1, 1, 0], bool)
  out = rewards.sibling_metrics(pred, true, parents, mask)
  # Parent 0: true ranks [2, 1, 3], predicted [3, 2, 1]: rho = -1/2, tau = (1 - 2) / 3.
  # Parent 1: one concordant pair: rho = tau = 1.
  np.testing.assert_allclose(out["spearman"], (-0.5 + 1.0) / 2)
  np.testing.assert_allclose(out["kendall"], (-1 / 3 + 1.0) / 2)
  np.testing.assert_allclose(out["pair_accuracy"], 2 / 4)
  assert out["num_groups"] == 2
  # Among siblings, predicted Q orders steps like predicted A (shared parent value).
  shifted = rewards.sibling_metrics(pred + np.array([5, 5, 5, -1, -1, 0, 0]), true, parents, mask)
  for key in ("spearman", "kendall", "pair_accuracy"):
    np.testing.assert_allclose(shifted[key], out[key])


def test_sibling_copies_of_one_step_are_merged_not_counted_as_ties():
  # Parent 0: step 7 written by three seeds (MC targets 0.75, 0.25, 0.5 -> mean
  # 0.5, one prediction 0.6), step 8 once (target 0, prediction 0.3).
  pred = np.array([0.6, 0.6, 0.6, 0.3])
  true = np.array([0.75, 0.25, 0.5, 0.0])
  parents = np.zeros(4, np.int64)
  steps = np.array([7, 7, 7, 8])
  merged = rewards.sibling_metrics(pred, true, parents, step_ids=steps)
  assert merged["pair_accuracy"] == 1.0 and merged["num_groups"] == 1
  # Unmerged, the copies' noise makes pairs with a guaranteed predicted tie.
  assert rewards.sibling_metrics(pred, true, parents)["pair_accuracy"] == 3 / 6
  # A parent whose children are all copies of one step offers no choice.
  alone = rewards.sibling_metrics(pred[:3], true[:3], parents[:3], step_ids=steps[:3])
  assert alone["num_groups"] == 0 and np.isnan(alone["pair_accuracy"])


def test_sibling_pair_fractions_one_value_per_parent_with_a_pair():
  # Parent 0: three children ordered right (3 of 3 pairs). Parent 1: one pair, wrong.
  # Parent 2: two children with equal true values, so no pair: left out.
  pred = np.array([0.1, 0.5, 0.9, 0.2, 0.3, 0.4, 0.6])
  true = np.array([0.0, 0.5, 1.0, 0.4, 0.1, 0.3, 0.3])
  parents = np.array([0, 0, 0, 1, 1, 2, 2])
  metrics, fractions = rewards.sibling_metrics_with_fractions(pred, true, parents)
  np.testing.assert_array_equal(fractions, [1.0, 0.0])
  # Pooled over pairs it is 3 of 4; the per-parent mean weighs parents equally.
  assert metrics["pair_accuracy"] == 0.75
  assert metrics == rewards.sibling_metrics(pred, true, parents)
