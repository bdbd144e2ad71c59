"""RFT: trains only on the policy's own correct samples, and caches them for a resume."""

import os
import sys

import numpy as np

from pavjax import run_record
from pavjax import tasks
from pavjax import trajectories
from pavjax.jobs import rft
from pavjax.main import run_job

sys.path.insert(0, ".")
from configs import rft as rft_config  # noqa: E402


def _config(ckpt, steps=4):
  config = rft_config.get_config("task=toy,size=test")
  config.init_from = ckpt
  config.rft.num_problems = 64
  config.rft.num_samples = 4
  config.train.num_steps = steps
  config.train.batch_size = 16
  config.checkpoint.every = 2
  config.sample.num_eval = 8
  config.sample.batch_size = 64
  return config


def test_rft_keeps_distinct_correct_samples_and_resumes_from_its_cache(tmp_path, toy_policy,
                                                                       monkeypatch):
  out = run_job(_config(toy_policy), str(tmp_path))
  stats = out["rft_data"]
  assert out["job"] == "rft" and out["step"] == 4
  assert stats["samples"] == 64 * 4 and 0 < stats["distinct_correct"] <= stats["correct"]
  # The cache is every sampled response, graded; the SFT arrays are derived from it.
  pool = trajectories.load(str(tmp_path / "rft_pool"))
  assert len(pool) == stats["samples"]
  task = tasks.make_task(tasks.default_task_config("toy"))
  problems = task.split("train")[:64]
  np.testing.assert_array_equal(pool.problem, np.repeat(np.arange(64), 4))
  for i in range(len(pool)):
    problem = problems[int(pool.problem[i])]
    assert pool.prompt(i) == task.encode_prompt(problem)
    assert pool.outcome[i] == task.is_correct(pool.response(i), problem).reward
  pairs, pool_stats = rft.correct_pairs(pool)
  assert pool_stats == stats
  config = _config(toy_policy)
  data = tasks.sequence_arrays(pairs, config.model.max_len, task.pad_id)
  inputs, targets, mask = data.inputs, data.targets, data.mask
  assert len(inputs) == stats["distinct_correct"]
  by_prompt = {tuple(task.encode_prompt(p)): p for p in problems}
  seen = set()
  for x, t, m in zip(inputs, targets, mask):
    start = int(np.argmax(m > 0))
    prompt = tuple(int(v) for v in x[:start + 1])
    response = [int(v) for v in t[m > 0]]
    assert task.is_correct(response, by_prompt[prompt]).reward == 1.0
    assert (prompt, tuple(response)) not in seen
    seen.add((prompt, tuple(response)))
  # More steps in the same workdir: the cached samples are reused, training resumes.
  shard = trajectories.shard_path(str(tmp_path / "rft_pool"), 0)
  pool_bytes = open(shard, "rb").read()
  monkeypatch.setenv("PAVJAX_RESUME_ALLOW", "train.num_steps")  # a resume refuses it otherwise
  again = run_job(_config(toy_policy, steps=6), str(tmp_path))
  assert again["rft_data"] == stats and again["origin"] == out["origin"]
  assert run_record.attempt_origins(str(tmp_path))[-1] == "checkpoint step 4"
  assert open(shard, "rb").read() == pool_bytes  # reused, not resampled


def _never_correct(monkeypatch):
  """Grades every sampled response wrong, as for a policy that never succeeds."""
  real = rft.correct_pairs

  def graded_wrong(pool):
    pool.outcome[:] = 0
    return real(pool)

  monkeypatch.setattr(rft, "correct_pairs", graded_wrong)


def _params(ckpt):
  """A checkpoint's parameters, on the host."""
  import jax
  import jax.numpy as jnp
  from pavjax import checkpoint as ckpt_lib
  from pavjax import models, training
  from pavjax import sharding as shd
  config = _config(ckpt)
  task = tasks.make_task(config.task)
  model = models.build_model(models.model_config_from(config.model, task.vocab_size))
  mesh = shd.make_mesh(dict(config.mesh))
  abstract = training.params_spec(model, jnp.zeros((1, 8), jnp.int32), mesh,
                                  shd.rules_from_config(config.rules))
  return jax.device_get(ckpt_lib.restore_params(ckpt, abstract))


def test_rft_without_a_correct_sample_keeps_the_initial_policy(tmp_path, toy_policy, monkeypatch):
  import jax
  import pytest
  from pavjax import config_lib
  _never_correct(monkeypatch)
  config = _config(toy_policy)
  config.rft.num_problems, config.rft.num_samples = 8, 2
  config.rft.on_no_correct = "fail"
  with pytest.raises(config_lib.ConfigError, match="rft.on_no_correct") as err:
    run_job(config, str(tmp_path / "fail"))
  assert "\n" not in str(err.value) and "no correct sample among 16" in str(err.value)
  assert not (tmp_path / "fail" / "checkpoints").exists()

  config.rft.on_no_correct = "fallback"
  workdir = str(tmp_path / "fallback")
  out = run_job(config, workdir)
  assert out["fallback"] == "no correct sample among 16: RFT kept the initial policy"
  assert out["step"] == 0 and not out["halted"] and out["rft_data"]["correct"] == 0
  assert "accuracy" in out["eval"]
  kept, init = _params(f"{workdir}/checkpoints"), _params(toy_policy)
  for a, b in zip(jax.tree.leaves(kept), jax.tree.leaves(init)):
    np.testing.assert_array_equal(a, b)
  # A rerun finds the step-0 checkpoint and the cached pool: nothing sampled or saved again.
  again = run_job(config, workdir)
  assert again["fallback"] == out["fallback"] and again["origin"] == out["origin"]
  assert run_record.attempt_origins(workdir)[-1] == "checkpoint step 0"
  assert sorted(os.listdir(f"{workdir}/checkpoints")) == ["0"]
  assert again["eval"] == out["eval"]
