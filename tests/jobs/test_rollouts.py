"""Rollouts job: MC Q from forked completions, exact planted Q, resume without loss."""

import sys

import numpy as np
import pytest

from pavjax import config_lib
from pavjax import models
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


def test_continuous_batching_gives_the_static_rollouts(tmp_path, toy_policy, monkeypatch):
  """rollouts.batching=continuous: the same completions (keys per item), so the same table."""
  from pavjax.jobs import rollouts as rollouts_job  # pylint: disable=import-outside-toplevel
  completions = {}  # run name -> {(row, column): the n_mc completions' tokens}
  score = rollouts_job.RolloutRunner._score  # pylint: disable=protected-access

  def recording(self, table, problems, todo, out, first, outcomes):
    got = completions.setdefault(self.config.rollouts.batching + str(
        self.config.rollouts.continuous_blocks), {})
    for k, (i, col, _) in enumerate(todo):
      rows = range(first + k * self.config.rollouts.n_mc,
                   first + (k + 1) * self.config.rollouts.n_mc)
      got[(i, col)] = [out.tokens[r, :int(out.lengths[r])].tolist() for r in rows]
    return score(self, table, problems, todo, out, first, outcomes)

  monkeypatch.setattr(rollouts_job.RolloutRunner, "_score", recording)
  # Rows round up to the 8 devices: seq_batch 8 over a shard of 8 problems x 2 seeds is 2
  # prefill blocks, decoded 1 by 1, together, or together in a group padded to 3 blocks.
  kw = dict(fork_batch=8, seq_batch=8, problems_per_shard=8)
  static = run_job(_toy_rollouts(toy_policy, **kw), str(tmp_path / "s"))
  a = trajectories.load(str(tmp_path / "s" / "rollouts" / "train"))
  for blocks in (1, 2, 3):
    cont = run_job(_toy_rollouts(toy_policy, batching="continuous", continuous_blocks=blocks,
                                 **kw), str(tmp_path / f"c{blocks}"))
    assert static["budget"] == cont["budget"]
    b = trajectories.load(str(tmp_path / f"c{blocks}" / "rollouts" / "train"))
    for key in trajectories.CORE + tuple(sorted(a.columns)):
      np.testing.assert_array_equal(b[key], a[key], err_msg=f"{key}, {blocks} blocks")
    assert completions[f"continuous{blocks}"] == completions["static4"], blocks
  assert len(completions["static4"]) > 8
  # Q varies over prefixes: the comparison is not between two constant tables.
  assert len(np.unique(a["q_hat"][np.isfinite(a["q_hat"])])) > 2


def test_bf16_rollouts_run(tmp_path, toy_policy):
  """rollouts.dtype=bfloat16: every prefix gets its n_mc completions (from a bf16 prover)."""
  out = run_job(_toy_rollouts(toy_policy, dtype="bfloat16", batching="continuous"),
                str(tmp_path))
  assert out["complete"]
  data = trajectories.load(str(tmp_path / "rollouts" / "train"))
  steps = trajectories.num_steps(data)
  for i in range(len(data["outcome"])):
    assert (data["mc_count"][i, :steps[i]] == 3).all()
  with pytest.raises(config_lib.ConfigError, match="rollouts.dtype"):
    run_job(_toy_rollouts(toy_policy, dtype="float16"), str(tmp_path / "bad"))


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


