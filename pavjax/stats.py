"""Intervals for accuracies and for comparisons of methods: pure numpy, no model, no task.

Every accuracy a report prints carries its number of problems n and a 95% interval,
and every comparison of two methods is paired on the same problems (issue 19). What
is measured is a mean over problems of a per-problem score in [0, 1]: a 0/1 outcome
(greedy decoding, a beam's answer) or a fraction (best-of-N averaged over random
subsets of a pool, the share of correct samples of a problem).

One rule gives every interval: the **score interval of a mean**. A value m0 is in
the interval when the score test of "the mean is m0" does not reject it at 5%:
`|sum(x) - n m0| <= z sqrt(n V(m0))`, where V(m0) is the variance of one problem's
value under the maximum-likelihood distribution whose mean is m0. That
distribution lives on the values observed plus the two ends of the range ([0, 1]
for one method's scores, [-1, 1] for a per-problem difference a - b), so a mean
beyond what was observed is reachable. Its weights are the observed counts tilted
by one Lagrange multiplier (empirical-likelihood weights); an end of the range that
was not observed takes the mass the observed values cannot carry.

* For 0/1 outcomes of one method this is **Wilson's interval** (closed form, used as
  such). For a per-problem difference of two 0/1 outcomes it is the **score interval
  of the paired difference** (the support is {-1, 0, 1}: the discordant problems G
  won and L lost; the maximum-likelihood loss chance is the root of a quadratic,
  used as such); at m0 = 0 its test is McNemar's without continuity correction.
  Fractional scores take the general path (two nested 1-d root searches).
* Why this and not a paired bootstrap or the normal interval (mean +- z sd/sqrt(n)):
  it is deterministic (no resampling seed: the same outcomes give the same interval
  on every machine, up to float rounding far below the printed digits); it keeps a
  width when the methods agree on every problem (+-z^2/(n + z^2)) and at k = 0 or n,
  where the bootstrap and the normal interval shrink to a point; and it keeps its
  coverage when discordant problems are few, where the normal interval misses the
  true difference most of the time. tests/test_stats.py computes the exact coverage
  of both on 0/1 outcomes and simulates fractional scores with a fixed seed.
* From an accuracy and n alone (a workdir that kept no per-problem scores), the
  Wilson interval of k = accuracy * n: exact for 0/1 outcomes, conservative for
  fractional ones (a score in [0, 1] with mean p has variance at most p (1 - p)).
* A verdict from an interval: "ahead" when it lies above 0, "behind" below 0, and
  "no difference detected" when it covers 0 ("n/a" with no problems).
* Seeds: each seed's value, their mean, min, max and standard deviation, and a
  Student-t interval of the mean over seeds; two methods run on the same seeds are
  compared by the t interval of the per-seed differences.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Mapping, Sequence

import numpy as np

Z95 = 1.959963984540054  # the two-sided 95% quantile of the standard normal

AHEAD, BEHIND, NO_DIFFERENCE, NOT_AVAILABLE = "ahead", "behind", "no difference detected", "n/a"


@dataclasses.dataclass(frozen=True)
class Interval:
  """A point estimate, its 95% interval [low, high] and the sample size behind it.

  `estimate` is nan when n = 0 (nothing measured); the interval is then the whole range.
  """

  estimate: float
  low: float
  high: float
  n: int

  def covers(self, value: float) -> bool:
    return self.low <= value <= self.high

  def text(self, digits: int = 3, signed: bool = False) -> str:
    """'0.250 [0.102, 0.494]' ('+0.050 [-0.020, +0.120]' with `signed`; 'n/a' at n = 0)."""
    if self.n == 0 or not math.isfinite(self.estimate):
      return "n/a"
    f = (lambda x: f"{x:+.{digits}f}") if signed else (lambda x: f"{x:.{digits}f}")
    return f"{f(self.estimate)} [{f(self.low)}, {f(self.high)}]"

  def bounds(self, digits: int = 3, signed: bool = False) -> str:
    """'[0.102, 0.494]' alone ('n/a' at n = 0)."""
    return "n/a" if self.n == 0 else self.text(digits, signed).split(" ", 1)[1]


def _check_scores(scores, name: str) -> np.ndarray:
  s = np.asarray(scores, np.float64).reshape(-1)
  if not np.all(np.isfinite(s)) or np.any(s < 0.0) or np.any(s > 1.0):
    raise ValueError(f"{name}: per-problem scores must be finite and in [0, 1]")
  return s


def _root(fn, lo: float, hi: float, tol: float = 1e-13, iters: int = 200) -> float:
  """The point of [lo, hi] where the decreasing fn crosses 0 (fn(lo) > 0 >= fn(hi)).

  Regula falsi with the Illinois step (superlinear), bisecting while an end is infinite.
  """
  f_lo, f_hi, side = fn(lo), fn(hi), 0
  for _ in range(iters):
    if hi - lo <= tol:
      break
    if math.isfinite(f_lo) and math.isfinite(f_hi) and f_lo != f_hi:
      mid = hi - f_hi * (hi - lo) / (f_hi - f_lo)
      if not lo < mid < hi:
        mid = 0.5 * (lo + hi)
    else:
      mid = 0.5 * (lo + hi)
    f_mid = fn(mid)
    if f_mid == 0.0:
      return mid
    if f_mid > 0.0:
      lo, f_lo = mid, f_mid
      if side == 1:  # the same end moved twice: halve the other's weight (Illinois)
        f_hi *= 0.5
      side = 1
    else:
      hi, f_hi = mid, f_mid
      if side == -1:
        f_lo *= 0.5
      side = -1
  return 0.5 * (lo + hi)


def wilson(k: float, n: int, z: float = Z95) -> Interval:
  """Wilson score interval of a proportion: k successes of n (k may be fractional).

  The bounds solve (p_hat - p)^2 = z^2 p (1 - p) / n for p.
  """
  if n < 0 or not 0.0 <= k <= n:
    raise ValueError(f"wilson: need 0 <= k <= n, got k={k}, n={n}")
  if n == 0:
    return Interval(float("nan"), 0.0, 1.0, 0)
  z2 = z * z
  center = (k + z2 / 2.0) / (n + z2)
  half = z * math.sqrt(k * (n - k) / n + z2 / 4.0) / (n + z2)
  low = 0.0 if k == 0 else max(0.0, center - half)
  high = 1.0 if k == n else min(1.0, center + half)
  return Interval(k / n, low, high, int(n))


def proportion(accuracy: float, n: int, z: float = Z95) -> Interval:
  """Wilson interval of an accuracy measured on n problems (k = accuracy * n).

  For reports whose per-problem scores were not stored: the interval from the mean
  and n alone (conservative for fractional per-problem scores, see the module doc).
  """
  if n == 0:
    return wilson(0, 0, z)
  k = min(max(float(accuracy) * n, 0.0), float(n))
  return wilson(k, int(n), z)


# --- the score interval of a mean, on any values in a range [lo_end, hi_end] ----------------
def _tilted_variance(values: np.ndarray, counts: np.ndarray, mean: float, lo_end: float,
                     hi_end: float) -> float:
  """Variance of one value under the maximum-likelihood distribution with this mean.

  The distribution lives on the distinct observed `values` (with `counts`) and the
  two ends of the range. Maximizing sum(counts * log p) under sum(p) = 1 and
  sum(p v) = mean gives p_j = c_j / (n + lam (v_j - mean)) for observed values;
  an end that was not observed may take mass only where its own stationarity
  condition n + lam (end - mean) = 0 holds, so lam stays in
  [-n / (hi_end - mean), n / (mean - lo_end)], and an end takes the remaining mass
  when the moment equation has no root inside.
  """
  if not lo_end < mean < hi_end:
    return 0.0  # all mass on an end of the range
  n = float(counts.sum())
  x = values - mean
  lam_lo, lam_hi = -n / (hi_end - mean), n / (mean - lo_end)

  def moment(lam):  # sum_j p_j (v_j - mean): decreasing in lam (+-inf at an observed end)
    with np.errstate(divide="ignore", invalid="ignore"):
      return float(np.sum(counts * x / (n + lam * x)))

  end = None
  if values[-1] < hi_end and moment(lam_lo) <= 0.0:
    lam, end = lam_lo, hi_end
  elif values[0] > lo_end and moment(lam_hi) >= 0.0:
    lam, end = lam_hi, lo_end
  else:
    lam = _root(moment, lam_lo, lam_hi, tol=1e-12 * n)
  p = counts / (n + lam * x)
  second = float(np.sum(p * values * values))
  if end is not None:
    second += max(1.0 - float(p.sum()), 0.0) * end * end
  return max(second - mean * mean, 0.0)


def _score(total: float, n: int, mean: float, variance: float) -> float:
  """(total - n mean) / sqrt(n variance); +-inf where the variance is 0 and they differ."""
  num = total - n * mean
  if variance <= 1e-15:
    return 0.0 if abs(num) <= 1e-9 * max(n, 1) else math.copysign(math.inf, num)
  return num / math.sqrt(n * variance)


def _score_interval(x: np.ndarray, lo_end: float, hi_end: float, z: float) -> Interval:
  """The score interval of the mean of x (values in [lo_end, hi_end]); general path."""
  n = len(x)
  values, counts = np.unique(x, return_counts=True)
  counts = counts.astype(np.float64)
  total = float(x.sum())
  est = total / n

  def score(m):
    return _score(total, n, m, _tilted_variance(values, counts, m, lo_end, hi_end))

  low = lo_end if est <= lo_end else _root(lambda m: score(m) - z, lo_end, est)
  high = hi_end if est >= hi_end else _root(lambda m: score(m) + z, est, hi_end)
  return Interval(est, min(low, est), max(high, est), n)


def mean_interval(scores: Sequence[float], z: float = Z95) -> Interval:
  """95% score interval of the mean of per-problem scores in [0, 1] (Wilson for 0/1)."""
  s = _check_scores(scores, "mean_interval")
  if np.all((s == 0.0) | (s == 1.0)):
    return wilson(float(s.sum()), len(s), z)
  return _score_interval(s, 0.0, 1.0, z)


def _loss_chance(gain: float, loss: float, n: int, delta: float) -> float:
  """Maximum-likelihood chance of a loss (d = -1) on a problem, given a difference delta >= 0.

  The log-likelihood G log(q + delta) + L log(q) + R log(1 - 2q - delta), R = n - G - L
  the problems without a difference, is maximal where its derivative vanishes:
  2n q^2 - B q - L delta (1 - delta) = 0 with B = (G + L)(1 - delta) - 2 delta (n - G).
  For delta >= 0 the constant term is <= 0, so the larger root is the one >= 0.
  """
  b = (gain + loss) * (1.0 - delta) - 2.0 * delta * (n - gain)
  disc = b * b + 8.0 * n * loss * delta * (1.0 - delta)
  return max((b + math.sqrt(max(disc, 0.0))) / (4.0 * n), 0.0)


def _paired_01_interval(gain: int, loss: int, n: int, z: float) -> Interval:
  """The score interval of a paired difference of 0/1 outcomes (closed-form likelihood)."""

  def score(delta):
    if delta >= 0.0:
      q = _loss_chance(gain, loss, n, delta)
    else:  # mirror: swap gains and losses; the loss chance is then the other cell's
      q = _loss_chance(loss, gain, n, -delta) - delta
    return _score(gain - loss, n, delta, 2.0 * q + delta - delta * delta)

  est = (gain - loss) / n
  low = -1.0 if est <= -1.0 else _root(lambda t: score(t) - z, -1.0, est)
  high = 1.0 if est >= 1.0 else _root(lambda t: score(t) + z, est, 1.0)
  return Interval(est, min(low, est), max(high, est), n)


def paired_difference(a: Sequence[float], b: Sequence[float], z: float = Z95) -> Interval:
  """Mean over problems of a - b with its 95% score interval (see the module doc).

  `a` and `b` are the two methods' per-problem scores in [0, 1], in the same problem
  order. With no problem at all the estimate is nan and the interval [-1, 1].
  """
  x, y = _check_scores(a, "paired_difference(a)"), _check_scores(b, "paired_difference(b)")
  if x.shape != y.shape:
    raise ValueError(f"paired_difference: {len(x)} and {len(y)} problems; a pair needs the "
                     "same problems")
  n = len(x)
  if n == 0:
    return Interval(float("nan"), -1.0, 1.0, 0)
  d = x - y
  if np.all((d == 0.0) | (np.abs(d) == 1.0)):
    return _paired_01_interval(int((d > 0).sum()), int((d < 0).sum()), n, z)
  return _score_interval(d, -1.0, 1.0, z)


def verdict(diff: Interval) -> str:
  """'ahead' / 'behind' / 'no difference detected' from a difference's interval ('n/a': n = 0)."""
  if diff.n == 0 or not math.isfinite(diff.estimate):
    return NOT_AVAILABLE
  if diff.low > 0.0:
    return AHEAD
  if diff.high < 0.0:
    return BEHIND
  return NO_DIFFERENCE


