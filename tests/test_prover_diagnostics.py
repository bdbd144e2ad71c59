"""Prover diagnostics: Theorem 3.1 terms and NPG gains on the planted task, rollout sweeps."""

import numpy as np
import pytest

from pavjax import prover_diagnostics as pdx
from pavjax import trajectories
from pavjax.tasks import planted as planted_lib

GAMMAS = tuple(range(1, 18))


@pytest.fixture(scope="module")
def task():
  return planted_lib.PlantedTask(num_train=1, num_eval=1)


@pytest.fixture(scope="module")
def rows(task):
  return pdx.planted_sweep(task, base_gamma=5.0, gammas=GAMMAS, bok_ks=(1, 2, 4), lr=1.0)


def _row(rows, kind, param):
  (row,) = [r for r in rows if r["kind"] == kind and r["param"] == param]
  return row


def test_mu_equals_pi_and_bok1(rows):
  base = _row(rows, "gamma", 5)
  # With mu = pi, A^mu = A^pi: both terms are E[(A^pi)^2].
  np.testing.assert_allclose(base["alignment"], base["adv_pi_sq"], rtol=1e-12)
  np.testing.assert_allclose(base["distinguishability"], base["adv_pi_sq"], rtol=1e-12)
  np.testing.assert_allclose(base["first_order"], 2 * base["adv_pi_sq"], rtol=1e-12)
  # BoK with K = 1 is pi itself.
  bok1 = _row(rows, "bok", 1)
  for key in ("distinguishability", "alignment", "bound", "improvement", "v_mu_root"):
    np.testing.assert_allclose(bok1[key], base[key], rtol=1e-9, err_msg=key)
  # The outcome-only baseline has no prover signal.
  outcome = _row(rows, "outcome", 0)
  assert outcome["distinguishability"] == 0.0 and outcome["alignment"] == 0.0
  assert outcome["flat"] and not base["flat"]
  assert outcome["gain_vs_outcome"] == 0.0


def test_planted_sweep_context_is_the_exact_base_policy(task, rows):
  # The shared context is mu_5's own DP value and its expected live decisions.
  base = task.prover(5.0)
  occ = base.markov_occupancy(base.markov_policy())
  for row in rows:
    assert row["v_pi_root"] == base.value(())
    np.testing.assert_allclose(row["mass"], occ.sum(), rtol=1e-12)
  for gamma in GAMMAS:
    assert _row(rows, "gamma", gamma)["v_mu_root"] == task.prover(float(gamma)).value(())


def test_npg_improvement_is_first_order_exact(task):
  """Exact gain >= 0 and equal to lr * (E[(A^pi)^2] + alpha * alignment) + O(lr^2)."""
  small, half = (pdx.planted_sweep(task, gammas=GAMMAS, bok_ks=(2, 4), lr=lr, alpha=2.0)
                 for lr in (1e-2, 5e-3))
  for a, b in zip(small, half):
    assert a["improvement"] > 0 and b["improvement"] > 0, a
    err_a = a["improvement"] - a["first_order"]
    err_b = b["improvement"] - b["first_order"]
    assert abs(err_a) < 0.05 * a["first_order"], a
    # Halving lr quarters the gap: the remainder is second order.
    np.testing.assert_allclose(err_a / err_b, 4.0, rtol=0.05, err_msg=str(a["param"]))
    np.testing.assert_allclose(a["first_order"],
                               a["lr"] * (a["adv_pi_sq"] + a["alpha"] * a["alignment"]),
                               rtol=1e-12)


def test_bok_distinguishability_grows_with_k(rows):
  # Q^pi is small here (V^pi(root) ~ 0.005), the regime where BoK stretches A (Sec. 3).
  d = [_row(rows, "bok", k)["distinguishability"] for k in (1, 2, 4)]
  assert d[0] < d[1] < d[2]


def _hand_table():
  """2 problems x 3 seeds; problem 0 has 2-token steps, problem 1 a 2-token prompt."""
  nan = np.nan
  return trajectories.Trajectories(
      # problem 0: prompt [9]; seeds 0 and 1 share the first step (1 1), seed 2 does not.
      # problem 1: prompt [8 9]; one one-token step each, seeds 0 and 2 identical.
      tokens=np.array([[9, 1, 1, 2, 2], [9, 1, 1, 3, 3], [9, 2, 2, 1, 1],
                       [8, 9, 4, 0, 0], [8, 9, 5, 0, 0], [8, 9, 4, 0, 0]], np.int32),
      prompt_len=np.array([1, 1, 1, 2, 2, 2], np.int32),
      length=np.array([5, 5, 5, 3, 3, 3], np.int32),
      prefix_ends=np.array([[0, 2, 4], [0, 2, 4], [0, 2, 4], [1, 2, -1], [1, 2, -1],
                            [1, 2, -1]], np.int32),
      outcome=np.array([1, 0, 0, 1, 0, 1], np.float32),
      reason=np.zeros(6, np.int32),
      problem=np.array([0, 0, 0, 1, 1, 1], np.int32),
      finished=np.zeros(6, bool),
      columns={
          "q_hat": np.array([[0.5, 0.6, 1.0], [0.5, 0.4, 0.0], [0.5, 0.2, 0.0],
                             [0.25, 1.0, nan], [0.25, 0.0, nan], [0.25, 1.0, nan]],
                            np.float32),
          "seed": np.array([0, 1, 2, 0, 1, 2], np.int32),
          "mc_success": np.zeros((6, 3), np.int32),
          "mc_count": np.zeros((6, 3), np.int32),
      })


