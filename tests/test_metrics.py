"""JSONL logs a killed or resumed job leaves behind: torn last lines, redone steps."""

import json
import logging
import os

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
