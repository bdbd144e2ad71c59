"""JSONL logs a killed or resumed job leaves behind: torn last lines, redone steps."""

import json
import logging
import os

import numpy as np
import pytest

from pavjax import metrics


def _lines(path):
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f]


def test_a_torn_last_line_is_dropped_with_a_warning(tmp_path, caplog):
  path = tmp_path / "metrics.jsonl"
  path.write_text('{"step": 1, "a": 1.0}\n{"step": 2, "a": 2.0}\n{"step": 3, "a"')
  with caplog.at_level(logging.WARNING):
    rows = metrics.read_jsonl(str(path))
  assert [r["step"] for r in rows] == [1, 2]
  assert any("torn last line" in r.getMessage() and "metrics.jsonl:3" in r.getMessage()
             for r in caplog.records)


def test_a_bad_line_in_the_middle_is_an_error_naming_file_and_line(tmp_path):
  path = tmp_path / "rows.jsonl"
  path.write_text('{"step": 1}\n{"step": 2,\n{"step": 3}\n')
  with pytest.raises(ValueError, match=r"rows\.jsonl:2: not a JSON line"):
    metrics.read_jsonl(str(path))


def test_the_writer_repairs_a_torn_file_before_appending(tmp_path):
  path = tmp_path / "metrics.jsonl"
  path.write_text('{"step": 1, "a": 1.0}\n{"step": 2, "a": 2.0}\n{"step": 3, "a": 3')
  writer = metrics.MetricWriter(str(tmp_path), "metrics")
  writer.write(3, {"a": 30.0})
  writer.close()
  assert _lines(path) == [{"step": 1, "a": 1.0}, {"step": 2, "a": 2.0},
                          {"step": 3, "a": 30.0}]


def test_a_whole_last_line_without_its_newline_is_kept_and_not_glued_to_the_next(tmp_path):
  path = tmp_path / "metrics.jsonl"
  path.write_text('{"step": 1, "a": 1.0}')
  writer = metrics.MetricWriter(str(tmp_path), "metrics")
  writer.write(2, {"a": 2.0})
  writer.close()
  assert [r["step"] for r in _lines(path)] == [1, 2]


def test_a_redone_step_replaces_its_record_and_every_later_one(tmp_path):
  writer = metrics.MetricWriter(str(tmp_path), "metrics")
  for step in (2, 4, 6):
    writer.write(step, {"loss": float(step)})
  writer.close()
  # A resumed run redoes steps 4.. (its last checkpoint was at 3).
  writer = metrics.MetricWriter(str(tmp_path), "metrics")
  writer.write(4, {"loss": 40.0})
  writer.write(5, {"loss": 50.0})
  writer.close()
  assert _lines(str(tmp_path / "metrics.jsonl")) == [
      {"step": 2, "loss": 2.0}, {"step": 4, "loss": 40.0}, {"step": 5, "loss": 50.0}]
  # The same step written twice in one run (a final eval at the last periodic one).
  writer = metrics.MetricWriter(str(tmp_path), "metrics")
  writer.write(5, {"loss": 51.0})
  writer.close()
  assert [r["step"] for r in metrics.read_jsonl(str(tmp_path / "metrics.jsonl"))] == [2, 4, 5]
  assert not [n for n in os.listdir(tmp_path) if ".tmp." in n]


def test_list_values_go_to_the_jsonl_record_and_scalars_to_tensorboard(tmp_path):
  writer = metrics.MetricWriter(str(tmp_path), "outcomes")
  writer.write(3, {"acc": np.float32(0.5), "per_problem": np.array([1.0, 0.0]),
                   "problem_uids": ("a", "b")})
  writer.close()
  assert _lines(str(tmp_path / "outcomes.jsonl")) == [
      {"step": 3, "acc": 0.5, "per_problem": [1.0, 0.0], "problem_uids": ["a", "b"]}]
  assert _tensorboard_tags(tmp_path / "tensorboard" / "outcomes") == ["acc"]


def _tensorboard_tags(directory) -> list[str]:
  """The scalar tags in a directory's event files (TFRecord framing: an 8-byte length,
  its 4-byte CRC, the record, its 4-byte CRC)."""
  import struct  # noqa: PLC0415
  from tensorboardX.proto import event_pb2  # noqa: PLC0415
  tags = []
  for name in sorted(os.listdir(directory)):
    with open(os.path.join(directory, name), "rb") as f:
      data = f.read()
    at = 0
    while at < len(data):
      (length,) = struct.unpack("<Q", data[at:at + 8])
      event = event_pb2.Event.FromString(data[at + 12:at + 12 + length])
      tags += [v.tag for v in event.summary.value]
      at += 12 + length + 4
  return tags
