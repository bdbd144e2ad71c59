"""SFT job: smoke run, exact resume after a halt, the non-finite guard, bad checkpoints."""

import os
import sys

import jax
import numpy as np
import pytest

from pavjax import run_record
from pavjax import metrics
from pavjax.main import run_job
from pavjax.testing import poison_loss_on_steps, restore_state

sys.path.insert(0, ".")
from configs import sft as sft_config  # noqa: E402


def _config(**overrides):
  config = sft_config.get_config("task=toy,size=test")
  config.train.num_steps = 6
  config.train.batch_size = 16
  config.train.log_every = 2
  config.checkpoint.every = 2
  config.checkpoint.keep = 10
  config.sample.num_eval = 8
  config.sample.batch_size = 8
  config.task.num_train = 64
  config.task.num_eval = 8
  for dotted, value in overrides.items():
    section, field = dotted.split("__")
    config[section][field] = value
  return config


def _assert_bitwise_equal(a, b):
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(la) == len(lb)
  for x, y in zip(la, lb):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_smoke_writes_checkpoints_metrics_and_samples(tmp_path):
  out = run_job(_config(), str(tmp_path))
  assert out["step"] == 6 and out["origin"] == "scratch"
  names = set(os.listdir(tmp_path))
  assert {"config.json", "metrics.jsonl", "eval.jsonl", "samples.md", "summary.json",
          "loss.png", "tensorboard", "checkpoints"} <= names
  assert sorted(int(s) for s in os.listdir(tmp_path / "checkpoints") if s.isdigit()) == [2, 4, 6]
  rows = metrics.read_jsonl(str(tmp_path / "metrics.jsonl"))
  assert [r["step"] for r in rows] == [2, 4, 6]
  assert all(np.isfinite(r["train/loss"]) for r in rows)
  assert "| problem |" in (tmp_path / "samples.md").read_text()
  assert 0.0 <= out["eval"]["accuracy"] <= 1.0


def test_halt_and_resume_equals_uninterrupted_run_bitwise(tmp_path):
  straight, interrupted = str(tmp_path / "a"), str(tmp_path / "b")
  run_job(_config(), straight)
  first = run_job(_config(train__halt_at_step=3), interrupted)
  assert first["step"] == 3 and first["halted"]
  # A kill mid-save can leave a bare step directory: it must be ignored, not resumed.
  bogus = os.path.join(interrupted, "checkpoints", "5")
  os.makedirs(os.path.join(bogus, "default"))
  second = run_job(_config(), interrupted)
  assert second["origin"] == first["origin"] == "scratch" and second["step"] == 6
  assert run_record.attempt_origins(interrupted) == ["scratch", "checkpoint step 3"]
  assert not os.path.exists(bogus)
  assert any(n.startswith("incomplete_5_") for n in os.listdir(os.path.dirname(bogus)))
  _assert_bitwise_equal(restore_state(straight, 6), restore_state(interrupted, 6))


def test_a_killed_and_resumed_job_logs_each_step_once(tmp_path, monkeypatch):
  """Killed right after logging step 4, past its last checkpoint (3): the resumed job
  redoes step 4, and its record replaces the killed run's."""
  real_write = metrics.MetricWriter.write

  def write_then_die(self, step, scalars):
    real_write(self, step, scalars)
    if self.path.endswith("metrics.jsonl") and step == 4:
      raise KeyboardInterrupt("killed")

  monkeypatch.setattr(metrics.MetricWriter, "write", write_then_die)
  with pytest.raises(KeyboardInterrupt):
    run_job(_config(checkpoint__every=3), str(tmp_path))
  monkeypatch.undo()
  out = run_job(_config(checkpoint__every=3), str(tmp_path))
  assert out["origin"] == "scratch" and out["step"] == 6
  assert run_record.attempt_origins(str(tmp_path)) == ["scratch", "checkpoint step 3"]
  rows = metrics.read_jsonl(str(tmp_path / "metrics.jsonl"))
  assert [r["step"] for r in rows] == [2, 3, 4, 6]
  assert [r["step"] for r in metrics.read_jsonl(str(tmp_path / "eval.jsonl"))] == [6]


def test_nonfinite_stop_raises_before_a_bad_checkpoint(tmp_path, monkeypatch):
  poison_loss_on_steps(monkeypatch, {5})
  with pytest.raises(metrics.NonFiniteError, match="step 5"):
    run_job(_config(train__log_every=100), str(tmp_path))
  steps = sorted(int(s) for s in os.listdir(tmp_path / "checkpoints") if s.isdigit())
  assert steps == [2, 4]  # step 6 would hold NaN parameters


def test_nonfinite_skip_leaves_state_unchanged_then_gives_up(tmp_path, monkeypatch):
  poison_loss_on_steps(monkeypatch, {3})
  out = run_job(_config(train__nonfinite="skip", checkpoint__every=1), str(tmp_path / "a"))
  assert out["step"] == 6
  s2, s3 = restore_state(str(tmp_path / "a"), 2), restore_state(str(tmp_path / "a"), 3)
  _assert_bitwise_equal(s2["params"], s3["params"])
  _assert_bitwise_equal(s2["opt_state"], s3["opt_state"])
  rows = metrics.read_jsonl(str(tmp_path / "a" / "metrics.jsonl"))
  assert sum(r.get("train/skipped_steps", 0) for r in rows) == 1
  # Step 3 was logged alone (a checkpoint every step): only its skip count, no NaN mean.
  assert [r["step"] for r in rows if "train/loss" not in r] == [3]
  assert all(np.isfinite(r["train/loss"]) for r in rows if "train/loss" in r)

  monkeypatch.undo()
  poison_loss_on_steps(monkeypatch, {2, 3, 4, 5, 6})
  with pytest.raises(metrics.NonFiniteError, match="3 consecutive"):
    run_job(_config(train__nonfinite="skip", train__max_skips=3), str(tmp_path / "b"))


@pytest.mark.parametrize("task", ["planted", "arith"])
def test_sft_runs_on_shipped_tasks(tmp_path, task):
  config = sft_config.get_config(f"task={task},size=test")
  config.train.num_steps = 2
  config.train.batch_size = 8
  config.train.log_every = 1
  config.sample.num_eval = 8
  config.sample.batch_size = 8
  config.task.num_train = 64
  config.task.num_eval = 8
  out = run_job(config, str(tmp_path))
  assert out["step"] == 2 and out["task"] == task
  assert sum(v for k, v in out["eval"].items() if k.startswith("reason/")) == 8
  assert (tmp_path / "checkpoints" / "2" / "commit_success.txt").exists()
