"""Sampling methods: exact frequencies, zero-probability tokens, per-row determinism.

The draws use the same per-row keys as `decode` (`fold_in(rng, row)`) and a
fixed seed, so every test here is deterministic.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from pavjax.sampling import Greedy, Temperature, TopK, TopP, methods

INF = np.inf

# 12 tokens (block size 8: a second, padded block), a -inf token and a tie.
SMALL = np.array([2.0, 1.0, 0.5, 0.0, -0.5, -1.0, -2.0, -INF, -3.0, 1.5, 0.5, 0.2])


def _medium():
  # 300 tokens in 10 blocks of 32 (the last one padded); mass spread over the
  # blocks, a third of the tokens at -inf.
  rng = np.random.default_rng(3)
  logits = rng.normal(size=300) * 1.5
  logits[rng.random(300) < 1 / 3] = -INF
  return logits


def _keys(n, seed=0):
  return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(jax.random.PRNGKey(seed),
                                                         jnp.arange(n))


def _draw(method, logits, n, seed=0, chunk=10_000):
  """n tokens drawn by `method` from one row of logits, one row key per draw."""
  fn = jax.jit(lambda l, k: method(l, k))
  row = jnp.asarray(logits, jnp.float32)
  all_keys = _keys(n, seed)
  out = []
  for start in range(0, n, chunk):
    keys = all_keys[start:start + chunk]
    out.append(np.asarray(fn(jnp.broadcast_to(row, (len(keys), row.shape[0])), keys)))
  return np.concatenate(out)


def _reference(logits, temperature=1.0, k=None, p=None):
  """Exact (float64) token probabilities, from the sort-based definitions."""
  l = np.asarray(logits, np.float64) / temperature
  keep = np.isfinite(l)
  if k is not None:
    keep &= l >= np.sort(l)[::-1][k - 1]
  probs = np.where(keep, np.exp(l - l.max()), 0.0)
  probs /= probs.sum()
  if p is not None:
    order = np.argsort(-l, kind="stable")
    before = np.cumsum(probs[order]) - probs[order]
    cutoff = l[order][before < p].min()
    probs = np.where(l >= cutoff, probs, 0.0)
    probs /= probs.sum()
  return probs


def _chi2_pvalue(tokens, probs):
  """Pearson chi-square p-value of the token counts against `probs`.

  Tokens of expected count < 5 are pooled into one cell (when it reaches 5).
  """
  n = len(tokens)
  counts = np.bincount(tokens, minlength=len(probs)).astype(np.float64)
  expected = n * probs
  big = expected >= 5
  obs, exp = list(counts[big]), list(expected[big])
  small = (~big) & (probs > 0)
  if expected[small].sum() >= 5:
    obs.append(counts[small].sum())
    exp.append(expected[small].sum())
  obs, exp = np.array(obs), np.array(exp)
  stat = np.sum((obs - exp) ** 2 / exp)
  return stats.chi2.sf(stat, len(obs) - 1)


CASES = [
    (SMALL, Temperature(1.0), {}),
    (SMALL, Temperature(0.5), {"temperature": 0.5}),
    (SMALL, Temperature(2.5), {"temperature": 2.5}),
    (SMALL, TopK(4), {"k": 4}),  # ties: 0.5 twice at ranks 4 and 5, both kept
    (SMALL, TopK(3, 0.7), {"k": 3, "temperature": 0.7}),
    (SMALL, TopP(0.6), {"p": 0.6}),
    (SMALL, TopP(0.85, 1.5), {"p": 0.85, "temperature": 1.5}),
    ("medium", Temperature(1.0), {}),
    ("medium", TopK(40, 1.2), {"k": 40, "temperature": 1.2}),
    ("medium", TopP(0.8), {"p": 0.8}),
]


@pytest.mark.parametrize("logits,method,ref", CASES,
                         ids=[f"{'small' if isinstance(c[0], np.ndarray) else c[0]}-{c[1]}"
                              for c in CASES])
def test_frequencies_match_exact_probabilities(logits, method, ref):
  logits = _medium() if isinstance(logits, str) else logits
  probs = _reference(logits, **ref)
  n = 40_000
  tokens = _draw(method, logits, n, seed=1)
  # Zero-probability tokens (-inf, outside top-k or top-p) never come up.
  assert np.all(probs[tokens] > 0), sorted(set(tokens[probs[tokens] == 0].tolist()))
  # At a fixed seed the p-value is a fixed number; 1e-4 leaves room for an
  # unlucky seed while a wrong distribution lands far below (see the next test).
  assert _chi2_pvalue(tokens, probs) > 1e-4


def test_frequency_test_detects_a_slightly_wrong_temperature():
  # The same draws fail against softmax at temperature 1.05 instead of 1.
  tokens = _draw(Temperature(1.0), SMALL, 40_000, seed=1)
  assert _chi2_pvalue(tokens, _reference(SMALL)) > 1e-4
  assert _chi2_pvalue(tokens, _reference(SMALL, temperature=1.05)) < 1e-6


def test_truncation_sets_match_the_sorting_definitions():
  rng = np.random.default_rng(0)
  rows = [rng.normal(size=40) * 2, rng.integers(-3, 3, 40).astype(float),  # many ties
          np.where(rng.random(40) < 0.5, -INF, rng.normal(size=40))]
  rows[2][7] = 0.0  # at least one finite logit
  logits = jnp.asarray(np.stack(rows), jnp.float32)
  weights = methods._softmax_weights(logits)
  for k in (1, 2, 5, 17, 39):
    got = np.asarray(methods._top_k_keep(logits, k))
    want = np.stack([_reference(r, k=k) > 0 for r in rows])
    # With fewer than k finite logits the mask also holds -inf tokens (weight 0).
    np.testing.assert_array_equal(got & np.isfinite(np.stack(rows)), want, err_msg=k)
  for p in (0.05, 0.33, 0.5, 0.77, 0.95):
    got = np.asarray(methods._top_p_keep(logits, weights, p))
    want = np.stack([_reference(r, p=p) > 0 for r in rows])
    np.testing.assert_array_equal(got, want, err_msg=p)
  assert methods._top_k_keep(logits, 40) is None and methods._top_p_keep(logits, weights, 1.0) is None


def test_first_above_never_picks_zero_weights():
  w = jnp.array([[0.0, 1.0, 0.0, 2.0, 0.0]])
  cum = jnp.cumsum(w, axis=-1)
  for target, want in [(0.0, 1), (0.999, 1), (1.0, 3), (2.999, 3), (3.0, 3), (7.0, 3)]:
    assert int(methods._first_above(w, cum, jnp.array([target]))[0]) == want, target
  # A prefix sum that rounding made non-monotone still maps to a positive weight.
  bumpy = jnp.array([[0.0, 1.0, 0.9999999, 3.0, 2.9999998]])
  assert int(methods._first_above(w, bumpy, jnp.array([2.9999999]))[0]) == 3


@pytest.mark.parametrize("u", [0.0, 2.0 ** -24, 0.5, 1 - 2.0 ** -24])
def test_extreme_uniforms_at_vocab_32000_pick_positive_weights(monkeypatch, u):
  # float32 prefix sums over 32000 weights carry rounding; zeros sit at the
  # start, the end, inside blocks and as whole blocks, and the uniforms are
  # forced to their extremes.
  v = 32000
  rng = np.random.default_rng(5)
  rows = [rng.normal(size=v) * 3 for _ in range(4)]
  rows[0][:500] = -INF
  rows[0][-700:] = -INF
  rows[1][rng.random(v) < 0.9] = -INF
  rows[2][:] = -INF
  rows[2][[3, 17, 4000, 31999]] = [0.0, -1.0, 0.5, -30.0]  # last token: tiny mass
  rows[3][1::2] = -INF
  rows[3][-1] = 50.0  # nearly all the mass
  logits = jnp.asarray(np.stack(rows), jnp.float32)
  monkeypatch.setattr(methods, "_uniforms", lambda keys, n: jnp.full((keys.shape[0], n), u))
  for method in (Temperature(1.0), Temperature(0.3), TopK(100), TopP(0.9)):
    tokens = np.asarray(method(logits, _keys(4)))
    assert np.all(np.isfinite(np.asarray(logits)[np.arange(4), tokens])), (method, tokens)
  tokens = np.asarray(Temperature(1.0)(logits, _keys(4)))
  if u == 0.0:  # the inverse CDF at 0 is the first positive token
    assert list(tokens) == [500, int(np.argmax(np.isfinite(rows[1]))), 3, 0]
  if u == 1 - 2.0 ** -24:
    assert tokens[3] == v - 1  # the last token, with nearly all the mass


@pytest.mark.parametrize("method", [Greedy(), Temperature(1.0), TopK(5, 0.8), TopP(0.9)])
def test_a_row_depends_only_on_its_key_and_logits(method):
  v = 700
  logits = jax.random.normal(jax.random.PRNGKey(2), (6, v)) * 2
  keys = _keys(6, seed=4)
  fn = jax.jit(lambda l, k: method(l, k))
  base = np.asarray(fn(logits, keys))
  np.testing.assert_array_equal(np.asarray(fn(logits, keys)), base)  # repeatable
  perm = np.array([4, 1, 5, 0, 3, 2])
  np.testing.assert_array_equal(np.asarray(fn(logits[perm], keys[perm])), base[perm])
  np.testing.assert_array_equal(np.asarray(fn(logits[2:4], keys[2:4])), base[2:4])
  # Other rows' logits do not matter.
  other = logits.at[jnp.array([0, 5])].set(jax.random.normal(jax.random.PRNGKey(9), (2, v)))
  np.testing.assert_array_equal(np.asarray(fn(other, keys))[1:5], base[1:5])
  if not isinstance(method, Greedy):
    # Same logits in every row: the keys alone make the rows differ.
    same = jnp.broadcast_to(logits[0], (64, v))
    assert len(set(np.asarray(fn(same, _keys(64, seed=4))).tolist())) > 1
