"""Tests for the didactic planted-sequence task and its exact procedural prover."""

import itertools

import numpy as np
import pytest

from pavjax import tasks
from pavjax.tasks import base
from pavjax.tasks import planted as planted_lib

Y_STAR = (3, 6, 0, 3, 5)


@pytest.fixture(scope="module")
def task():
  return planted_lib.PlantedTask(num_train=64, num_eval=16)


def _naive_state(prefix, planted):
  """Longest k < len(planted) with prefix[-k:] == planted[:k] (0 if none)."""
  prefix = tuple(prefix)
  for k in range(min(len(prefix), len(planted) - 1), 0, -1):
    if prefix[len(prefix) - k:] == tuple(planted[:k]):
      return k
  return 0


def _brute_value(prover, prefix):
  """V^mu(prefix) by enumerating every continuation (no DP, naive matching)."""
  planted, eos, length = prover.planted, prover.eos, prover.length

  def rec(seq, prob):
    if eos in seq or len(seq) >= length:
      return prob * float(planted_lib.contains_planted(seq, planted, eos, length))
    # Naive policy: recompute the matched length from scratch.
    k = _naive_state(seq, planted)
    w = np.ones(prover.vocab_size)
    w[planted[k]] = prover.gamma
    w /= w.sum()
    return sum(rec(seq + (a,), prob * w[a]) for a in range(prover.vocab_size))

  return rec(tuple(prefix), 1.0)


# -- reward -------------------------------------------------------------------------------------


@pytest.mark.parametrize("raw, expected", [
    ((3, 6, 0, 3, 5, 14), 1.0),  # exactly y*, then EOS
    ((1, 3, 6, 0, 3, 5, 2, 2, 2, 2), 1.0),  # full length, no EOS: complete
    ((7, 7, 7, 7, 7, 3, 6, 0, 3, 5), 1.0),  # ends exactly at the horizon
    ((1, 14, 3, 6, 0, 3, 5), 0.0),  # y* after EOS
    ((3, 6, 0, 3, 1, 1, 1, 1, 1, 1), 0.0),  # partial match only
    ((3, 6, 0, 3, 14), 0.0),  # partial then EOS
    ((3, 6, 0, 3, 6, 0, 3, 5, 14), 1.0),  # overlapping: needs the KMP fallback
    ((3, 3, 6, 0, 3, 5, 14), 1.0),  # restart inside a partial match
    ((3, 6, 0, 3, 6, 0, 3, 6, 0, 3), 0.0),  # repeated partial progress, never finished
    ((8, 5, 12, 3, 5, 3, 6, 1, 10, 5), 0.0),  # a typical mu_5 sample (Fig. 9-like)
    ((0, 0, 0, 0, 0, 3, 6, 0, 3, 5, 1), 1.0),  # 11 tokens: y* within the first 10
    ((0, 0, 0, 0, 0, 0, 3, 6, 0, 3, 5), 0.0),  # y* ends past the horizon
])
def test_reward_hand_written(task, raw, expected):
  problem = task.split("train")[0]
  assert task.reward_tokens(raw) == expected
  outcome = task.is_correct(task.to_ids(raw) + [0, 0], problem)  # trailing padding allowed
  assert outcome.reward == expected
  assert outcome.reason == (base.CORRECT if expected else base.WRONG)
  # The exact value of a finished response is its reward.
  assert task.prover(5.0).value(raw) == expected


def test_reward_empty_and_foreign(task):
  problem = task.split("train")[0]
  assert task.is_correct([task.eos_id, 4, 7], problem).reason == base.EMPTY
  assert task.is_correct([], problem).reason == base.EMPTY
  # A stray BOS breaks a match like any other non-planted token.
  ids = task.to_ids((3, 6)) + [task.bos_id] + task.to_ids((0, 3, 5))
  assert task.is_correct(ids, problem).reward == 0.0
  assert task.from_ids(ids)[2] == planted_lib.FOREIGN
  assert task.prover(10.0).value(task.from_ids(ids)) < 1.0


# -- the prover's exact Q / V ----------------------------------------------------------------


