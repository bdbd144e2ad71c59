"""Sweep runner: the product of axes, the command lines, collection into a table and plot."""

import json
import math
import os

from pavjax import sweep as sweep_lib

SWEEP = '''
CONFIG = "configs/sft.py:task=toy,size=test"
FIXED = {"train.num_steps": 3}
AXES = {"optim.lr": [0.001, 0.003], "seed": [0, 1, 2]}
COLLECT = ["eval.accuracy", "missing.key"]
X = "optim.lr"
'''


def test_expand_print_and_collect(tmp_path, capsys):
  path = tmp_path / "sweep.py"
  path.write_text(SWEEP)
  sweep = sweep_lib.load(str(path))
  points = sweep_lib.expand(sweep)
  assert len(points) == 6 and points[1] == {"optim.lr": 0.001, "seed": 1}
  root = str(tmp_path / "runs")
  cmd = sweep_lib.command(sweep, points[1], root)
  assert cmd[1:] == ["-m", "pavjax.main", "--config=configs/sft.py:task=toy,size=test",
                     f"--workdir={root}/optim.lr=0.001,seed=1", "--config.train.num_steps=3",
                     "--config.optim.lr=0.001", "--config.seed=1"]
  assert sweep_lib.main([str(path), f"--root={root}", "--print"]) == 0
  printed = capsys.readouterr().out.strip().splitlines()
  assert len(printed) == 6 and "--config.seed=2" in printed[-1]
  assert not os.path.exists(root)  # --print runs nothing

  # Collect: two finished runs (hand-written summaries), the rest missing.
  for point, acc in ((points[0], 0.25), (points[3], 0.75)):
    os.makedirs(os.path.join(root, sweep_lib.run_name(point)))
    with open(os.path.join(root, sweep_lib.run_name(point), "summary.json"), "w") as f:
      json.dump({"eval": {"accuracy": acc}}, f)
  assert sweep_lib.main([str(path), f"--root={root}", "--collect"]) == 0
  rows = json.load(open(os.path.join(root, "sweep.json")))
  assert [r["eval.accuracy"] for r in rows] == [0.25, None, None, 0.75, None, None]
  assert all(r["missing.key"] is None for r in rows)
  table = open(os.path.join(root, "sweep.md")).read()
  assert "| optim.lr | seed | eval.accuracy | 95% interval | n | missing.key |" in table
  # No n known for these summaries (no per-problem outcomes, counts or config): no interval.
  assert "| 0.003 | 0 | 0.75 | n/a | ? | None |" in table
  assert os.path.exists(os.path.join(root, "sweep.png"))


def _run(root, point, summary, config=None):
  run = os.path.join(root, sweep_lib.run_name(point))
  os.makedirs(run)
  with open(os.path.join(run, "summary.json"), "w") as f:
    json.dump(summary, f)
  if config is not None:
    with open(os.path.join(run, "config.json"), "w") as f:
      json.dump(config, f)


