"""Rollouts job: MC Q from forked completions, exact planted Q, resume without loss."""

import sys

import numpy as np
import pytest

from pavjax import tasks
from pavjax import trajectories
from pavjax.main import run_job

sys.path.insert(0, ".")
from configs import rollouts as rollouts_config  # noqa: E402
from configs import sft as sft_config  # noqa: E402


@pytest.fixture(scope="module")
def toy_policy(tmp_path_factory):
  """A toy policy after a few SFT steps (imperfect, so Q varies)."""
  workdir = tmp_path_factory.mktemp("sft")
  config = sft_config.get_config("task=toy,size=test")
  config.train.num_steps = 30
  config.train.batch_size = 16
  config.sample.num_eval = 8
  config.sample.batch_size = 8
  run_job(config, str(workdir))
  return str(workdir / "checkpoints")


def _toy_rollouts(checkpoint, **overrides):
  config = rollouts_config.get_config("task=toy,size=test")
  config.policy.checkpoint = checkpoint
  config.rollouts.num_problems = 8
  config.rollouts.n_cov = 2
  config.rollouts.n_mc = 3
  config.rollouts.problems_per_shard = 4
  config.rollouts.seq_batch = 8
  config.rollouts.fork_batch = 8
  config.sample.batch_size = 8
  for key, value in overrides.items():
    config.rollouts[key] = value
  return config


def test_mc_rollouts_and_exact_resume(tmp_path, toy_policy):
  straight = run_job(_toy_rollouts(toy_policy), str(tmp_path / "a"))
  assert straight["complete"] and straight["shards_done"] == [0, 1]
  data = trajectories.load(str(tmp_path / "a" / "rollouts" / "train"))
  n = len(data["outcome"])
  assert n == 16  # 8 problems x n_cov 2
  mask = trajectories.prefix_mask(data)
  num_steps = trajectories.num_steps(data)
  for i in range(n):
    steps = num_steps[i]
    assert mask[i, :steps + 1].all() and not mask[i, steps + 1:].any()
    # Non-terminal prefixes have n_mc completions; the terminal one is the outcome.
    assert (data["mc_count"][i, :steps] == 3).all() and data["mc_count"][i, steps] == 0
    assert data["q_hat"][i, steps] == data["outcome"][i]
    np.testing.assert_allclose(data["q_hat"][i, :steps],
                               data["mc_success"][i, :steps] / 3.0, rtol=1e-6)
  # The question-only prefix is shared by a problem's seeds.
  for p in np.unique(data["problem"]):
    rows = data["problem"] == p
    assert len(set(data["q_hat"][rows, 0].tolist())) == 1
  budget = straight["budget"]
  # Column 0 ran once per problem and is shared by its seeds: count it once.
  first_seed = data["seed"] == 0
  ran = int(data["mc_count"][:, 1:].sum() + data["mc_count"][first_seed, 0].sum())
  assert budget["mc_rollouts"] == ran
  assert budget["seed_tokens"] == int((data["length"] - data["prompt_len"]).sum())

  # Halt after one shard, resume: the same dataset, no prefix lost or duplicated.
  first = run_job(_toy_rollouts(toy_policy, halt_after_shards=1), str(tmp_path / "b"))
  assert first["shards_done"] == [0] and not first["complete"]
  second = run_job(_toy_rollouts(toy_policy), str(tmp_path / "b"))
  assert second["complete"] and second["budget"] == budget
  resumed = trajectories.load(str(tmp_path / "b" / "rollouts" / "train"))
  assert sorted(resumed.columns) == sorted(data.columns)
  for key in trajectories.CORE + tuple(sorted(data.columns)):
    np.testing.assert_array_equal(resumed[key], data[key], err_msg=key)
  # A complete dataset is not recomputed; a changed config is refused.
  again = run_job(_toy_rollouts(toy_policy), str(tmp_path / "b"))
  assert again["complete"]
  from pavjax.config_lib import ConfigError
  with pytest.raises(ConfigError, match="another config"):
    run_job(_toy_rollouts(toy_policy, n_mc=5), str(tmp_path / "b"))


def test_planted_procedural_rollouts_hold_exact_q(tmp_path):
  config = rollouts_config.get_config("task=planted,size=test,policy=procedural,prover=procedural")
  config.rollouts.num_problems = 6
  config.rollouts.n_cov = 5
  config.rollouts.problems_per_shard = 3
  out = run_job(config, str(tmp_path))
  assert out["complete"]
  data = trajectories.load(str(tmp_path / "rollouts" / "train"))
  task = tasks.make_task(config.task)
  prover = task.prover(config.prover.gamma)
  num_steps = trajectories.num_steps(data)
  for i in range(len(data["outcome"])):
    start, end = data["prompt_len"][i], data["length"][i]
    raw = task.from_ids(data["tokens"][i, start:end])
    exact = prover.prefix_values(raw)
    steps = num_steps[i]
    np.testing.assert_allclose(data["q_hat"][i, :steps + 1], exact[:steps + 1], atol=1e-6)