def test_policy_and_prover_each_run_in_their_own_size(tmp_path, toy_policy):
  """The seed policy (size=test) and a prover of another size (tiny): each checkpoint
  is built in the architecture its run recorded, whatever the rollouts job's model."""
  prover_dir = tmp_path / "prover"
  config = sft_config.get_config("task=toy,size=tiny")
  config.train.num_steps, config.train.batch_size = 10, 16
  config.sample.num_eval, config.sample.batch_size = 8, 8
  run_job(config, str(prover_dir))
  rollouts = _toy_rollouts(toy_policy)
  rollouts.model = config_lib.model_config("small")  # neither checkpoint's size
  rollouts.prover.kind, rollouts.prover.checkpoint = "checkpoint", str(prover_dir / "checkpoints")
  out = run_job(rollouts, str(tmp_path / "r"))
  sizes = {name: config_lib.model_config(name) for name in ("test", "tiny")}
  params = {name: models.model_config_from(cfg, tasks.make_task(rollouts.task).vocab_size
                                           ).num_params() for name, cfg in sizes.items()}
  assert out["complete"]
  assert out["models"]["policy"] == {"checkpoint": toy_policy, "params": params["test"]}
  assert out["models"]["prover"]["params"] == params["tiny"] != params["test"]
  b = out["budget"]
  assert b["seed_tokens"] > 0 and b["mc_tokens"] > 0 and b["prefill_tokens"] > 0
  assert out["flops"] == 2.0 * (params["test"] * b["seed_tokens"]
                                + params["tiny"] * (b["prefill_tokens"] + b["mc_tokens"]))
  data = trajectories.load(str(tmp_path / "r" / "rollouts" / "train"))
  assert (data["mc_count"][:, 0] == 3).all()  # the prover completed every question


def _planted_rollouts(seeding):
  config = rollouts_config.get_config("task=planted,size=test,policy=procedural,prover=procedural")
  config.rollouts.num_problems, config.rollouts.n_cov = 6, 4
  config.rollouts.problems_per_shard = 3
  config.rollouts.seeding = seeding
  config.rollouts.pit_threshold, config.rollouts.pit_prefixes = 0.1, 2
  config.rollouts.pit_samples = 8
  return config


def test_first_pit_seeding_on_planted_against_the_exact_values(tmp_path):
  """Planted's exact policy and prover: the rows first-pit adds branch from the highest
  prefixes with Q >= the threshold, fail, and end at their first prefix of exact value 0;
  every label is the exact value; the random seeds are the random run's."""
  random_out = run_job(_planted_rollouts("random"), str(tmp_path / "random"))
  config = _planted_rollouts("first_pit")
  out = run_job(config, str(tmp_path / "pit"))
  assert out["complete"] and out["budget"]["pit_tokens"] > 0
  assert "pit_tokens" not in random_out["budget"]
  plain = trajectories.load(str(tmp_path / "random" / "rollouts" / "train"))
  data = trajectories.load(str(tmp_path / "pit" / "rollouts" / "train"))
  task = tasks.make_task(config.task)
  prover = task.prover(config.prover.gamma)
  pit_from = data["pit_from"]
  seeds, pits = np.flatnonzero(pit_from < 0), np.flatnonzero(pit_from >= 0)
  assert len(seeds) == len(plain["outcome"]) == 24 and len(pits) > 0
  np.testing.assert_array_equal(data["tokens"][seeds], plain["tokens"])
  np.testing.assert_array_equal(data["q_hat"][seeds], plain["q_hat"])
  steps = trajectories.num_steps(data)
  exact = []
  for i in range(len(pit_from)):
    raw = task.from_ids(data["tokens"][i, data["prompt_len"][i]:data["length"][i]])
    exact.append(prover.prefix_values(raw))
    np.testing.assert_allclose(data["q_hat"][i, :steps[i] + 1], exact[i][:steps[i] + 1],
                               atol=1e-6)
    assert np.isnan(data["q_hat"][i, steps[i] + 1:]).all()
  # Which prefixes were continued: per problem, the highest (value, row, step) candidates.
  chosen = {}
  for i in seeds:
    for c in range(1, steps[i]):
      if data["q_hat"][i, c] >= 0.1:
        chosen.setdefault(data["problem"][i], []).append((-data["q_hat"][i, c], i, c))
  chosen = {p: sorted(c)[:2] for p, c in chosen.items()}
  for k in pits:
    b = pit_from[k]
    origins = [i for _, i, c in chosen[data["problem"][k]] if c == b and np.array_equal(
        data["tokens"][i, :data["prefix_ends"][i, b] + 1],
        data["tokens"][k, :data["prefix_ends"][k, b] + 1])]
    assert origins, k  # it shares its first b steps with a chosen high-value prefix
    assert data["outcome"][k] == 0.0  # a failed continuation
    assert data["seed"][k] == data["seed"][origins[0]]
    later = data["q_hat"][k, b + 1:steps[k]]
    assert (later > 0).all(), k  # no pit before its last prefix ...
    if not data["finished"][k]:  # ... and a cut row ends at its first pit
      assert data["q_hat"][k, steps[k]] == 0.0 and exact[k][steps[k]] == 0.0
  # Some row was cut at a pit: no EOS, and shorter than the horizon.
  lengths = data["length"] - data["prompt_len"]
  assert any(not data["finished"][k] and lengths[k] < prover.length for k in pits)