def test_sibling_groups_of_the_hand_table():
  # Children row by row: (row 0: P0, P1), (row 1: P0, P1), (row 2: P0, "9 2 2"), rows 3-5: P3.
  group, child_q, parent_q = pdx.sibling_groups(_hand_table())
  np.testing.assert_array_equal(group, [0, 1, 0, 1, 0, 2, 3, 3, 3])
  np.testing.assert_allclose(child_q, [0.6, 1.0, 0.4, 0.0, 0.2, 0.0, 1.0, 0.0, 1.0], rtol=1e-6)
  np.testing.assert_allclose(parent_q, [0.5, 0.5, 0.2, 0.25], rtol=1e-6)


def test_rollout_sweep_matches_hand_computation():
  # Parents with >= 2 children (q_hat is float32, hence rtol 1e-5):
  #   P0 = problem 0 question: children Q 0.6 0.4 0.2, parent 0.5
  #   P1 = problem 0 after "1 1": children Q 1.0 0.0 (seeds 0, 1), parent mean(0.6, 0.4) = 0.5
  #   P2 = problem 1 question: children Q 1 0 1, parent 0.25
  # ("2 2" of problem 0 has one child and is dropped.)
  data = _hand_table()
  out = {r["param"]: r for r in pdx.rollout_sweep(data, bok_ks=(1, 2))}
  for r in out.values():
    assert (r["num_parents"], r["num_children"]) == (3, 8)
  # K = 1: A = [0.1, -0.1, -0.3], [0.5, -0.5], [0.75, -0.25, 0.75].
  var = (0.08 / 3, 0.25, 2 / 9)
  sq = (0.11 / 3, 0.25, 1.1875 / 3)
  np.testing.assert_allclose(out[1]["distinguishability"], np.mean(var), rtol=1e-5)
  np.testing.assert_allclose(out[1]["alignment"], np.mean(sq), rtol=1e-5)
  np.testing.assert_allclose(out[1]["adv_pi_var"], np.mean(var), rtol=1e-5)
  # K = 2: bok(q) = 1 - (1 - q)^2: 0.5 -> 0.75, 0.6 -> 0.84, 0.4 -> 0.64, 0.2 -> 0.36,
  # 0.25 -> 0.4375. A^mu = [0.09, -0.11, -0.39], [0.25, -0.75], [0.5625, -0.4375, 0.5625].
  var2 = (np.var([0.09, -0.11, -0.39]), 0.25, 2 / 9)
  cross2 = ((0.09 * 0.1 + 0.11 * 0.1 + 0.39 * 0.3) / 3, (0.25 * 0.5 + 0.75 * 0.5) / 2,
            (2 * 0.5625 * 0.75 + 0.4375 * 0.25) / 3)
  np.testing.assert_allclose(out[2]["distinguishability"], np.mean(var2), rtol=1e-5)
  np.testing.assert_allclose(out[2]["alignment"], np.mean(cross2), rtol=1e-5)
  np.testing.assert_allclose(out[2]["bound"], np.mean(var2) + np.mean(cross2), rtol=1e-5)


def test_rollout_siblings_need_identical_prefixes_and_same_problem():
  data = _hand_table()
  # Same tokens in another problem are not siblings; a one-token change splits a parent.
  data.tokens[1, 2] = 7  # seed 1 of problem 0 now starts "1 7": P1 loses a child
  (row,) = pdx.rollout_sweep(data, bok_ks=(1,))
  assert (row["num_parents"], row["num_children"]) == (2, 6)
  data.problem[:] = 0  # problem 1's seeds still differ in prompt tokens
  (row,) = pdx.rollout_sweep(data, bok_ks=(1,))
  assert row["num_parents"] == 2


def test_rollout_sweep_rejects_q_hat_of_another_width():
  data = _hand_table()
  data = data.with_columns(q_hat=data["q_hat"][:, :2])
  with pytest.raises(ValueError, match="q_hat has shape"):
    pdx.rollout_sweep(data, bok_ks=(1,))


