"""RL job: a toy smoke run with every reward variant, exact resume, and 8 devices == 1."""

import functools
import json
import os
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pavjax import run_record
from pavjax import config_lib
from pavjax import metrics
from pavjax import sharding as shd
from pavjax import tasks
from pavjax import training
from pavjax import trajectories
from pavjax.jobs import rl
from pavjax.main import run_job
from pavjax.testing import restore_state
from pavjax.models import Transformer, TransformerConfig

sys.path.insert(0, ".")
from configs import rl as rl_config  # noqa: E402


def _config(ckpt, reward="pav", prover="bok", **train):
  config = rl_config.get_config(f"task=toy,size=test,reward={reward},prover={prover}")
  config.init_from = ckpt
  config.rl.prover.verifier = ckpt  # the SFT model's (untrained) value head as Q^pi
  config.rl.eval_pass_ns = "1,2"
  config.train.num_steps = 4
  config.train.log_every = 1
  config.train.eval_every = 0
  config.checkpoint.every = 2
  config.sample.num_eval = 8
  config.sample.batch_size = 8
  for k, v in train.items():
    config.train[k] = v
  return config


@pytest.mark.parametrize("reward", ["outcome", "pav", "q_bonus"])
def test_smoke_logs_accuracy_beside_dense_reward(tmp_path, toy_policy, reward):
  out = run_job(_config(toy_policy, reward), str(tmp_path))
  assert out["step"] == 4 and out["origin"].startswith("init_from")
  rows = metrics.read_jsonl(str(tmp_path / "metrics.jsonl"))
  assert [r["step"] for r in rows] == [1, 2, 3, 4]
  for r in rows:
    assert 0.0 <= r["rl/accuracy"] <= 1.0 and np.isfinite(r["train/loss"])
    assert "rl/dense_reward" in r and "rl/kl" in r
    if reward == "outcome":
      assert r["rl/dense_reward"] == 0.0
  assert {"accuracy", "pass_at_1", "pass_at_2"} <= set(out["eval"])
  assert out["initial_eval"] is not None and (tmp_path / "rl.png").exists()


def test_bad_reward_and_batch_name_the_field(tmp_path, toy_policy):
  config = _config(toy_policy)
  config.rl.reward = "bonus"
  with pytest.raises(config_lib.ConfigError, match="rl.reward"):
    run_job(config, str(tmp_path / "a"))
  config = _config(toy_policy, batch_size=24)
  with pytest.raises(config_lib.ConfigError, match="train.batch_size"):
    run_job(config, str(tmp_path / "b"))
  # 8 devices split the prompts: 4 prompts x 4 samples fill a 16-row batch but not them.
  config = _config(toy_policy, batch_size=16)
  config.rl.num_prompts, config.rl.group_size = 4, 4
  with pytest.raises(config_lib.ConfigError,
                     match=r"rl.num_prompts: 4 is not a multiple of the data-parallel size 8"):
    run_job(config, str(tmp_path / "c"))


def test_halt_and_resume_equals_an_uninterrupted_run(tmp_path, toy_policy):
  run_job(_config(toy_policy), str(tmp_path / "full"))
  run_job(_config(toy_policy, halt_at_step=2), str(tmp_path / "cut"))
  resumed = run_job(_config(toy_policy), str(tmp_path / "cut"))
  assert resumed["origin"].startswith("init_from") and resumed["step"] == 4
  assert run_record.attempt_origins(str(tmp_path / "cut"))[-1] == "checkpoint step 2"
  a, b = restore_state(str(tmp_path / "full"), 4), restore_state(str(tmp_path / "cut"), 4)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_continuous_batching_samples_the_static_batches(tmp_path, toy_policy):
  """sample.batching=continuous: each (prompt, sample) keeps its static row's key, so the
  batches, and with them the updates, are the static run's (float32 on a CPU)."""
  run_job(_config(toy_policy), str(tmp_path / "static"))
  config = _config(toy_policy)
  config.sample.batching, config.sample.continuous_blocks = "continuous", 2
  out = run_job(config, str(tmp_path / "continuous"))
  assert out["sampling"]["arena_rows"] == 8  # 16 rows through 8
  assert 0.0 < out["sampling"]["useful_slots"] <= 1.0
  static = metrics.read_jsonl(str(tmp_path / "static" / "metrics.jsonl"))
  cont = metrics.read_jsonl(str(tmp_path / "continuous" / "metrics.jsonl"))
  for a, b in zip(static, cont, strict=True):
    assert a["rl/accuracy"] == b["rl/accuracy"] and a["train/loss"] == b["train/loss"]
  a, b = restore_state(str(tmp_path / "static"), 4), restore_state(str(tmp_path / "continuous"), 4)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_continuous_batching_with_a_made_policy_names_the_field(tmp_path, toy_policy):
  config = _config(toy_policy)
  config.sample.batching = "continuous"
  with config.unlocked():
    config.model = config_lib.made_model_config("made")
  with pytest.raises(config_lib.ConfigError, match="sample.batching"):
    run_job(config, str(tmp_path))


