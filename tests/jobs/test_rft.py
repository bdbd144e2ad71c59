"""RFT: trains only on the policy's own correct samples, and caches them for a resume."""

import sys

import numpy as np

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


def test_rft_keeps_distinct_correct_samples_and_resumes_from_its_cache(tmp_path, toy_policy):
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
  again = run_job(_config(toy_policy, steps=6), str(tmp_path))
  assert again["rft_data"] == stats and again["origin"] == "checkpoint step 4"
  assert open(shard, "rb").read() == pool_bytes  # reused, not resampled
