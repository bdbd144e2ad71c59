"""`<workdir>/run.json`: seconds that add up over attempts, values computed once."""

import json
import os

from pavjax import run_record


def _touch(path, mtime):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "a", encoding="utf-8"):
    pass
  os.utime(path, (mtime, mtime))


def _write_record(workdir, **record):
  with open(os.path.join(workdir, run_record.RUN_RECORD), "w", encoding="utf-8") as f:
    json.dump(record, f)


def test_a_killed_attempt_counts_until_the_newest_file_it_left(tmp_path):
  """Attempt 1 began at t=1000 and its newest file is from t=1100 (the record's own
  mtime does not count); attempts before it had run 50 s: 150 s before this one."""
  workdir = str(tmp_path)
  _write_record(workdir, seconds=50.0, started=1000.0, attempts=1, values={"origin": "x"})
  _touch(os.path.join(workdir, "metrics.jsonl"), 1060.0)
  _touch(os.path.join(workdir, "checkpoints", "4", "x"), 1100.0)
  record = run_record.RunRecord(workdir)
  assert record.attempt == 2
  assert 150.0 <= record.seconds() < 160.0
  saved = json.load(open(os.path.join(workdir, run_record.RUN_RECORD)))
  assert saved["seconds"] == 150.0 and saved["attempts"] == 2 and saved["values"] == {
      "origin": "x"}


def test_a_fresh_workdir_starts_at_zero_and_newest_mtime_ignores_excluded_files(tmp_path):
  record = run_record.RunRecord(str(tmp_path))
  assert record.attempt == 1 and 0.0 <= record.seconds() < 5.0
  assert run_record.attempt_seconds(str(tmp_path / "empty"), 10.0) == 0.0
  assert run_record.attempt_seconds(str(tmp_path), None) == 0.0
  _touch(str(tmp_path / "a"), 500.0)
  assert run_record.newest_mtime(str(tmp_path), exclude=(record.path,)) == 500.0
  assert run_record.attempt_seconds(str(tmp_path), 400.0, exclude=(record.path,)) == 100.0
  assert run_record.attempt_seconds(str(tmp_path), 900.0, exclude=(record.path,)) == 0.0


def test_once_computes_on_the_first_attempt_only_and_hands_back_json(tmp_path):
  calls = []

  def compute():
    calls.append(1)
    return {"accuracy": 0.25, "ns": (1, 2)}

  first = run_record.RunRecord(str(tmp_path)).once("initial_eval", compute)
  assert first == {"accuracy": 0.25, "ns": [1, 2]}  # the JSON form on every attempt
  again = run_record.RunRecord(str(tmp_path))
  assert again.get("initial_eval") == first and again.get("missing", 7) == 7
  assert again.once("initial_eval", compute) == first
  assert calls == [1]