@pytest.mark.parametrize("gamma", [2.0, 10.0])
def test_exact_q_matches_monte_carlo(gamma):
  prover = planted_lib.ProceduralProver(Y_STAR, 15, gamma, 10)
  rng = np.random.default_rng(0)
  n = 4000
  prefixes = [(), (3,), (3, 6, 0), (3, 6, 0, 3), (1, 2, 3, 6, 0, 3), (3, 6, 0, 3, 6, 0)]
  prefixes += [tuple(int(t) for t in rng.integers(0, 14, rng.integers(1, 7))) for _ in range(3)]
  for prefix in prefixes:
    for action in (Y_STAR[prover.state(prefix)], int(rng.integers(0, 14)), prover.eos):
      q = prover.q_value(prefix, action)
      samples = prover.sample(rng, n, prefix + (action,))
      mc = np.mean([planted_lib.contains_planted(s, Y_STAR, 14, 10) for s in samples])
      tol = 4 * np.sqrt(q * (1 - q) / n) + 1.0 / n
      assert abs(mc - q) <= tol, (prefix, action, q, mc)


def test_samples_are_well_formed():
  prover = planted_lib.ProceduralProver(Y_STAR, 15, 5.0, 10)
  samples = prover.sample(np.random.default_rng(1), 500, (3, 6))
  for s in samples:
    assert s[:2] == (3, 6) and 3 <= len(s) <= 10
    assert all(0 <= t < 15 for t in s)
    assert 14 not in s[:-1]
    assert len(s) == 10 or s[-1] == 14
  # Empirical first-token distribution ~ probs (chi-square-free check: 4 sigma per token).
  first = np.bincount([s[0] for s in prover.sample(np.random.default_rng(2), 20000)],
                      minlength=15) / 20000
  p = prover.probs(())
  assert np.all(np.abs(first - p) <= 4 * np.sqrt(p * (1 - p) / 20000))
  assert p[3] == pytest.approx(5.0 / 19.0)


@pytest.mark.parametrize("gamma", [2.0, 10.0])
def test_bellman_consistency(gamma):
  prover = planted_lib.ProceduralProver(Y_STAR, 15, gamma, 10)
  rng = np.random.default_rng(3)
  prefixes = [(), (3, 6, 0, 3), (3, 6, 0, 3, 6, 0), (1,) * 9]
  prefixes += [tuple(int(t) for t in rng.integers(0, 14, rng.integers(0, 10))) for _ in range(10)]
  for prefix in prefixes:
    pi, q = prover.probs(prefix), prover.q_table(prefix)
    assert prover.value(prefix) == pytest.approx(float(pi @ q), abs=1e-12)
    np.testing.assert_allclose(q, [prover.q_value(prefix, a) for a in range(15)], atol=1e-15)


def test_dp_matches_brute_force_small_instance():
  for planted, gamma in [((1, 2), 3.0), ((1, 1), 4.0), ((0, 1, 0), 2.5)]:
    prover = planted_lib.ProceduralProver(planted, 4, gamma, 5)
    for prefix in [(), (1,), (0, 1), (2, 1), (1, 1), (3,), (0, 1, 0, 2), (2, 2, 2, 2)]:
      assert prover.value(prefix) == pytest.approx(_brute_value(prover, prefix), abs=1e-12)
    # Every prefix of every full sequence: the policy matches the naive definition.
    for seq in itertools.product(range(4), repeat=4):
      k = _naive_state(seq, planted)
      expected = np.ones(4)
      expected[planted[k]] = gamma
      np.testing.assert_allclose(prover.probs(seq), expected / expected.sum())


def test_prefix_values_batch_matches_value():
  prover = planted_lib.ProceduralProver(Y_STAR, 15, 10.0, 10)
  rng = np.random.default_rng(4)
  responses = prover.sample(rng, 50) + [(3, 6, 0, 3, 5, 14, 3, 6), (3, 6, 0, 3, 14, 3, 6, 0, 3, 5)]
  responses.append((3, 6, -1, 0, 3, 5))
  width = 12
  tokens = np.full((len(responses), width), 14)
  for i, r in enumerate(responses):
    tokens[i, :len(r)] = r
  batch = prover.prefix_values_batch(tokens)
  for i, r in enumerate(responses):
    padded = tuple(int(t) for t in tokens[i])
    expected = [prover.value(padded[:h]) for h in range(width + 1)]
    np.testing.assert_allclose(batch[i], expected, atol=1e-15)
    np.testing.assert_allclose(prover.prefix_values(r), expected[:len(r) + 1], atol=1e-15)
    assert batch[i, -1] == planted_lib.contains_planted(r, Y_STAR, 14, 10)


