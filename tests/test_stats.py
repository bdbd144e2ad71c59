"""pavjax.stats against closed forms, an independent reference and exact coverage."""

import functools
import math
import warnings

import numpy as np
import pytest
from scipy import optimize
from scipy import special as scipy_special
from scipy import stats as scipy_stats

from pavjax import stats

Z = stats.Z95
Z2 = Z * Z


# --- Wilson ---------------------------------------------------------------------------------
def test_wilson_hand_computed():
  # 5 of 10: center (5 + z^2/2)/(10 + z^2) = 0.5, half-width z sqrt(2.5 + z^2/4)/(10 + z^2).
  iv = stats.wilson(5, 10)
  assert iv.estimate == 0.5 and iv.n == 10
  assert iv.low == pytest.approx(0.236593, abs=1e-6) and iv.high == pytest.approx(0.763407, abs=1e-6)
  # k = 0 and k = n: one bound is exact, the other z^2/(n + z^2) from the edge.
  assert stats.wilson(0, 10).low == 0.0
  assert stats.wilson(0, 10).high == pytest.approx(Z2 / (10 + Z2), abs=1e-15)
  assert stats.wilson(10, 10).high == 1.0
  assert stats.wilson(10, 10).low == pytest.approx(10 / (10 + Z2), abs=1e-15)
  assert stats.wilson(2, 8).text() == "0.250 [0.071, 0.591]"


@pytest.mark.parametrize("k,n", [(1, 7), (3, 10), (17, 40), (0.5, 3), (63.25, 100)])
def test_wilson_bounds_solve_the_score_equation(k, n):
  """Each bound p solves (k/n - p)^2 = z^2 p (1 - p) / n."""
  iv = stats.wilson(k, n)
  for p in (iv.low, iv.high):
    assert (k / n - p) ** 2 == pytest.approx(Z2 * p * (1 - p) / n, rel=1e-9, abs=1e-15)
  assert iv.low < k / n < iv.high


def test_wilson_degenerate_and_bad_input():
  iv = stats.wilson(0, 0)
  assert math.isnan(iv.estimate) and (iv.low, iv.high, iv.n) == (0.0, 1.0, 0)
  assert iv.text() == "n/a" and iv.bounds() == "n/a"
  for k, n in ((3, 2), (-1, 5)):
    with pytest.raises(ValueError):
      stats.wilson(k, n)
  with pytest.raises(ValueError, match="in \\[0, 1\\]"):
    stats.mean_interval([0.5, 1.5])
  assert stats.proportion(0.3, 10) == stats.wilson(3, 10)
  assert stats.mean_interval([1, 0, 0, 1, 1]) == stats.wilson(3, 5)


def test_wilson_exact_coverage():
  """Exact coverage (binomial sums) of the nominal 95% interval over a grid of p, n = 50."""
  n = 50
  ivs = [stats.wilson(k, n) for k in range(n + 1)]
  coverage = []
  for p in np.linspace(0.05, 0.95, 19):
    pmf = [math.comb(n, k) * p ** k * (1 - p) ** (n - k) for k in range(n + 1)]
    coverage.append(sum(w for w, iv in zip(pmf, ivs) if iv.low <= p <= iv.high))
  assert 0.94 <= np.mean(coverage) <= 0.965, coverage
  assert min(coverage) >= 0.92, coverage


