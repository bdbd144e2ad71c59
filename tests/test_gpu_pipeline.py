"""experiments/gpu_pipeline/project.py: the short run's flags, and projections by hand."""

import os
import pathlib

import pytest

from pavjax import config_lib
from tests.files import load_script
from tests.files import write_json as _write

_PATH = pathlib.Path(__file__).resolve().parents[1] / "experiments" / "gpu_pipeline" / "project.py"


@pytest.fixture(scope="module")
def project():
  return load_script(_PATH, "gpu_pipeline_project")


def test_overrides_name_real_fields_of_every_stage(project):
  """Every flag names a field of the one-GPU variant (a typo would fail here, not on a GPU)."""
  flags = project.overrides("size=gpu")
  config = project.full_config("size=gpu")
  config_lib.check_override_paths(config, flags)
  stages = {f.split(".")[2] for f in flags}
  assert stages == set(config.stages)
  # The short run changes how much work a stage does, never what one step holds.
  for flag in flags:
    field = flag.split("=")[0].split(".", 3)[3]
    assert field.split(".")[1] in ("num_steps", "log_every", "num_problems",
                                   "problems_per_shard"), flag


def test_projection_from_rates_by_hand(project, tmp_path):
  run = tmp_path / "run"
  full = project.full_config("size=gpu").stages
  short = {name: full[name].to_dict() for name in ("sft", "rollouts_train", "search", "rl_pav")}
  short["sft"]["train"]["num_steps"] = 40
  short["rollouts_train"]["rollouts"]["num_problems"] = 128
  short["rollouts_train"]["rollouts"]["problems_per_shard"] = 32
  short["search"]["search"]["num_problems"] = 32
  short["rl_pav"]["train"]["num_steps"] = 8
  for name, cfg in short.items():
    _write(run / name / "config.json", cfg)
  _write(run / "pipeline.json", {"seconds": {"sft": 100.0, "rollouts_train": 50.0,
                                             "search": 30.0, "rl_pav": 40.0}})
  # sft: the first row (compiling) is left out; median of 2, 4, 3 steps/s = 3.
  _write(run / "sft" / "metrics.jsonl", [{"step": 10, "perf/steps_per_sec": 0.1},
                                          {"step": 20, "perf/steps_per_sec": 2.0},
                                          {"step": 30, "perf/steps_per_sec": 4.0},
                                          {"step": 40, "perf/steps_per_sec": 3.0}])
  # rollouts: four shards written at t, t + 10, t + 14, t + 26: median gap 10 s.
  shards = run / "rollouts_train" / "rollouts" / "train"
  for i, t in enumerate((1000.0, 1010.0, 1014.0, 1026.0)):
    path = shards / f"shard_{i:05d}.npz"
    _write(path, {})
    os.utime(path, (t, t))
  # RL: 0.5 iterations/s after the first row; evaluations of 7 s.
  _write(run / "rl_pav" / "metrics.jsonl", [{"step": 2, "perf/steps_per_sec": 0.01},
                                             {"step": 4, "perf/steps_per_sec": 0.5},
                                             {"step": 6, "perf/steps_per_sec": 0.5}])
  _write(run / "rl_pav" / "eval.jsonl", [{"step": 0, "perf/eval_seconds": 7.0}])
  listed = project.project(str(run), "size=gpu")
  assert [r["stage"] for r in listed] == ["sft", "rollouts_train", "search", "rl_pav"]  # run order
  rows = {r["stage"]: r for r in listed}

  steps = full["sft"].train.num_steps
  assert rows["sft"]["projected"] == pytest.approx(100.0 + (steps - 40) / 3.0)
  shards_full = -(-full["rollouts_train"].rollouts.num_problems // 32)
  assert rows["rollouts_train"]["projected"] == pytest.approx(50.0 + (shards_full - 4) * 10.0)
  problems = full["search"].search.num_problems
  assert rows["search"]["projected"] == pytest.approx(30.0 * problems / 32)
  assert "upper bound" in rows["search"]["how"]
  rl_steps, every = full["rl_pav"].train.num_steps, full["rl_pav"].train.eval_every
  evals = rl_steps // every - 8 // every
  assert rows["rl_pav"]["projected"] == pytest.approx(40.0 + (rl_steps - 8) / 0.5 + evals * 7.0)
  text = project.table(list(rows.values()))
  total = sum(r["projected"] for r in rows.values())
  assert f"{total / 3600:.2f} h" in text.splitlines()[-1]


def test_without_a_rate_the_stage_scales_and_says_so(project, tmp_path):
  run = tmp_path / "run"
  cfg = project.full_config("size=gpu").stages["verifier_q"].to_dict()
  cfg["train"]["num_steps"] = 40
  _write(run / "verifier_q" / "config.json", cfg)
  _write(run / "pipeline.json", {"seconds": {"verifier_q": 20.0}})
  _write(run / "verifier_q" / "metrics.jsonl", [{"step": 40, "perf/steps_per_sec": 1.0}])
  (row,) = project.project(str(run), "size=gpu")
  full = project.full_config("size=gpu").stages["verifier_q"].train.num_steps
  assert row["projected"] == pytest.approx(20.0 * full / 40)
  assert row["how"] == "scaled (upper bound)"