def test_collect_gives_every_accuracy_n_an_interval_and_the_seed_spread(tmp_path, monkeypatch):
  path = tmp_path / "sweep.py"
  path.write_text(SWEEP.replace('"missing.key"', '"final_train.rl/accuracy"'))
  sweep = sweep_lib.load(str(path))
  points = sweep_lib.expand(sweep)  # (0.001, 0..2), (0.003, 0..2)
  root = str(tmp_path / "runs")
  # n from stored per-problem outcomes (1 of 4), from graded-response counts (4 of 8), from
  # the config's sample.num_eval (0.75 of 4), and none at all.
  _run(root, points[0], {"eval": {"accuracy": 0.25, "per_problem": [1, 0, 0, 0]},
                         "final_train": {"rl/accuracy": 0.5}}, {"rl": {"num_prompts": 16}})
  _run(root, points[1], {"eval": {"accuracy": 0.5, "reason/correct": 4.0, "reason/wrong": 4.0}})
  _run(root, points[3], {"eval": {"accuracy": 0.75}}, {"sample": {"num_eval": 4}})
  _run(root, points[4], {"eval": {"accuracy": 0.75}})
  calls = {}
  monkeypatch.setattr("pavjax.metrics.plot_series",
                      lambda series, p, **kw: calls.setdefault("plot", (series, kw["bands"])))
  rows, table = sweep_lib.collect(sweep, root)
  # Wilson by hand: 1 of 4 -> [0.0456, 0.6994]; 4 of 8 -> [0.2152, 0.7848];
  # 3 of 4 -> [0.3006, 0.9544]; a batch accuracy 0.5 of 16 problems -> [0.2800, 0.7200].
  assert "| 0.001 | 0 | 0.25 | [0.0456, 0.6994] | 4 | 0.5 | [0.2800, 0.7200] | 16 |" in table
  assert "| 0.001 | 1 | 0.5 | [0.2152, 0.7848] | 8 | None | n/a | ? |" in table
  assert "| 0.003 | 0 | 0.75 | [0.3006, 0.9544] | 4 | None | n/a | ? |" in table
  assert "| 0.003 | 1 | 0.75 | n/a | ? |" in table
  assert rows[0]["eval.accuracy/n"] == 4 and rows[4]["eval.accuracy/low"] is None
  # Seeds: lr 0.001 has seeds 0 and 1 (0.25, 0.5): mean 0.375, sd 0.25/sqrt(2),
  # t interval 0.375 +- t(1) sd / sqrt(2) with t(1) = tan(0.475 pi) = 12.706.
  assert "### eval.accuracy over seeds" in table
  # That is [-1.21, 1.96], cut to the accuracies' range [0, 1].
  half = math.tan(0.475 * math.pi) * (0.25 / math.sqrt(2)) / math.sqrt(2)
  assert 0.375 - half < 0 and 0.375 + half > 1
  assert ("| 0.001 | 2 | 0.3750 | 0.2500 | 0.5000 | 0.1768 | [0.0000, 1.0000] | "
          "0: 0.2500, 1: 0.5000 |") in table
  assert "| 0.003 | 2 | 0.7500 | 0.7500 | 0.7500 | 0.0000 |" in table
  # The plot: the mean over seeds, the band over every run's interval (min-max where none).
  sweep_lib.plot(sweep, rows, str(tmp_path / "sweep.png"))
  series, bands = calls["plot"]
  assert series["eval.accuracy"] == [(0.001, 0.375), (0.003, 0.75)]
  lo, hi = bands["eval.accuracy"][0][1:]
  assert (round(lo, 4), round(hi, 4)) == (0.0456, 0.7848)
  assert round(bands["eval.accuracy"][1][1], 4) == 0.3006 and round(bands["eval.accuracy"][1][2], 4) == 0.9544


def test_a_sweep_file_without_axes_is_rejected(tmp_path):
  path = tmp_path / "bad.py"
  path.write_text('CONFIG = "configs/sft.py"\n')
  try:
    sweep_lib.load(str(path))
  except ValueError as e:
    assert "must define AXES" in str(e)
  else:
    raise AssertionError("a sweep without AXES was accepted")


def test_the_experiments_sweep_files_name_fields_their_configs_have():
  """Each sweep file under experiments/ loads, its CONFIG builds, and every override it
  passes (FIXED and AXES) names a field of that config: a typo fails here, not on a
  cluster after the launch."""
  import glob  # noqa: PLC0415
  from pavjax import config_lib  # noqa: PLC0415
  paths = sorted(glob.glob("experiments/*/sweep*.py"))
  assert "experiments/didactic/sweep_made.py" in paths
  for path in paths:
    sweep = sweep_lib.load(path)
    config = config_lib.load_config_file(sweep.CONFIG)
    for point in sweep_lib.expand(sweep):
      config_lib.check_override_paths(config, sweep_lib.command(sweep, point, "runs")[4:])