# --- seeds --------------------------------------------------------------------------------
def _t_two_sided_mass(t: float, df: int) -> float:
  """P(|T| <= t) for Student's t with an integer number of degrees of freedom (closed form).

  With theta = atan(t / sqrt(df)) and c = cos(theta)^2, the finite series is
  (2/pi)(theta + sin cos (1 + 2/3 c + 2*4/(3*5) c^2 + ...)) for odd df and
  sin theta (1 + 1/2 c + 1*3/(2*4) c^2 + ...) for even df.
  """
  theta = math.atan(t / math.sqrt(df))
  s, c = math.sin(theta), math.cos(theta) ** 2
  if df % 2:
    total, term = 0.0, 1.0
    if df > 1:
      total = 1.0
      for j in range(1, (df - 3) // 2 + 1):
        term *= c * (2 * j) / (2 * j + 1)
        total += term
      return 2.0 / math.pi * (theta + s * math.cos(theta) * total)
    return 2.0 / math.pi * theta
  total, term = 1.0, 1.0
  for j in range(1, (df - 2) // 2 + 1):
    term *= c * (2 * j - 1) / (2 * j)
    total += term
  return s * total


def t_quantile(df: int, level: float = 0.95) -> float:
  """The t such that P(|T| <= t) = level, for Student's t with `df` >= 1 (integer)."""
  if int(df) != df or df < 1:
    raise ValueError(f"t_quantile: df must be a positive integer, got {df}")
  hi = 1.0
  while _t_two_sided_mass(hi, int(df)) < level:
    hi *= 2.0
  return _root(lambda t: level - _t_two_sided_mass(t, int(df)), 0.0, hi, tol=1e-14)


@dataclasses.dataclass(frozen=True)
class SeedSpread:
  """One number per seed and what they say together.

  `interval` is the Student-t 95% interval of the mean over seeds (the whole real
  line, as +-inf, with fewer than two seeds: one seed says nothing about spread).
  """

  values: dict
  mean: float
  std: float  # sample standard deviation (ddof 1); nan with one seed
  min: float
  max: float
  interval: Interval

  def text(self, digits: int = 3) -> str:
    """'0.240 (min 0.190, max 0.262, sd 0.033; seeds 0.247, 0.242, 0.190)'."""
    if not self.values:
      return "n/a"
    per = ", ".join(f"{v:.{digits}f}" for v in self.values.values())
    sd = "n/a" if not math.isfinite(self.std) else f"{self.std:.{digits}f}"
    return (f"{self.mean:.{digits}f} (min {self.min:.{digits}f}, max {self.max:.{digits}f}, "
            f"sd {sd}; seeds {per})")


def _as_seed_dict(values) -> dict:
  if isinstance(values, Mapping):
    return {k: float(v) for k, v in values.items()}
  return {i: float(v) for i, v in enumerate(values)}


def seed_spread(values: Mapping | Sequence[float],
                within: tuple[float, float] | None = None) -> SeedSpread:
  """Each seed's value (a mapping seed -> value, or a list), mean, min, max, sd, t interval.

  `within`: the range the quantity lives in (e.g. (0, 1) for an accuracy); the t
  interval is cut to it, which keeps its coverage (the truth lies inside).
  """
  vals = _as_seed_dict(values)
  x = np.asarray(list(vals.values()), np.float64)
  interval = t_interval(x, within)
  if not len(x):
    nan = float("nan")
    return SeedSpread({}, nan, nan, nan, nan, interval)
  std = float(x.std(ddof=1)) if len(x) > 1 else float("nan")
  return SeedSpread(vals, interval.estimate, std, float(x.min()), float(x.max()), interval)


def t_interval(values: Sequence[float], within: tuple[float, float] | None = None
               ) -> Interval:
  """Student-t 95% interval of the mean of `values`: mean +- t_{n-1} sd / sqrt(n).

  For a continuous quantity (a per-problem squared-error difference, one number per
  seed), where the score interval's range ends would be far from anything observed.
  Fewer than two values give the whole line (+-inf); `within` cuts the interval to
  the range the quantity lives in, which keeps its coverage.
  """
  x = np.asarray(values, np.float64).reshape(-1)
  if not len(x):
    return Interval(float("nan"), -math.inf, math.inf, 0)
  mean = float(x.mean())
  if len(x) < 2:
    return Interval(mean, -math.inf, math.inf, 1)
  half = t_quantile(len(x) - 1) * float(x.std(ddof=1)) / math.sqrt(len(x))
  low, high = mean - half, mean + half
  if within is not None:
    low, high = max(low, within[0]), min(high, within[1])
  return Interval(mean, low, high, len(x))


def seed_difference(a: Mapping | Sequence[float], b: Mapping | Sequence[float],
                    within: tuple[float, float] | None = None) -> SeedSpread:
  """a - b seed by seed, on the seeds both have (paired by seed), as a `SeedSpread`.

  `verdict(result.interval)` is the word for the comparison; with fewer than two
  common seeds the interval is unbounded and the word "no difference detected".
  `within` as in `seed_spread` (e.g. (-1, 1) for a difference of accuracies).
  """
  da, db = _as_seed_dict(a), _as_seed_dict(b)
  return seed_spread({k: da[k] - db[k] for k in da if k in db}, within)


def seed_comparison_row(label: str, a: Mapping | Sequence[float],
                        b: Mapping | Sequence[float]) -> str:
  """A markdown row comparing accuracies a - b paired by seed: label, seeds, every
  seed's difference, mean with its t interval, verdict (the experiment reports')."""
  d = seed_difference(a, b, within=(-1.0, 1.0))
  if not d.values:
    return f"| {label} | 0 | n/a | n/a | n/a |"
  per = ", ".join(f"{s}: {v:+.3f}" for s, v in d.values.items())
  iv = (f"[{d.interval.low:+.3f}, {d.interval.high:+.3f}]" if len(d.values) > 1
        else "n/a (one seed)")
  return (f"| {label} | {len(d.values)} | {per} | {d.mean:+.3f} {iv} | "
          f"{verdict(d.interval)} |")
