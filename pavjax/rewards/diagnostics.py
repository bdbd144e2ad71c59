"""Host-side verifier diagnostics: calibration and ranking among sibling steps (numpy).

These run on fetched arrays between steps or after evaluation, where shapes vary
(groups of siblings) and exact tie handling matters more than speed, so they
are numpy, not jnp. Rank statistics handle ties the way scipy's defaults do
(average ranks for Spearman, tau-b for Kendall) without depending on scipy.

Why siblings: steps that share a parent prefix share V^mu(parent), so ordering
them by predicted advantage is exactly what beam search needs (arXiv
2410.08146, Sec. 3, Fig. 2a); ranking steps across parents mixes in the parents' values.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class CalibrationTable(NamedTuple):
  """Reliability table of predicted probabilities against empirical outcomes.

  Attributes:
    bin_low: [num_bins] lower bin edges.
    bin_high: [num_bins] upper bin edges (the last bin includes 1.0).
    count: [num_bins] number (or total weight) of entries per bin.
    mean_pred: [num_bins] mean prediction per bin (NaN for empty bins).
    mean_target: [num_bins] mean target per bin (NaN for empty bins).
    ece: expected calibration error, sum_b count_b / total * |mean_pred - mean_target|.
  """

  bin_low: np.ndarray
  bin_high: np.ndarray
  count: np.ndarray
  mean_pred: np.ndarray
  mean_target: np.ndarray
  ece: float


def calibration_table(pred: np.ndarray, target: np.ndarray, num_bins: int = 10,
                      mask: np.ndarray | None = None) -> CalibrationTable:
  """Bins predictions in equal-width bins on [0, 1] and compares with targets.

  Args:
    pred: [N] predicted probabilities (e.g. sigmoid of verifier logits).
    target: [N] empirical values: Q_hat or 0/1 outcomes.
    num_bins: number of bins.
    mask: optional [N] bool/0-1 weights; entries with weight 0 are ignored.

  Returns:
    A `CalibrationTable`; `ece` is NaN when nothing is counted.
  """
  pred = np.asarray(pred, np.float64).reshape(-1)
  target = np.asarray(target, np.float64).reshape(-1)
  w = np.ones_like(pred) if mask is None else np.asarray(mask, np.float64).reshape(-1)
  edges = np.linspace(0.0, 1.0, num_bins + 1)
  # Bin i holds [edge_i, edge_{i+1}); clipping puts 1.0 (and anything above) in the last bin.
  idx = np.clip(np.floor(np.clip(pred, 0.0, 1.0) * num_bins).astype(np.int64), 0, num_bins - 1)
  count = np.bincount(idx, weights=w, minlength=num_bins)
  sum_pred = np.bincount(idx, weights=w * pred, minlength=num_bins)
  sum_target = np.bincount(idx, weights=w * target, minlength=num_bins)
  with np.errstate(invalid="ignore", divide="ignore"):
    mean_pred = np.where(count > 0, sum_pred / count, np.nan)
    mean_target = np.where(count > 0, sum_target / count, np.nan)
  total = count.sum()
  nonempty = count > 0
  ece = (float(np.sum(count[nonempty] * np.abs(mean_pred[nonempty] - mean_target[nonempty]))
               / total) if total > 0 else float("nan"))
  return CalibrationTable(edges[:-1], edges[1:], count, mean_pred, mean_target, ece)


def average_ranks(x: np.ndarray) -> np.ndarray:
  """1-based ranks of x with ties given their average rank ([1, 2, 2] -> [1, 2.5, 2.5])."""
  x = np.asarray(x).reshape(-1)
  _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
  start = np.cumsum(counts) - counts  # 0-based rank of each distinct value's first copy
  return (start + (counts + 1) / 2.0)[inverse.reshape(-1)]


def spearman(x: np.ndarray, y: np.ndarray) -> float:
  """Spearman rank correlation (Pearson correlation of average ranks).

  Returns NaN when it is undefined: fewer than 2 entries or a constant input.
  """
  x = np.asarray(x, np.float64).reshape(-1)
  y = np.asarray(y, np.float64).reshape(-1)
  if x.size != y.size:
    raise ValueError(f"spearman needs equal lengths, got {x.size} and {y.size}")
  if x.size < 2:
    return float("nan")
  rx = average_ranks(x) - (x.size + 1) / 2.0
  ry = average_ranks(y) - (y.size + 1) / 2.0
  denom = np.sqrt(np.sum(rx * rx) * np.sum(ry * ry))
  return float(np.sum(rx * ry) / denom) if denom > 0 else float("nan")


def kendall_tau(x: np.ndarray, y: np.ndarray) -> float:
  """Kendall's tau-b: (C - D) / sqrt((n0 - n_x)(n0 - n_y)), ties in either input allowed.

  O(N^2) memory and time: meant for sibling groups and diagnostic sets of at
  most a few thousand entries. Returns NaN when undefined (N < 2 or a constant input).
  """
  x = np.asarray(x, np.float64).reshape(-1)
  y = np.asarray(y, np.float64).reshape(-1)
  if x.size != y.size:
    raise ValueError(f"kendall_tau needs equal lengths, got {x.size} and {y.size}")
  n = x.size
  if n < 2:
    return float("nan")
  upper = np.triu(np.ones((n, n), bool), k=1)  # each unordered pair once
  sx = np.sign(x[None, :] - x[:, None])[upper]
  sy = np.sign(y[None, :] - y[:, None])[upper]
  n0 = n * (n - 1) / 2.0
  ties_x = np.sum(sx == 0)
  ties_y = np.sum(sy == 0)
  denom = np.sqrt((n0 - ties_x) * (n0 - ties_y))
  return float(np.sum(sx * sy) / denom) if denom > 0 else float("nan")


def sign_accuracy(pred: np.ndarray, true: np.ndarray, mask: np.ndarray | None = None,
                  tol: float = 0.0) -> float:
  """Fraction of steps whose predicted advantage has the sign of the true one.

  Steps with |true| <= tol have no sign to get right and are skipped; a
  prediction of exactly 0 counts as wrong.

  Args:
    pred: [N] predicted advantages.
    true: [N] reference advantages (exact, or from MC estimates).
    mask: optional [N] bool, which steps count.
    tol: dead zone around 0 for the reference (e.g. a few MC standard errors).

  Returns:
    The accuracy, NaN if no step counts.
  """
  pred = np.asarray(pred, np.float64).reshape(-1)
  true = np.asarray(true, np.float64).reshape(-1)
  keep = np.abs(true) > tol
  if mask is not None:
    keep &= np.asarray(mask, bool).reshape(-1)
  if not keep.any():
    return float("nan")
  return float(np.mean(np.sign(pred[keep]) == np.sign(true[keep])))


def sibling_metrics(pred: np.ndarray, true: np.ndarray, parent_ids: np.ndarray,
                    mask: np.ndarray | None = None, step_ids: np.ndarray | None = None
                    ) -> dict[str, float]:
  """How well predicted values order steps that share a parent prefix.

  Among siblings, Q and A differ by the parent's value, so either orders them;
  pass Q when the reference comes from Monte-Carlo rollouts, where each copy of
  a parent prefix carries its own noisy estimate and differencing adds that noise.

  Args:
    pred: [N] predicted Q (or advantages) of each step.
    true: [N] reference values (exact, or MC estimates).
    parent_ids: [N] int, id of each step's parent prefix; equal ids are siblings.
    mask: optional [N] bool, which steps count.
    step_ids: optional [N] int, id of each step's own prefix. Rows with equal
      (parent, step) ids are one candidate written by several seeds: they are
      merged (mean of pred and of true) before ranking. Without this, copies of
      one step are a guaranteed predicted tie whose MC targets differ by noise.

  Returns:
    A flat dict:
      "spearman", "kendall": mean over groups where the statistic is defined
        (>= 2 distinct siblings, neither side constant); NaN if no group qualifies.
      "pair_accuracy": over all pairs of distinct siblings with different true
        values, the fraction whose predicted order agrees (a predicted tie
        counts as wrong).
      "num_groups": number of parents with >= 2 distinct counted children.
  """
  return sibling_metrics_with_fractions(pred, true, parent_ids, mask, step_ids)[0]


def sibling_metrics_with_fractions(pred: np.ndarray, true: np.ndarray, parent_ids: np.ndarray,
                                   mask: np.ndarray | None = None,
                                   step_ids: np.ndarray | None = None
                                   ) -> tuple[dict[str, float], np.ndarray]:
  """`sibling_metrics`, and [G] per parent the fraction of its sibling pairs ordered right.

  One fraction per parent with at least one pair of distinct true values, from the
  same pass over the groups. Pairs of one parent share children, so they are not
  independent draws; parents are closer to it, which is why an interval for "orders
  siblings better than chance" is taken over these fractions rather than over pooled
  pairs.
  """
  pred = np.asarray(pred, np.float64).reshape(-1)
  true = np.asarray(true, np.float64).reshape(-1)
  parent_ids = np.asarray(parent_ids).reshape(-1)
  step_ids = (np.arange(pred.size) if step_ids is None
              else np.asarray(step_ids).reshape(-1))
  keep = np.ones(pred.shape, bool) if mask is None else np.asarray(mask, bool).reshape(-1)
  rhos, taus, fractions = [], [], []
  agree = pairs = 0
  num_groups = 0
  for parent in np.unique(parent_ids[keep]):
    members = np.flatnonzero(keep & (parent_ids == parent))
    _, which, counts = np.unique(step_ids[members], return_inverse=True, return_counts=True)
    if counts.size < 2:
      continue
    num_groups += 1
    p = np.bincount(which, pred[members]) / counts
    t = np.bincount(which, true[members]) / counts
    rho, tau = spearman(p, t), kendall_tau(p, t)
    if not np.isnan(rho):
      rhos.append(rho)
    if not np.isnan(tau):
      taus.append(tau)
    upper = np.triu(np.ones((counts.size,) * 2, bool), k=1)
    dt = np.sign(t[None, :] - t[:, None])[upper]
    dp = np.sign(p[None, :] - p[:, None])[upper]
    group_pairs = int(np.sum(dt != 0))
    group_agree = int(np.sum((dt != 0) & (dp == dt)))
    pairs, agree = pairs + group_pairs, agree + group_agree
    if group_pairs:
      fractions.append(group_agree / group_pairs)
  return {
      "spearman": float(np.mean(rhos)) if rhos else float("nan"),
      "kendall": float(np.mean(taus)) if taus else float("nan"),
      "pair_accuracy": agree / pairs if pairs else float("nan"),
      "num_groups": num_groups,
  }, np.asarray(fractions, np.float64)
