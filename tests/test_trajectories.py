"""The trajectory table: its one constructor, its derived views and its on-disk format."""

import ast
import json
import os
import pathlib

import numpy as np
import pytest

from pavjax import trajectories
from pavjax.tasks.toy import ToyTask


def _table(max_steps=3, width=10):
  task = ToyTask()
  nl, eos = task.step_end_ids[0], task.eos_id
  prompt = [1, 7]  # BOS, a digit
  finished = [5, 6, nl, 8, eos]  # two steps: [5 6 NL] and [8 EOS]
  truncated = [5, nl, 9]  # a step, then an unfinished one
  problem = task.split("train")[0]
  return trajectories.from_responses(task, [prompt, prompt], [finished, truncated],
                                     [problem, problem], [3, 4], max_steps=max_steps,
                                     width=width), prompt, finished


def test_from_responses_marks_steps_prefixes_and_truncation():
  t, prompt, finished = _table()
  np.testing.assert_array_equal(t.tokens[0, :7], prompt + finished)
  np.testing.assert_array_equal(trajectories.token_step_ids(t)[0],
                                [-1, -1, 0, 0, 0, 1, 1, -1, -1, -1])
  np.testing.assert_array_equal(t.prefix_ends[0], [1, 4, 6, -1])
  np.testing.assert_array_equal(trajectories.token_step_ids(t)[1, :5], [-1, -1, 0, 0, 1])
  np.testing.assert_array_equal(t.prefix_ends[1], [1, 3, 4, -1])
  assert list(t.finished) == [True, False]
  np.testing.assert_array_equal(t.problem, [3, 4])
  np.testing.assert_array_equal(t.length, [7, 5])
  np.testing.assert_array_equal(trajectories.num_steps(t), [2, 2])
  np.testing.assert_array_equal(trajectories.step_mask(t), [[1, 1, 0], [1, 1, 0]])
  np.testing.assert_array_equal(trajectories.last_prefix_mask(t),
                                [[0, 0, 1, 0], [0, 0, 1, 0]])
  assert t.response(0) == finished and t.prompt(1) == prompt
  for mask_unfinished in (False, True):
    loss = trajectories.loss_mask(t, mask_unfinished=mask_unfinished)
    np.testing.assert_array_equal(loss[0], [0, 0, 1, 1, 1, 1, 1, 0, 0, 0])
    want = 0.0 if mask_unfinished else 1.0
    np.testing.assert_array_equal(loss[1], np.array([0, 0, 1, 1, 1, 0, 0, 0, 0, 0]) * want)


def test_steps_past_max_steps_merge_into_the_last():
  t, _, _ = _table(max_steps=1)
  # One step column: it ends where the response ends, and every response token is step 0.
  np.testing.assert_array_equal(t.prefix_ends, [[1, 6], [1, 4]])
  np.testing.assert_array_equal(trajectories.token_step_ids(t)[0],
                                [-1, -1, 0, 0, 0, 0, 0, -1, -1, -1])
  np.testing.assert_array_equal(trajectories.loss_mask(t)[1], [0, 0, 1, 1, 1, 0, 0, 0, 0, 0])


def test_a_row_wider_than_the_table_is_an_error():
  with pytest.raises(ValueError, match="row 0: 7 tokens exceed the table width 6"):
    _table(width=6)


def test_prefix_ids_name_equal_text_equally():
  task = ToyTask()
  problem = task.split("train")[0]
  # Prompt [1, 2]; one-token steps (NL ends a step). A and B share step 1.
  a, b, c = [5, 3, 7, 3], [5, 3, 8, 3], [6, 3, 7, 3]
  t = trajectories.from_responses(task, [[1, 2]] * 3, [a, b, c], [problem] * 3, [0] * 3,
                                  max_steps=2)
  ids = trajectories.prefix_ids(t)
  assert len(set(ids[:, 0])) == 1  # the question
  assert ids[0, 1] == ids[1, 1] != ids[2, 1]
  assert len(set(ids[:, 2])) == 3


def test_shards_round_trip_and_pad_to_the_widest(tmp_path):
  t1, _, _ = _table(max_steps=2, width=8)
  t2, _, _ = _table(max_steps=3, width=10)
  q1 = np.arange(6, dtype=np.float32).reshape(2, 3)
  q2 = np.arange(8, dtype=np.float32).reshape(2, 4) + 10
  t1 = t1.with_columns(q_hat=q1, seed=np.array([0, 1], np.int32))
  t2 = t2.with_columns(q_hat=q2, seed=np.array([2, 3], np.int32))
  d = str(tmp_path / "table")
  trajectories.write_shard(d, 0, t1)
  trajectories.write_shard(d, 1, t2)
  trajectories.write_shard(d, 2, t2)  # not listed as done: never read
  manifest = trajectories.new_manifest("abc", num_shards=3)
  manifest["shards_done"] = [1, 0]
  trajectories.write_manifest(d, manifest)
  got = trajectories.load(d)
  assert len(got) == 4
  assert got.tokens.shape == (4, 10) and got.prefix_ends.shape == (4, 4)
  np.testing.assert_array_equal(got.tokens[:2, 8:], 0)
  np.testing.assert_array_equal(got.prefix_ends[:2, 3], -1)
  np.testing.assert_array_equal(got.tokens[2:], t2.tokens)
  np.testing.assert_array_equal(got["q_hat"][:2, :3], q1)
  assert np.isnan(got["q_hat"][:2, 3]).all()
  np.testing.assert_array_equal(got["q_hat"][2:], q2)
  np.testing.assert_array_equal(got["seed"], [0, 1, 2, 3])
  np.testing.assert_array_equal(got.finished, [True, False, True, False])
  assert sorted(got.columns) == ["q_hat", "seed"]
  with pytest.raises(KeyError, match="no trajectory column 'q_mu'; columns: \\['q_hat', 'seed'\\]"):
    got["q_mu"]  # pylint: disable=pointless-statement


def test_save_and_load_if_complete_check_the_hash_and_schema(tmp_path):
  t, _, _ = _table()
  d = str(tmp_path / "pool")
  trajectories.save(d, t, "h1", seconds={"wall_s": 1.5})
  assert trajectories.load_if_complete(d, "h2") is None
  got = trajectories.load_if_complete(d, "h1")
  np.testing.assert_array_equal(got.prefix_ends, t.prefix_ends)
  assert trajectories.read_manifest(d)["seconds"] == {"wall_s": 1.5}
  # A table written by an older pavjax (no schema) is refused with what to do.
  path = os.path.join(d, trajectories.MANIFEST)
  old = json.loads(pathlib.Path(path).read_text())
  del old["schema"]
  pathlib.Path(path).write_text(json.dumps(old))
  assert trajectories.load_if_complete(d, "h1") is None
  with pytest.raises(ValueError, match="schema 1.*reads 2.*new workdir"):
    trajectories.load(d)


def test_only_the_trajectory_table_segments_responses():
  """Outside the tasks that define it, `Task.segment_steps` is called in one place."""
  root = pathlib.Path(trajectories.__file__).parent
  callers = []
  for path in sorted(root.rglob("*.py")):
    if path.parent.name == "tasks":
      continue
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
      if isinstance(node, ast.Attribute) and node.attr == "segment_steps":
        callers.append(str(path.relative_to(root)))
  assert callers == ["trajectories.py"], callers
