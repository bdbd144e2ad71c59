"""Advantage estimators, the RL loss and batch assembly on hand-computed arrays."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pavjax import trajectories
from pavjax.rl import estimators
from pavjax.tasks.toy import ToyTask

RETURNS = jnp.array([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0], [2.0, 1.0, 1.0], [0.5, 0.0, 0.0]])
MASK = jnp.array([[1, 1, 0], [1, 0, 0], [1, 1, 1], [1, 0, 0]], jnp.float32)
OUTCOME = jnp.array([1.0, 0.0, 1.0, 0.0])


def test_group_baselines_by_hand():
  # Groups of 2: outcomes (1, 0) and (1, 0). group_mean subtracts 0.5 from every row.
  got = estimators.get("group_mean")(RETURNS, MASK, OUTCOME, None, 2)
  np.testing.assert_allclose(got, (RETURNS - 0.5) * MASK)
  # rloo: each row's baseline is the other row's outcome: 0 for rows 0, 2 and 1 for 1, 3.
  got = estimators.get("rloo")(RETURNS, MASK, OUTCOME, None, 2)
  np.testing.assert_allclose(got, (RETURNS - jnp.array([0.0, 1.0, 0.0, 1.0])[:, None]) * MASK)
  np.testing.assert_allclose(estimators.get("none")(RETURNS, MASK, OUTCOME, None, 2),
                             RETURNS * MASK)
  values = jnp.full(RETURNS.shape, 0.25)
  np.testing.assert_allclose(estimators.get("reinforce_value")(RETURNS, MASK, OUTCOME, values, 2),
                             (RETURNS - 0.25) * MASK)
  with pytest.raises(ValueError, match="group_size"):
    estimators.get("rloo")(RETURNS, MASK, OUTCOME, None, 3)
  with pytest.raises(KeyError, match="registered"):
    estimators.get("ppo")


def test_value_baseline_passes_no_gradient_to_the_policy_term():
  values = jnp.full(RETURNS.shape, 0.25)
  g = jax.grad(lambda v: jnp.sum(estimators.get("reinforce_value")(RETURNS, MASK, OUTCOME, v, 2)))
  np.testing.assert_array_equal(g(values), 0.0)


def test_policy_loss_by_hand_and_empty_mask_is_a_finite_zero():
  logp = jnp.log(jnp.array([[0.5, 0.25, 1.0]]))
  adv = jnp.array([[1.0, -2.0, 7.0]])
  mask = jnp.array([[1.0, 1.0, 0.0]])
  loss, stats = estimators.policy_loss(logp, adv, mask)
  np.testing.assert_allclose(loss, -(np.log(0.5) - 2 * np.log(0.25)) / 2, rtol=1e-6)
  assert "rl/kl" not in stats
  # KL term: exp(-d) - 1 + d with d = logp - ref: zero where equal, positive elsewhere.
  ref = logp.at[0, 1].set(jnp.log(0.5))
  _, stats = estimators.policy_loss(logp, adv, mask, ref_logp=ref, kl_coef=0.1)
  d = np.log(0.25) - np.log(0.5)
  np.testing.assert_allclose(stats["rl/kl"], (np.exp(-d) - 1 + d) / 2, rtol=1e-5)
  # Every row excluded (all truncated): loss and gradient are finite zeros.
  empty = jnp.zeros_like(mask)
  f = lambda lp: estimators.policy_loss(lp, adv, empty, ref_logp=ref, kl_coef=0.1)[0]
  assert float(f(logp)) == 0.0
  np.testing.assert_array_equal(jax.grad(f)(logp), 0.0)
  # The clamp bounds a runaway log-ratio.
  big = estimators.kl_to_reference(jnp.array([100.0]), jnp.array([0.0]), clamp=10.0)
  np.testing.assert_allclose(big, np.exp(-10.0) - 1 + 10.0, rtol=1e-6)


def test_arith_procedural_prover_gives_exact_step_advantages():
  """rl.ProverValues(kind=procedural) on arith: Q^mu of each prefix and A^mu by hand (p = 0.5)."""
  import types
  import ml_collections
  from pavjax.jobs import rl as rl_job
  from pavjax.tasks import arith

  cfg = arith.default_config()
  cfg.update(tokenizer="char", num_steps=2, max_operand=9, num_train=50, num_eval=10)
  task = arith.make(cfg)
  problem = task.split("train")[0]
  ref = list(problem.steps)  # L = 3 lines
  wrong = [ref[0], ref[1][:-1] + str((int(ref[1][-1]) + 1) % 10), ref[2]]
  early = ref[:2]  # stops (EOS) before the answer line: Rex = 0
  rows = (ref, wrong, early)
  responses = [task.tokenizer.encode("\n".join(lines)) + [task.eos_id] for lines in rows]
  prompt = task.encode_prompt(problem)
  ro = trajectories.from_responses(task, [prompt] * 3, responses, [problem] * 3, [0] * 3,
                                   width=128, max_steps=4)
  np.testing.assert_array_equal(ro.outcome, [1.0, 1.0, 0.0])  # the wrong line is not graded
  prover = rl_job.ProverValues(types.SimpleNamespace(task=task), ml_collections.ConfigDict(
      dict(kind="procedural", bok_k=4, step_accuracy=0.5, gamma=10.0, verifier="")))
  q = prover.q_values(ro, [problem] * 3)
  # After the last step a finished response is worth its outcome: the wrong row's
  # right answer line lifts it from 0 (mu never repairs) to 1; the early stop
  # drops it from p^(L-2) = 0.5 to 0.
  np.testing.assert_allclose(q, [[0.125, 0.25, 0.5, 1.0, 0.0],
                                 [0.125, 0.25, 0.0, 1.0, 0.0],
                                 [0.125, 0.25, 0.0, 0.0, 0.0]])
  adv = rl_job.dense_terms("pav", q, trajectories.step_mask(ro))
  np.testing.assert_allclose(adv, [[0.125, 0.25, 0.5, 0.0],
                                   [0.125, -0.25, 1.0, 0.0],
                                   [0.125, -0.25, 0.0, 0.0]])


def test_planted_procedural_prover_gives_exact_prefix_values():
  """rl.ProverValues(kind=procedural) on planted: mu_gamma's exact V of every token prefix."""
  import types
  import ml_collections
  from pavjax.jobs import rl as rl_job
  from pavjax.tasks import planted

  task = planted.PlantedTask(num_train=8, num_eval=8)
  problem = task.split("train")[0]
  prompt = task.encode_prompt(problem)
  raw = [[1, 3, 6, 0, 3, 5, task.eos_token], [3, 6, 2]]  # a win, then an unfinished miss
  responses = [task.to_ids(r) for r in raw]
  ro = trajectories.from_responses(task, [prompt] * 2, responses, [problem] * 2, [0] * 2,
                                   width=16, max_steps=10)
  prover = rl_job.ProverValues(types.SimpleNamespace(task=task), ml_collections.ConfigDict(
      dict(kind="procedural", bok_k=4, step_accuracy=0.5, gamma=10.0, verifier="")))
  q = prover.q_values(ro, [problem] * 2)
  mu = task.prover(10.0)
  for i, r in enumerate(raw):
    want = [mu.value(r[:h]) for h in range(len(r) + 1)]
    np.testing.assert_allclose(q[i, :len(r) + 1], want, rtol=1e-6)
    assert not q[i, len(r) + 1:].any()  # no such prefix
  assert q[0, 6] == 1.0  # the planted sequence is complete after 6 tokens


def test_procedural_prover_on_a_task_without_one_names_the_field():
  import types
  import ml_collections
  from pavjax import config_lib
  from pavjax.jobs import rl as rl_job

  with pytest.raises(config_lib.ConfigError, match=r"rl\.prover\.kind.*'toy' has no procedural"):
    rl_job.ProverValues(types.SimpleNamespace(task=ToyTask()), ml_collections.ConfigDict(
        dict(kind="procedural", bok_k=4, step_accuracy=0.5, gamma=10.0, verifier="")))
