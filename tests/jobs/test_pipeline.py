"""Pipeline: all stages on the toy task, report.md, skip when complete, rerun what changed."""

import json
import subprocess
import sys
import os

import pytest

from pavjax import config_lib
from pavjax.main import run_job


def _config():
  config = config_lib.sibling_config("configs/x.py", "pipeline").get_config("task=toy,size=tiny")
  s = config.stages
  for cfg in s.values():
    cfg.model = config_lib.model_config("test")
    cfg.sample.batch_size = 32
    cfg.sample.num_eval = 8
  s.sft.train.num_steps, s.sft.train.batch_size = 60, 32
  s.rft.rft.num_problems, s.rft.rft.num_samples = 32, 2
  s.rft.train.num_steps, s.rft.train.batch_size = 4, 16
  for name in ("rollouts_train", "rollouts_validation"):
    s[name].rollouts.num_problems, s[name].rollouts.n_cov, s[name].rollouts.n_mc = 8, 2, 2
    s[name].rollouts.problems_per_shard = 8
  for name in ("verifier_q", "verifier_orm"):
    s[name].train.num_steps, s[name].train.batch_size, s[name].train.log_every = 4, 16, 2
  s.search.search.num_problems, s.search.search.num_subsets = 4, 4
  s.search.search.ns, s.search.search.beam_ns = "1,2", "2"
  s.search.search.max_rows = 32
  for name in ("rl_pav", "rl_outcome"):
    s[name].train.num_steps, s[name].train.eval_every, s[name].train.log_every = 4, 2, 1
    s[name].rl.eval_pass_ns = "1,2"
  return config


def _states(workdir):
  out = {}
  for name in sorted(os.listdir(workdir)):
    path = os.path.join(workdir, name, "stage.json")
    if os.path.exists(path):
      with open(path) as f:
        out[name] = json.load(f)
  return out


def test_pipeline_runs_every_stage_then_skips_and_reruns_only_what_changed(tmp_path):
  workdir = str(tmp_path)
  out = run_job(_config(), workdir)
  assert set(out["stages"].values()) == {"ran"} and len(out["stages"]) == 9
  report = (tmp_path / "report.md").read_text()
  for section in ("## Accuracy", "ORM best-of-N, N=2", "PAV beam search, N=2", "PAV-RL (prover bok, alpha 1), 4 iterations",
                  "## Compute efficiency", "## RL: sample efficiency", "## Prover diagnostics",
                  "## Sampled solutions", "## Stages"):
    assert section in report, section
  first = _states(workdir)
  assert all(s["complete"] for s in first.values())

  again = run_job(_config(), workdir)
  assert set(again["stages"].values()) == {"skipped (complete)"}

  changed = _config()
  changed.stages.verifier_q.train.num_steps = 6  # verifier_q, then search and rl_pav depend on it
  third = run_job(changed, workdir)
  rerun = {n for n, a in third["stages"].items() if a != "skipped (complete)"}
  assert rerun == {"verifier_q", "search", "rl_pav"}, third["stages"]
  assert any(n.startswith("verifier_q.stale-") for n in os.listdir(workdir))


def test_a_bad_stage_field_is_named_with_its_stage(tmp_path):
  config = _config()
  config.stages.rl_pav.train.batch_size = 12
  config.stages.rl_pav.mesh.data = 8
  with pytest.raises(config_lib.ConfigError, match=r"stages\.rl_pav\.train\.batch_size"):
    run_job(config, str(tmp_path))


def test_the_command_line_runs_a_stage(tmp_path):
  """`python -m pavjax.main` with the pipeline config: stages run in the same process."""
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env["JAX_PLATFORMS"] = "cpu"
  args = [sys.executable, "-m", "pavjax.main", "--config=configs/pipeline.py:task=toy,size=tiny",
          f"--workdir={tmp_path}", "--config.only=sft", "--config.stages.sft.train.num_steps=2",
          "--config.stages.sft.sample.num_eval=8", "--config.stages.sft.checkpoint.every=2"]
  proc = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(tmp_path / "pipeline.json") as f:
    assert json.load(f)["stages"] == {"sft": "ran"}
  assert (tmp_path / "sft" / "checkpoints").is_dir()