def test_first_pit_continuations_by_continuous_batching_are_the_static_ones(tmp_path,
                                                                            toy_policy):
  """sample.batching=continuous samples the seeds and the first-pit continuations
  through arenas (each item with its static row's key): the same table, pits included."""
  tables = {}
  for batching in ("static", "continuous"):
    config = _toy_rollouts(toy_policy, seeding="first_pit", pit_threshold=0.0, pit_prefixes=2,
                           pit_samples=4)
    config.sample.batching, config.sample.continuous_blocks = batching, 3
    out = run_job(config, str(tmp_path / batching))
    tables[batching] = trajectories.load(str(tmp_path / batching / "rollouts" / "train"))
    tables[batching + "/budget"] = out["budget"]
  a, b = tables["static"], tables["continuous"]
  assert (a["pit_from"] >= 0).sum() > 0 and tables["static/budget"]["pit_tokens"] > 0
  assert tables["static/budget"] == tables["continuous/budget"]
  for key in trajectories.CORE + tuple(sorted(a.columns)):
    np.testing.assert_array_equal(b[key], a[key], err_msg=key)


def test_first_pit_with_a_transformer_policy_and_mc_labels(tmp_path, toy_policy):
  config = _toy_rollouts(toy_policy, seeding="first_pit", pit_threshold=0.0, pit_prefixes=2,
                         pit_samples=4)
  out = run_job(config, str(tmp_path))
  data = trajectories.load(str(tmp_path / "rollouts" / "train"))
  pits = np.flatnonzero(data["pit_from"] >= 0)
  assert out["budget"]["pit_tokens"] > 0 and len(pits) > 0
  steps = trajectories.num_steps(data)
  for k in pits:
    b = data["pit_from"][k]
    assert data["outcome"][k] == 0.0
    # Its own prefixes after the branch: n_mc completions each, no pit before the last.
    assert (data["mc_count"][k, b + 1:steps[k]] == 3).all()
    assert (data["q_hat"][k, b + 1:steps[k]] > 0).all()
    np.testing.assert_allclose(data["q_hat"][k, b + 1:steps[k]],
                               data["mc_success"][k, b + 1:steps[k]] / 3.0, rtol=1e-6)
    # The shared prefixes carry the labels of a random seed with the same tokens.
    same = [i for i in np.flatnonzero(data["pit_from"] < 0)
            if data["problem"][i] == data["problem"][k] and np.array_equal(
                data["tokens"][i, :data["prefix_ends"][i, b] + 1],
                data["tokens"][k, :data["prefix_ends"][k, b] + 1])]
    assert same and any(np.array_equal(data["q_hat"][i, :b + 1], data["q_hat"][k, :b + 1])
                        for i in same)
    if not data["finished"][k] and data["q_hat"][k, steps[k]] == 0 and \
        data["mc_count"][k, steps[k]] == 3:  # cut at a pit: measured there as 0
      assert data["mc_success"][k, steps[k]] == 0