def test_stronger_prover_has_larger_value():
  values = [planted_lib.ProceduralProver(Y_STAR, 15, g, 10).value(())
            for g in (0.5, 1.0, 2.0, 5.0, 8.0, 10.0, 15.0, 30.0, 100.0)]
  assert all(a < b for a, b in zip(values, values[1:]))
  assert 0.0 < values[0] and values[-1] < 1.0
  prover = planted_lib.ProceduralProver(Y_STAR, 15, 10.0, 10)
  assert prover.pass_at_n(1) == pytest.approx(prover.value(()))
  assert prover.pass_at_n(8) == pytest.approx(1 - (1 - prover.value(())) ** 8)


def test_kmp_automaton():
  delta = planted_lib.kmp_automaton(Y_STAR, 15)
  assert delta[4, 6] == 2  # "3 6 0 3" + 6 -> "3 6"
  assert delta[4, 5] == 5 and delta[1, 3] == 1 and delta[2, 3] == 1 and delta[2, 1] == 0
  assert np.all(delta[:, 15] == 0)  # foreign token
  prover = planted_lib.ProceduralProver(Y_STAR, 15, 2.0, 10)
  assert prover.state((3, 6, 0, 3)) == 4 and prover.state((3, 6, 0, 3, 6)) == 2
  assert prover.state((3, 6, 0, 3, 5)) == 0  # after a hit: y* has no proper border
  prover = planted_lib.ProceduralProver((1, 2, 1), 4, 2.0, 6)
  assert prover.state((1, 2, 1)) == 1  # after a hit: longest proper border "1"
  assert prover.value((1, 2, 1)) == 1.0 and prover.value((1, 2, 3, 1)) == 0.0


# -- the (k, r) MDP -----------------------------------------------------------------------------


@pytest.mark.parametrize("gamma", [1.0, 5.0, 10.0, 17.5])
def test_markov_values_of_mu_gamma_equal_the_prover_dp(gamma):
  prover = planted_lib.ProceduralProver(Y_STAR, 15, gamma, 10)
  q, win = prover.markov_values(prover.markov_policy())
  assert win[0, prover.length] == prover.value(())  # same DP, same float operations: bit for bit
  np.testing.assert_array_equal(win, prover.win)
  # Q rows agree with the prover's q_table on sampled live prefixes of every length.
  for response in prover.sample(np.random.default_rng(0), 40):
    for h in range(len(response) + 1):
      state = prover.live_state(response[:h])
      if state is not None:
        k, r = state
        np.testing.assert_array_equal(q[k, r - 1], prover.q_table(response[:h]))
      else:  # succeeded or ended: the value is settled
        assert prover.value(response[:h]) in (0.0, 1.0)


def _brute_markov(prover, policy, prefix=()):
  """Success probability of a (k, r) policy from `prefix`, and its visits of each live (k, r).

  Enumerates every continuation with naive matching (no automaton, no DP).
  """
  planted, eos = prover.planted, prover.eos
  m, length, v = policy.shape
  visits = np.zeros((m, length))

  def rec(seq, prob):
    if planted_lib.contains_planted(seq, planted, eos):
      return prob
    if eos in seq or len(seq) >= length:
      return 0.0
    k, r = _naive_state(seq, planted), length - len(seq)
    visits[k, r - 1] += prob
    return sum(rec(seq + (a,), prob * policy[k, r - 1, a]) for a in range(v))

  return rec(tuple(prefix), 1.0), visits


def test_markov_values_and_occupancy_of_an_r_dependent_policy_match_brute_force():
  prover = planted_lib.ProceduralProver((0, 1, 0), 4, 2.0, 5)
  rng = np.random.default_rng(5)
  policy = rng.dirichlet(np.ones(4), size=(3, 5))  # [m, L, V]: a different row for every r
  q, win = prover.markov_values(policy)
  value, visits = _brute_markov(prover, policy)
  assert win[0, 5] == pytest.approx(value, abs=1e-12)
  np.testing.assert_allclose(prover.markov_occupancy(policy), visits, atol=1e-12)
  for prefix in [(), (0,), (0, 1), (2, 0), (1, 1, 0), (0, 1, 1, 0)]:
    k, r = prover.live_state(prefix)
    assert k == _naive_state(prefix, prover.planted) and r == 5 - len(prefix)
    for a in range(4):
      want, _ = _brute_markov(prover, policy, prefix + (a,))
      assert q[k, r - 1, a] == pytest.approx(want, abs=1e-12), (prefix, a)
  assert prover.live_state((0, 1, 0)) is None and prover.live_state((2, 3)) is None
  with pytest.raises(ValueError, match="policy has shape"):
    prover.markov_values(policy[:, :4])
  with pytest.raises(ValueError, match="policy has shape"):
    prover.markov_occupancy(policy[:2])