MODEL = TransformerConfig(vocab_size=16, embed_dim=32, num_layers=2, num_heads=4,
                          num_kv_heads=2, head_dim=8, mlp_dim=64, max_len=32)


def _one_rl_step(mesh_cfg, devices):
  mesh = shd.make_mesh(mesh_cfg, devices)
  optim = config_lib.base_config("rl").optim
  tx = training.make_optimizer(optim, num_steps=10)
  model = Transformer(MODEL)
  spec = training.train_state_spec(model, tx, 0, jnp.zeros((2, 8), jnp.int32), mesh,
                                   shd.DEFAULT_RULES)
  state = spec.init()
  batch = shd.shard_batch(_toy_batch(), mesh)
  step = jax.jit(functools.partial(
      rl.rl_train_step, model=model, tx=tx, nonfinite="stop", estimator="reinforce_value",
      group_size=2, kl_coef=0.01, value_coef=0.5, log_ratio_clamp=10.0),
      in_shardings=(spec.shardings, shd.batch_sharding(mesh)),
      out_shardings=(spec.shardings, None))
  with shd.activate(mesh, shd.DEFAULT_RULES):
    state, stats = step(state, batch)
  return state, stats


def test_one_rl_step_on_eight_devices_matches_one_device():
  s8, m8 = _one_rl_step({"data": 2, "fsdp": 2, "tensor": 2}, jax.devices())
  s1, m1 = _one_rl_step({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
  for key in ("train/loss", "rl/kl", "rl/value_loss", "rl/entropy"):
    np.testing.assert_allclose(m8[key], m1[key], rtol=1e-5, err_msg=key)
  for a, b in zip(jax.tree.leaves(s8.params), jax.tree.leaves(s1.params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)


# --- rl.value_model='separate': a value network beside the policy -------------------------


def _separate_step(policy, value, *, kl_coef=0.01, value_coef=0.5, grad_clip=0.0):
  """One separate-value RL step (SGD, lr 0.1, no warm-up) from the given parameters."""
  mesh = shd.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
  optim = config_lib.base_config("rl").optim
  optim.update(name="sgd", lr=0.1, warmup_steps=0, grad_clip=grad_clip)
  tx = rl.per_network_optimizer(training.make_optimizer(optim, 10))
  params = {"policy": policy, "value": value}
  state = training.TrainState(step=jnp.int32(0), params=params, opt_state=tx.init(params),
                              rng=jax.random.PRNGKey(0))
  batch = _toy_batch()
  step = functools.partial(
      rl.rl_train_step, model=Transformer(MODEL), tx=tx, nonfinite="stop",
      estimator="reinforce_value", group_size=2, kl_coef=kl_coef, value_coef=value_coef,
      log_ratio_clamp=10.0, separate_value=True)
  with shd.activate(mesh, shd.DEFAULT_RULES):
    return jax.jit(step)(state, batch)


def _toy_batch():
  """A hand-made batch: 8 random responses to 4 toy problems, returns with a step term."""
  task = tasks.make_task(tasks.default_task_config("toy"))
  problems = task.split("train")[:4]
  prompts = [task.encode_prompt(p) for p in problems for _ in range(2)]
  rng = np.random.default_rng(0)
  responses = [list(rng.integers(3, 15, 6)) + [task.eos_id] for _ in range(8)]
  ro = trajectories.from_responses(task, prompts, responses,
                                   [p for p in problems for _ in range(2)],
                                   [i for i in range(4) for _ in range(2)], max_steps=8, width=16)
  step_ids = trajectories.token_step_ids(ro)
  returns = ro.outcome[:, None] + 0.1 * (step_ids >= 0) * (step_ids % 2)
  return {"tokens": ro.tokens, "mask": trajectories.loss_mask(ro, mask_unfinished=False),
          "returns": returns.astype(np.float32), "outcome": ro.outcome[:, None],
          "dense": np.zeros((8, 1), np.float32),
          "ref_logp": np.full(ro.tokens.shape, -2.0, np.float32)}


def _init(seed):
  return nn.unbox(Transformer(MODEL).init(jax.random.PRNGKey(seed),
                                          jnp.zeros((1, 8), jnp.int32))["params"])


def _leaves_equal(a, b):
  return all(np.array_equal(np.asarray(x), np.asarray(y))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_a_separate_value_network_and_the_policy_update_independently():
  """The policy's update does not depend on the value loss's weight, the value
  network's not on the KL weight (each has its own gradient and, under a
  clipping that binds, its own clipping), while the policy's does depend on the
  value network (the baseline)."""
  policy, value = _init(0), _init(1)
  value["value_w"] = jnp.full_like(value["value_w"], 0.1)  # a baseline that is not all 0
  base, m = _separate_step(policy, value)
  heavier, _ = _separate_step(policy, value, value_coef=50.0)
  assert _leaves_equal(base.params["policy"], heavier.params["policy"])
  assert not _leaves_equal(base.params["value"], heavier.params["value"])
  clipped, _ = _separate_step(policy, value, grad_clip=1e-4)  # binds on both networks
  clipped_heavier, _ = _separate_step(policy, value, value_coef=50.0, grad_clip=1e-4)
  assert _leaves_equal(clipped.params["policy"], clipped_heavier.params["policy"])
  assert not _leaves_equal(clipped.params["policy"], base.params["policy"])
  no_kl, _ = _separate_step(policy, value, kl_coef=0.0)
  assert _leaves_equal(base.params["value"], no_kl.params["value"])
  assert not _leaves_equal(base.params["policy"], no_kl.params["policy"])
  other_baseline, _ = _separate_step(policy, {**value, "value_b": jnp.float32(0.5)})
  assert not _leaves_equal(base.params["policy"], other_baseline.params["policy"])
  # The value loss is the value network's: its head and trunk both move.
  for name in ("value_w", "embedding"):
    assert not np.array_equal(base.params["value"][name], value[name]), name
  assert np.isfinite(float(m["rl/value_loss"]))


def _capture_start(monkeypatch) -> list:
  """Records the parameters each train loop starts from (host copies)."""
  first, real_loop = [], training.train_loop

  def loop(state, *args, **kwargs):
    first.append(jax.device_get(state.params))
    return real_loop(state, *args, **kwargs)

  monkeypatch.setattr(training, "train_loop", loop)
  return first


def test_separate_value_model_is_a_copy_of_the_policy_and_rides_in_the_checkpoint(
    tmp_path, toy_policy, monkeypatch):
  config = _config(toy_policy)
  config.rl.value_model = "separate"
  config.train.num_steps = 2
  first = _capture_start(monkeypatch)
  out = run_job(config, str(tmp_path / "run"))
  assert out["models"]["value"] == out["models"]["policy"]
  sft = restore_state(os.path.dirname(toy_policy), 120)["params"]
  assert _leaves_equal(first[0]["policy"], sft) and _leaves_equal(first[0]["value"], sft)
  params = restore_state(str(tmp_path / "run"), 2)["params"]
  assert set(params) == {"policy", "value"}
  assert not _leaves_equal(params["policy"], params["value"])  # trained apart
  config.rl.estimator = "rloo"
  with pytest.raises(config_lib.ConfigError, match="rl.value_model: 'separate' trains a value"):
    run_job(config, str(tmp_path / "rloo"))


def test_a_later_job_reads_the_policy_of_a_separate_value_checkpoint(tmp_path, toy_policy,
                                                                    monkeypatch):
  """`init_from` an RL run with a separate value network takes its policy: a
  second RL run (head baseline) starts from exactly the first run's policy."""
  config = _config(toy_policy, reward="outcome")
  config.rl.value_model = "separate"
  config.train.num_steps = 2
  run_job(config, str(tmp_path / "separate"))
  trained = restore_state(str(tmp_path / "separate"), 2)["params"]["policy"]
  again = _config(str(tmp_path / "separate" / "checkpoints"), reward="outcome")
  again.train.num_steps = 1
  first = _capture_start(monkeypatch)
  run_job(again, str(tmp_path / "next"))
  assert _leaves_equal(first[0], trained)


def test_the_last_steps_evaluation_is_the_final_one_not_a_second(tmp_path, toy_policy, caplog):
  """With eval_every dividing num_steps, the loop's evaluation of the last step is
  the summary's `eval`: evaluated once, no record of it rewritten."""
  config = _config(toy_policy, reward="outcome", eval_every=2)
  with caplog.at_level("INFO"):
    out = run_job(config, str(tmp_path))
  assert "redone step" not in caplog.text
  lines = (tmp_path / "eval.jsonl").read_text().splitlines()
  assert [json.loads(line)["step"] for line in lines] == [0, 2, 4]
  assert out["eval"]["accuracy"] == json.loads(lines[-1])["eval/accuracy"]
  # Each evaluation's per-problem outcomes: the same steps, their mean the logged
  # accuracy, and the last one the summary's (what the report pairs over the run).
  rows = metrics.read_jsonl(str(tmp_path / "eval_outcomes.jsonl"))
  assert [r["step"] for r in rows] == [0, 2, 4]
  for row, line in zip(rows, lines):
    assert len(row["per_problem"]) == len(row["problem_uids"]) == config.sample.num_eval
    assert np.mean(row["per_problem"]) == pytest.approx(json.loads(line)["eval/accuracy"])
  assert rows[-1]["per_problem"] == out["eval"]["per_problem"]
  assert rows[-1]["problem_uids"] == out["eval"]["problem_uids"]