# --- the paired difference ---------------------------------------------------------------------
def _pairs(gain, loss, n):
  """0/1 outcomes with `gain` problems where a wins and `loss` where b wins."""
  a = [1] * gain + [0] * loss + [1] * ((n - gain - loss) // 2)
  b = [0] * gain + [1] * loss + [1] * ((n - gain - loss) // 2)
  rest = n - len(a)
  return a + [0] * rest, b + [0] * rest


def _reference_interval(x, lo_end, hi_end):
  """The score interval of a mean from its definition, with generic numerics (independent of
  stats' closed forms and its 1-d dual).

  The constrained maximum-likelihood distribution on the observed values and the two
  ends: the two ends' masses follow from the other masses through the two constraints
  (sum 1, mean m), and those others are found by Nelder-Mead on the log-likelihood
  (softplus-free: infeasible points score -inf). The bounds are brentq roots.
  """
  x = np.asarray(x, float)
  n = len(x)
  inner = np.setdiff1d(np.unique(x), [lo_end, hi_end])
  c_inner = np.array([(x == v).sum() for v in inner], float)
  c_lo, c_hi = float((x == lo_end).sum()), float((x == hi_end).sum())

  def masses(free, m):
    s, t = free.sum(), free @ inner
    p_hi = (m - t - lo_end * (1 - s)) / (hi_end - lo_end)
    return 1 - s - p_hi, p_hi

  def nll(free, m):
    p_lo, p_hi = masses(free, m)
    out = -np.sum(c_inner * np.log(np.maximum(free, 1e-300)))
    for c, p in ((c_lo, p_lo), (c_hi, p_hi)):
      if c:
        out -= c * math.log(max(p, 1e-300))
    return out

  def variance(m):
    if not lo_end < m < hi_end:
      return 0.0
    if not len(inner):
      p_lo, p_hi = masses(np.zeros(0), m)
      return p_lo * lo_end ** 2 + p_hi * hi_end ** 2 - m * m
    # Start strictly inside: the empirical inner masses, shrunk until both ends are > 0.
    free = c_inner / n
    while min(masses(free, m)) <= 0:
      free = free * 0.5
    # The ends' masses are linear in the free ones: p_hi = (m - t - lo (1 - s)) / (hi - lo).
    row_hi = -(inner - lo_end) / (hi_end - lo_end)
    row_lo = -1.0 - row_hi
    off_hi = (m - lo_end) / (hi_end - lo_end)
    ends = optimize.LinearConstraint(np.stack([row_lo, row_hi]), [-(1 - off_hi), -off_hi],
                                     [np.inf, np.inf])
    bounds = optimize.Bounds(np.zeros(len(inner)), np.ones(len(inner)))
    res = optimize.minimize(nll, free, args=(m,), method="SLSQP", constraints=[ends],
                            bounds=bounds, options={"ftol": 1e-14, "maxiter": 1000})
    if not res.success:  # a slower interior-point method where SLSQP gives up
      res = optimize.minimize(nll, free, args=(m,), method="trust-constr", constraints=[ends],
                              bounds=bounds, options={"gtol": 1e-10, "xtol": 1e-12,
                                                      "maxiter": 2000})
    p_lo, p_hi = masses(res.x, m)
    return float(res.x @ inner ** 2 + max(p_lo, 0) * lo_end ** 2 + max(p_hi, 0) * hi_end ** 2
                 - m * m)

  def score(m):
    v = variance(m)
    num = x.sum() - n * m
    return num / math.sqrt(n * v) if v > 0 else math.copysign(math.inf, num)

  est = x.mean()
  eps = 1e-9
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # trust-constr's notes on flat steps near the optimum
    low = (optimize.brentq(lambda m: score(m) - Z, lo_end + eps, est, xtol=1e-8)
           if est > lo_end else lo_end)
    high = (optimize.brentq(lambda m: score(m) + Z, est, hi_end - eps, xtol=1e-8)
            if est < hi_end else hi_end)
  return low, high


_FRACTIONAL = ([0.75] * 9 + [0.5] * 4 + [0.25] * 3 + [0.0] * 24,   # a: 40 problems
               [0.0] * 9 + [0.625] * 4 + [0.25] * 3 + [0.0] * 24)  # b


@pytest.mark.parametrize("a,b", [_pairs(5, 1, 40), _pairs(0, 2, 25), _FRACTIONAL,
                                 ([0.5, 0.25, 1.0, 0.0, 0.75] * 6, [0.25, 0.5, 0.5, 0.0, 1.0] * 6)],
                         ids=["5-1", "0-2", "fractional", "fractional-mixed"])
def test_paired_difference_matches_a_reference_of_its_definition(a, b):
  d = np.asarray(a, float) - np.asarray(b, float)
  iv = stats.paired_difference(a, b)
  low, high = _reference_interval(d, -1.0, 1.0)
  assert iv.estimate == pytest.approx(d.mean(), abs=1e-15)
  assert iv.low == pytest.approx(low, abs=2e-5) and iv.high == pytest.approx(high, abs=2e-5)


@pytest.mark.parametrize("scores", [[0.25, 0.5, 0.75, 1.0] * 5, [0.0] * 9 + [0.5],
                                    [1.0] * 7 + [0.875, 0.5]], ids=["spread", "low", "high"])
def test_mean_interval_of_fractional_scores_matches_the_reference(scores):
  iv = stats.mean_interval(scores)
  low, high = _reference_interval(scores, 0.0, 1.0)
  assert iv.low == pytest.approx(low, abs=2e-5) and iv.high == pytest.approx(high, abs=2e-5)


def test_the_general_path_is_wilson_and_the_paired_closed_form_on_0_1_outcomes():
  """On 0/1 outcomes the tilted-weights score interval is exactly the closed forms."""
  for k, n in ((0, 10), (3, 10), (10, 10), (17, 40)):
    x = np.array([1.0] * k + [0.0] * (n - k))
    general, closed = stats._score_interval(x, 0.0, 1.0, Z), stats.wilson(k, n)
    assert (general.low, general.high) == pytest.approx((closed.low, closed.high), abs=1e-12)
  for gain, loss, n in ((5, 1, 40), (0, 0, 30), (3, 0, 20), (12, 9, 50), (10, 0, 10), (0, 7, 7)):
    a, b = _pairs(gain, loss, n)
    d = np.asarray(a, float) - np.asarray(b, float)
    general, closed = stats._score_interval(d, -1.0, 1.0, Z), stats.paired_difference(a, b)
    assert (general.low, general.high) == pytest.approx((closed.low, closed.high), abs=1e-12)


@pytest.mark.parametrize("n", [1, 10, 40, 400])
def test_paired_difference_closed_forms(n):
  # No discordant problem (all equal, mixed or all 1): +-z^2/(n + z^2).
  for a in ([1] * n, [0] * n, [i % 2 for i in range(n)]):
    iv = stats.paired_difference(a, a)
    assert iv.estimate == 0.0
    assert iv.low == pytest.approx(-Z2 / (n + Z2), abs=1e-12)
    assert iv.high == pytest.approx(Z2 / (n + Z2), abs=1e-12)
    assert stats.verdict(iv) == stats.NO_DIFFERENCE
  # a right everywhere, b nowhere: the score equation n(1 - d)/(1 + d) = z^2 gives the low bound.
  iv = stats.paired_difference([1] * n, [0] * n)
  assert iv.high == 1.0 and iv.low == pytest.approx((n - Z2) / (n + Z2), abs=1e-12)
  flipped = stats.paired_difference([0] * n, [1] * n)
  assert (flipped.low, flipped.high) == pytest.approx((-iv.high, -iv.low), abs=1e-12)


def test_paired_difference_is_mcnemars_test_at_zero():
  """For 0/1 outcomes the interval excludes 0 exactly when (G - L)^2 / (G + L) > z^2."""
  n = 60
  for gain in range(0, 20):
    for loss in range(0, 20):
      iv = stats.paired_difference(*_pairs(gain, loss, n))
      mcnemar = (gain - loss) ** 2 / (gain + loss) if gain + loss else 0.0
      assert (not iv.covers(0.0)) == (mcnemar > Z2), (gain, loss, iv)
      assert stats.verdict(iv) == (stats.AHEAD if mcnemar > Z2 and gain > loss else
                                   stats.BEHIND if mcnemar > Z2 else stats.NO_DIFFERENCE)


def test_paired_difference_antisymmetry_and_bad_input():
  a, b = [1, 0, 1, 1, 0.5, 0], [0, 0, 1, 0, 1, 0.25]
  ab, ba = stats.paired_difference(a, b), stats.paired_difference(b, a)
  assert ab.estimate == pytest.approx(-ba.estimate)
  assert (ab.low, ab.high) == pytest.approx((-ba.high, -ba.low), abs=1e-12)
  with pytest.raises(ValueError, match="same problems"):
    stats.paired_difference([1, 0], [1, 0, 1])
  with pytest.raises(ValueError):
    stats.paired_difference([1, float("nan")], [1, 0])
  empty = stats.paired_difference([], [])
  assert empty.n == 0 and math.isnan(empty.estimate) and (empty.low, empty.high) == (-1.0, 1.0)
  assert stats.verdict(empty) == stats.NOT_AVAILABLE and empty.text() == "n/a"


@functools.lru_cache(maxsize=None)
def _all_intervals(n):
  """The interval of every (gains, losses) of n paired 0/1 outcomes, and the normal one."""
  score, normal = {}, {}
  for g in range(n + 1):
    for l in range(n + 1 - g):
      a, b = _pairs(g, l, n)
      iv = stats.paired_difference(a, b)
      score[g, l] = (iv.low, iv.high)
      d = np.asarray(a, float) - np.asarray(b, float)
      half = Z * d.std(ddof=1) / math.sqrt(n)
      normal[g, l] = (d.mean() - half, d.mean() + half)
  return score, normal


def _exact_coverage(intervals, n, p_gain, p_loss):
  """Sum of the multinomial probabilities of the outcomes whose interval covers the truth."""
  keys = np.array(list(intervals), float)  # [K, 2] (gains, losses)
  bounds = np.array(list(intervals.values()))
  counts = np.stack([keys[:, 0], keys[:, 1], n - keys.sum(1)], 1)
  probs = np.array([p_gain, p_loss, 1.0 - p_gain - p_loss])
  with np.errstate(divide="ignore", invalid="ignore"):
    logp = np.where(counts > 0, counts * np.log(probs), 0.0).sum(1)
  logp += scipy_special.gammaln(n + 1) - scipy_special.gammaln(counts + 1).sum(1)
  delta = p_gain - p_loss
  covered = (bounds[:, 0] <= delta) & (delta <= bounds[:, 1])
  return float(np.exp(logp)[covered].sum())


def test_paired_difference_exact_coverage_of_0_1_outcomes():
  """Exact coverage (multinomial sums over every outcome of 30 problems).

  The score interval stays near 95% over the grid; the paired normal interval, which
  shrinks to a point when no problem is discordant, misses a small true difference
  most of the time.
  """
  n = 30
  score, normal = _all_intervals(n)
  grid = [(pg, pl) for pg in np.linspace(0, 0.4, 9) for pl in np.linspace(0, 0.4, 9)
          if pg + pl > 0]
  cov = [_exact_coverage(score, n, pg, pl) for pg, pl in grid]
  assert 0.94 <= np.mean(cov) <= 0.965, np.mean(cov)
  assert min(cov) >= 0.92, min(cov)
  rare = (0.02, 0.0)  # one problem in 50 is won, none lost
  assert _exact_coverage(score, n, *rare) >= 0.95
  assert _exact_coverage(normal, n, *rare) < 0.5


def test_coverage_of_fractional_scores_by_simulation():
  """Per-problem success rates vary; each method's score is the share of 4 samples right.

  Method a's rate on a problem is u ~ U(0, 1), method b's 0.8 u: the true means are 0.5
  and 0.4, the true difference 0.1. Fixed seed, 400 draws of 50 problems: the coverage
  of a 95% interval should lie within 3 standard errors (0.011) of 0.95. The intervals
  use the observed spread of the fractions, so they are about as wide as the normal
  interval here (where it is fine: many distinct values), not the 0/1 bound's 1.7x.
  """
  rng = np.random.default_rng(0)
  n, m, draws = 50, 4, 400
  paired = single = 0
  widths = []
  for _ in range(draws):
    u = rng.random(n)
    a = rng.binomial(m, u) / m
    b = rng.binomial(m, 0.8 * u) / m
    diff = stats.paired_difference(a, b)
    paired += diff.covers(0.1)
    single += stats.mean_interval(a).covers(0.5)
    d = a - b
    widths.append((diff.high - diff.low) / (2 * Z * d.std(ddof=1) / math.sqrt(n)))
  assert 0.917 <= paired / draws <= 0.983, paired / draws
  assert 0.917 <= single / draws <= 0.983, single / draws
  assert np.mean(widths) < 1.15, np.mean(widths)


def test_verdict_words():
  mk = lambda lo, hi: stats.Interval(0.5 * (lo + hi), lo, hi, 10)
  assert stats.verdict(mk(0.01, 0.2)) == "ahead"
  assert stats.verdict(mk(-0.3, -0.001)) == "behind"
  assert stats.verdict(mk(-0.1, 0.2)) == "no difference detected"
  assert stats.verdict(mk(0.0, 0.2)) == "no difference detected"  # touching 0 covers it
  assert mk(-0.1, 0.25).text(3, signed=True) == "+0.075 [-0.100, +0.250]"


# --- seeds ---------------------------------------------------------------------------------
def test_t_quantile_closed_forms_and_reference():
  assert stats.t_quantile(1) == pytest.approx(math.tan(0.95 * math.pi / 2), rel=1e-12)  # Cauchy
  assert stats.t_quantile(2) == pytest.approx(0.95 * math.sqrt(2 / (1 - 0.95 ** 2)), rel=1e-12)
  for df in range(1, 80):
    assert stats.t_quantile(df) == pytest.approx(scipy_stats.t.ppf(0.975, df), rel=1e-10)
  with pytest.raises(ValueError):
    stats.t_quantile(0)


def test_seed_spread_and_difference():
  s = stats.seed_spread({0: 0.2, 1: 0.4, 2: 0.3})
  assert (s.mean, s.min, s.max) == pytest.approx((0.3, 0.2, 0.4))
  assert s.std == pytest.approx(0.1)
  half = stats.t_quantile(2) * 0.1 / math.sqrt(3)
  assert (s.interval.low, s.interval.high) == pytest.approx((0.3 - half, 0.3 + half))
  assert s.text() == "0.300 (min 0.200, max 0.400, sd 0.100; seeds 0.200, 0.400, 0.300)"
  one = stats.seed_spread([0.7])
  assert math.isnan(one.std) and one.interval.low == -math.inf
  assert stats.verdict(one.interval) == stats.NO_DIFFERENCE
  assert stats.seed_spread([]).values == {} and stats.verdict(stats.seed_spread([]).interval) == "n/a"
  # Cut to the quantity's range: t(1) = 12.7 reaches far past [0, 1].
  cut = stats.seed_spread([0.2, 0.4], within=(0.0, 1.0))
  assert (cut.interval.low, cut.interval.high) == (0.0, 1.0)
  raw = stats.seed_spread([0.2, 0.4]).interval
  assert raw.low < 0.0 and raw.high > 1.0
  # Paired by seed: only the seeds both ran count.
  d = stats.seed_difference({0: 0.5, 1: 0.6, 2: 0.7}, {0: 0.4, 1: 0.4, 3: 0.1})
  assert d.values == pytest.approx({0: 0.1, 1: 0.2})
  assert stats.verdict(d.interval) == stats.NO_DIFFERENCE  # t(1) = 12.7: two seeds say little
  d = stats.seed_difference([0.5, 0.52, 0.51, 0.53], [0.3, 0.31, 0.3, 0.32])
  assert stats.verdict(d.interval) == stats.AHEAD


def test_t_interval_by_hand():
  # mean 2, sd 1, n 3: half-width t_{2, 0.975} / sqrt(3) with t_{2, 0.975} = 4.302652729911275.
  iv = stats.t_interval([1.0, 2.0, 3.0])
  half = 4.302652729911275 / np.sqrt(3)
  np.testing.assert_allclose([iv.estimate, iv.low, iv.high], [2.0, 2.0 - half, 2.0 + half])
  assert iv.n == 3
  cut = stats.t_interval([1.0, 2.0, 3.0], within=(0.0, 3.0))
  np.testing.assert_allclose([cut.low, cut.high], [0.0, 3.0])
  one = stats.t_interval([0.5])
  assert (one.low, one.high, one.n) == (-np.inf, np.inf, 1)