def test_markov_occupancy_is_a_visitation_measure():
  prover = planted_lib.ProceduralProver(Y_STAR, 15, 5.0, 10)
  pi = prover.markov_policy()
  occ = prover.markov_occupancy(pi)  # [m, L], column r - 1
  hit = np.broadcast_to(prover.hit[:, None, :15], pi.shape)
  ends = hit.copy()
  ends[..., prover.eos] = True
  ends[:, 0] = True  # r = 1: the last token ends the episode whatever it is
  # Every episode ends exactly once, and it succeeds exactly when it ends on a hit.
  np.testing.assert_allclose(np.sum(occ[..., None] * pi * ends), 1.0, rtol=1e-12)
  np.testing.assert_allclose(np.sum(occ[..., None] * pi * hit), prover.value(()), rtol=1e-12)
  assert occ[0, prover.length - 1] == 1.0
  # The visits are those of sampled episodes (4 sigma of a Poisson count per state).
  n = 4000
  counts = np.zeros_like(occ)
  for response in prover.sample(np.random.default_rng(6), n):
    for h in range(len(response) + 1):
      state = prover.live_state(response[:h])
      if state is not None:
        counts[state[0], state[1] - 1] += 1
  assert np.all(np.abs(counts / n - occ) <= 4 * np.sqrt(occ / n) + 1e-9)


# -- task protocol ------------------------------------------------------------------------------


def test_split_determinism_and_shape():
  cfg = tasks.default_task_config("planted")
  assert cfg.planted == Y_STAR and cfg.vocab_size == 15 and cfg.length == 10
  with cfg.unlocked():
    cfg.num_train, cfg.num_eval = 40, 8
  a, b = tasks.make_task(cfg), tasks.make_task(cfg)
  with cfg.unlocked():
    cfg.seed = 1
  c = tasks.make_task(cfg)
  for name in base.SPLITS:
    assert a.split(name) == b.split(name)
    assert a.split(name) != c.split(name)
  assert len(a.split("train")) == 40 and len(a.split("test")) == 8
  assert a.split("validation") != a.split("test")
  for p in a.split("train"):
    assert a.encode_prompt(p) == [a.bos_id]
    sol = a.encode_solution(p)
    assert all(len(step) == 1 for step in p.steps)
    assert 1 <= len(sol) <= a.max_response_len
    assert a.eos_id not in sol[:-1] and (len(sol) == a.length or sol[-1] == a.eos_id)
    assert all(1 <= t <= a.eos_id for t in sol)
  arrays = base.sft_arrays(a, a.split("train"), a.max_prompt_len + a.max_response_len)
  assert arrays.inputs.max() < a.vocab_size


def test_ids_and_segmentation(task):
  assert task.vocab_size == 17 and task.eos_id == 15 and task.bos_id == 16 and task.pad_id == 0
  raw = (3, 6, 0, 3, 5, 14)
  ids = task.to_ids(raw)
  assert ids == [4, 7, 1, 4, 6, 15]
  assert task.from_ids(ids + [0, 0]) == list(raw)
  text = task.decode([task.bos_id] + ids + [0])
  assert text == "<s> 3 6 0 3 5 </s>"
  assert task.encode(text) == [task.bos_id] + ids
  for p in task.split("test"):
    sol = task.encode_solution(p)
    assert task.encode(task.decode(sol)) == sol
  spans = task.segment_steps(ids + [0, 0])
  assert spans == [(i, i + 1) for i in range(6)]
  assert task.segment_steps(task.to_ids((1,) * 10)) == [(i, i + 1) for i in range(10)]
  assert task.segment_steps(task.to_ids((1, 14, 2, 2))) == [(0, 1), (1, 2)]
  with pytest.raises(ValueError):
    task.to_ids([15])