def _hand_prover_table():
  """The seeds of `_hand_table` with a prover's Q_hat, given by hand.

  Terminal prefixes keep the seed's outcome (no completion is run from them);
  column 0 is one value per problem, as rollouts broadcast it.
  """
  return _hand_table().with_columns(
      q_hat=np.array([[0.8, 0.9, 1.0], [0.8, 0.7, 0.0], [0.8, 0.6, 0.0],
                      [0.5, 1.0, np.nan], [0.5, 0.0, np.nan], [0.5, 1.0, np.nan]], np.float32))


def test_prover_sweep_matches_hand_computation():
  # Same parents and A^pi as in test_rollout_sweep_matches_hand_computation; with the
  # prover's Q_hat:
  #   P0: children 0.9 0.7 0.6, parent 0.8               -> A^mu = [0.1, -0.1, -0.2]
  #   P1: children 1.0 0.0, parent mean(0.9, 0.7) = 0.8   -> A^mu = [0.2, -0.8]
  #   P2: children 1 0 1, parent 0.5                      -> A^mu = [0.5, -0.5, 0.5]
  # A^pi = [0.1, -0.1, -0.3], [0.5, -0.5], [0.75, -0.25, 0.75].
  (row,) = pdx.prover_sweep(_hand_table(), {"ckpt": _hand_prover_table()})
  assert (row["kind"], row["param"]) == ("checkpoint", "ckpt")
  assert (row["num_parents"], row["num_children"]) == (3, 8)
  var = (np.var([0.1, -0.1, -0.2]), 0.25, 2 / 9)
  cross = (0.08 / 3, (0.2 * 0.5 + 0.8 * 0.5) / 2, (2 * 0.5 * 0.75 + 0.5 * 0.25) / 3)
  np.testing.assert_allclose(row["distinguishability"], np.mean(var), rtol=1e-5)
  np.testing.assert_allclose(row["alignment"], np.mean(cross), rtol=1e-5)
  np.testing.assert_allclose(row["bound"], np.mean(var) + np.mean(cross), rtol=1e-5)
  np.testing.assert_allclose(row["adv_pi_var"], np.mean((0.08 / 3, 0.25, 2 / 9)), rtol=1e-5)
  assert not row["flat"]


def test_prover_equal_to_base_is_the_k1_row():
  base = _hand_table()
  (bok1,) = pdx.rollout_sweep(base, bok_ks=(1,))
  rows = pdx.prover_sweep(base, {"self": _hand_table(), "other": _hand_prover_table()})
  assert [r["param"] for r in rows] == ["self", "other"]
  for key in ("distinguishability", "alignment", "bound", "adv_pi_var"):
    np.testing.assert_allclose(rows[0][key], bok1[key], rtol=1e-12, err_msg=key)
  for key in ("flat", "num_parents", "num_children"):
    assert rows[0][key] == bok1[key], key


@pytest.mark.parametrize("field,array,index,value", [
    ("seed", "seed", 4, 2), ("problem", "problem", 2, 1), ("tokens", "tokens", (1, 3), 7),
    # Row 0 loses its second step: the derived step count is the first thing to differ.
    ("num_steps", "prefix_ends", (0, 2), -1),
    ("prompt_len", "prompt_len", 0, 2), ("prefix_ends", "prefix_ends", (0, 1), 1),
])
def test_prover_sweep_rejects_unpaired_seeds(field, array, index, value):
  prover = _hand_prover_table()
  target = prover[array] if array in prover.columns else getattr(prover, array)
  target[index] = value
  with pytest.raises(ValueError, match=f"'ckpt'.*first mismatch in '{field}'"):
    pdx.prover_sweep(_hand_table(), {"ckpt": prover})


def test_prover_sweep_rejects_other_row_counts_and_missing_q():
  short = _hand_prover_table().take(np.arange(5))
  with pytest.raises(ValueError, match="5 seed rows vs 6"):
    pdx.prover_sweep(_hand_table(), {"ckpt": short})
  holed = _hand_prover_table()
  holed["q_hat"][1, 1] = np.nan
  with pytest.raises(ValueError, match="row 1, prefix column 1"):
    pdx.prover_sweep(_hand_table(), {"ckpt": holed})


def test_rollout_sweep_reads_a_saved_table(tmp_path):
  # What report.py and the CLI do: the table round-trips through disk unchanged.
  trajectories.save(str(tmp_path / "base"), _hand_table(), "test")
  loaded = trajectories.load(str(tmp_path / "base"))
  assert pdx.rollout_sweep(loaded, bok_ks=(1, 2)) == pdx.rollout_sweep(_hand_table(),
                                                                        bok_ks=(1, 2))
