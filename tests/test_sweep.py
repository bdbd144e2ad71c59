"""Sweep runner: the product of axes, the command lines, collection into a table and plot."""

import json
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
  assert "| optim.lr | seed | eval.accuracy | missing.key |" in table and "| 0.003 | 0 | 0.75 |" in table
  assert os.path.exists(os.path.join(root, "sweep.png"))


def test_a_sweep_file_without_axes_is_rejected(tmp_path):
  path = tmp_path / "bad.py"
  path.write_text('CONFIG = "configs/sft.py"\n')
  try:
    sweep_lib.load(str(path))
  except ValueError as e:
    assert "must define AXES" in str(e)
  else:
    raise AssertionError("a sweep without AXES was accepted")
