"""jsonl_math lengths from the data: derived limits, the job lengths that follow them,
conflicts between explicit settings, and the checks before anything is written."""

import json
import math
import os
import re
import sys

import pytest

from pavjax import config_lib
from pavjax import tasks
from pavjax.jobs import validate_job
from pavjax.tasks import base
from pavjax.tasks import jsonl_math as jm
from pavjax.tasks import tokenizer as tokenizer_lib

sys.path.insert(0, ".")
from configs import sft as sft_config  # noqa: E402

# ---------------------------------------------------------------------------
# Data written here: a few dozen problems whose steps are exactly their lines (no
# calculator annotations, one sentence per line), so the references can be tokenized
# by hand below, independently of the reader's segmentation.
# ---------------------------------------------------------------------------


def _gsm_rows(n, who, extra=0):
  rows = []
  for i in range(n):
    a, b = i + 3, 2 * i + 1
    lines = [f"{who} starts with {a} coins."] + [f"Then {who} finds {b} more."] * (i % 3)
    lines += [f"So {who} has {a} + {b} = {a + b} coins." + " Really." * (extra if i == n - 1
                                                                        else 0),
              f"#### {a + b}"]
    rows.append({"question": f"{who} has {a} coins and finds {b}. How many coins?",
                 "answer": "\n".join(lines)})
  return rows


def _math_rows(n, extra=0):
  rows = []
  for i in range(n):
    k = i + 2
    lines = [f"We need {k} times {k}.", f"That is ${k} \\cdot {k} = {k * k}$."]
    lines += ["We check it twice."] * (i % 4)
    lines.append(f"The answer is $\\boxed{{{k * k}}}$" + ", as we see" * (extra if i == 0 else 0)
                 + ".")
    rows.append({"problem": f"What is ${k}^2$?" + " Think." * (i % 5),
                 "solution": "\n".join(lines)})
  return rows


def _write(folder, **splits):
  os.makedirs(folder, exist_ok=True)
  for split, rows in splits.items():
    with open(os.path.join(folder, f"{split}.jsonl"), "w", encoding="utf-8") as f:
      for row in rows:
        f.write(json.dumps(row) + "\n")
  return str(folder)


def _by_hand(tokenizer_path, rows_by_split, delimiter):
  """Longest prompt and reference over all splits, tokenized here: `[BOS] q NL` and the
  solution's lines joined by `delimiter`, then EOS."""
  tok = tokenizer_lib.SentencePieceTokenizer.load(tokenizer_path)
  prompts, solutions = [], []
  for rows in rows_by_split:
    for row in rows:
      question = (row.get("question") or row["problem"]).strip()
      lines = (row.get("answer") or row["solution"]).split("\n")
      prompts.append(1 + len(tok.encode(question)) + 1)
      solutions.append(len(tok.encode(delimiter.join(lines))) + 1)
  return max(prompts), max(solutions)


def _expected_limit(longest):
  """x1.25, then up to the next multiple of 16 (floats are exact at these sizes)."""
  return 16 * math.ceil(math.ceil(longest * 1.25) / 16)


@pytest.mark.parametrize("longest, limit", [(0, 16), (1, 16), (12, 16), (13, 32), (16, 32),
                                            (51, 64), (52, 80), (64, 80), (77, 112),
                                            (100, 128), (1000, 1264)])
def test_derived_length_closed_form(longest, limit):
  assert jm.derived_length(longest) == limit == max(_expected_limit(longest), 16)


def test_lengths_from_gsm_style_data(tmp_path):
  """The longest prompt is in test.jsonl and the longest reference in validation.jsonl:
  limits taken from the train split alone would be too short."""
  train, val = _gsm_rows(30, "Tom"), _gsm_rows(6, "Ann", extra=9)
  test = _gsm_rows(8, "Sam")
  test[3]["question"] += " Count again, slowly, every coin in the jar."
  manual = _write(tmp_path / "gsm", train=train, validation=val, test=test)
  cfg = tasks.default_task_config("jsonl_math")
  assert (cfg.max_prompt_len, cfg.max_response_len) == (0, 0)  # the defaults: from the data
  cfg.manual_dir = manual
  task = tasks.make_task(cfg, str(tmp_path / "work"))
  prompt, solution = _by_hand(task.tokenizer_path, (train, val, test), "\n")
  train_prompt, train_solution = _by_hand(task.tokenizer_path, (train,), "\n")
  assert prompt > train_prompt and solution > train_solution  # the data is as planned
  assert (task.longest_prompt, task.longest_solution) == (prompt, solution)
  assert task.max_prompt_len == _expected_limit(prompt)
  assert task.max_response_len == _expected_limit(solution)
  assert [len(task.split(s)) for s in base.SPLITS] == [30, 6, 8]  # nothing dropped
  assert task.token_lengths() == {
      "longest_prompt": prompt, "longest_solution": solution,
      "max_prompt_len": _expected_limit(prompt), "max_response_len": _expected_limit(solution),
      "derived": ["max_prompt_len", "max_response_len"], "headroom": 1.25, "multiple": 16}
  assert task.data_report()["token_lengths"] == task.token_lengths()
  # Kept next to the prepared data, per tokenizer.
  (prepared,) = [os.path.join(d, "1.0.0") for d in
                 (tmp_path / "work" / "tfds" / "jsonl_math").iterdir()]
  with open(os.path.join(prepared, jm.LENGTHS_FILE)) as f:
    kept = json.load(f)
  key = f"trained:{os.path.basename(task.tokenizer_path)} step_delimiter=\"\\n\""
  assert kept == {key: {"longest_prompt": prompt, "longest_solution": solution,
                        "derived_max_prompt_len": _expected_limit(prompt),
                        "derived_max_response_len": _expected_limit(solution)}}
  # An explicit limit is used as set (the other one is still derived).
  cfg.max_response_len = solution
  explicit = tasks.make_task(cfg, str(tmp_path / "work"))
  assert (explicit.max_prompt_len, explicit.max_response_len) == (
      _expected_limit(prompt), solution)
  assert explicit.derived_limits == ("max_prompt_len",)


def test_lengths_from_math_style_data_with_blank_line_steps(tmp_path):
  train, test = _math_rows(40), _math_rows(12, extra=15)
  manual = _write(tmp_path / "math", train=train, test=test)
  cfg = tasks.default_task_config("jsonl_math")
  cfg.manual_dir, cfg.step_delimiter = manual, "\n\n"
  task = tasks.make_task(cfg, str(tmp_path / "work"))
  # The validation split is carved from train: all of train.jsonl is still covered.
  prompt, solution = _by_hand(task.tokenizer_path, (train, test), "\n\n")
  _, one_newline = _by_hand(task.tokenizer_path, (train, test), "\n")
  assert solution > one_newline  # the delimiter's tokens count
  assert (task.longest_prompt, task.longest_solution) == (prompt, solution)
  assert (task.max_prompt_len, task.max_response_len) == (
      _expected_limit(prompt), _expected_limit(solution))
  for problem in task.split("test"):
    assert task.is_correct(task.encode_solution(problem), problem).reason == base.CORRECT


class _Lengths:
  """A task as `resolve_task_lengths` sees it: two limits."""

  def __init__(self, prompt, response):
    self.max_prompt_len, self.max_response_len = prompt, response


def test_job_lengths_follow_the_task():
  config = sft_config.get_config("task=jsonl_math,size=test")
  assert (config.model.max_len, config.sample.max_new_tokens) == (0, 0)
  record = config_lib.resolve_task_lengths(config, _Lengths(48, 80))
  assert (config.model.max_len, config.sample.max_new_tokens) == (128, 80)
  assert record == {"task.max_prompt_len": 48, "task.max_response_len": 80,
                    "sample.max_new_tokens": 80, "model.max_len": 128,
                    "derived": list(config_lib.LENGTH_FIELDS)}
  config_lib.validate(config, 8, prompt_len=48)  # fits by construction
  # A budget the user set is kept, and max_len follows it.
  config = sft_config.get_config("task=jsonl_math,size=test")
  config.sample.max_new_tokens = 100
  config_lib.resolve_task_lengths(config, _Lengths(48, 80))
  assert (config.model.max_len, config.sample.max_new_tokens) == (148, 100)
  # Tasks with fixed lengths keep theirs.
  config = sft_config.get_config("task=arith,size=test")
  before = (config.model.max_len, config.sample.max_new_tokens)
  record = config_lib.resolve_task_lengths(config, _Lengths(20, 30))
  assert (config.model.max_len, config.sample.max_new_tokens) == before == (128, 64)
  assert record["derived"] == ["task.max_prompt_len", "task.max_response_len"]


def _one_line_error(excinfo, field):
  error = excinfo.value
  assert isinstance(error, config_lib.ConfigError) and error.field == field
  assert "\n" not in str(error) and str(error).startswith(f"config.{field}: ")
  return str(error)


def test_explicit_settings_that_cannot_fit_fail_before_any_data_is_read(tmp_path):
  config = sft_config.get_config("task=jsonl_math,size=test")
  config.task.manual_dir = str(tmp_path / "never_read")
  config.task.max_prompt_len, config.sample.max_new_tokens, config.model.max_len = 64, 64, 100
  with pytest.raises(config_lib.ConfigError) as excinfo:
    validate_job(config, 8)
  assert _one_line_error(excinfo, "model.max_len") == (
      "config.model.max_len: 100 < 128 = task.max_prompt_len 64 (set) + "
      "sample.max_new_tokens 64 (set); set model.max_len=0 to follow them")
  config.model.max_len = 60
  with pytest.raises(config_lib.ConfigError, match=r"^config\.model\.max_len: 60 is not "
                     r"longer than the task's prompt limit \(64 tokens, set\)"):
    validate_job(config, 8)
  config.model.max_len = 128  # fits: no error
  validate_job(config, 8)
  # The response limit stands in for a budget at 0.
  config.sample.max_new_tokens, config.task.max_response_len = 0, 96
  with pytest.raises(config_lib.ConfigError) as excinfo:
    validate_job(config, 8)
  assert "sample.max_new_tokens 96 (= task.max_response_len, set)" in _one_line_error(
      excinfo, "model.max_len")
  for field, section, name in (("task.max_prompt_len", "task", "max_prompt_len"),
                               ("sample.max_new_tokens", "sample", "max_new_tokens"),
                               ("model.max_len", "model", "max_len")):
    bad = sft_config.get_config("task=jsonl_math,size=test")
    bad[section][name] = -1
    with pytest.raises(config_lib.ConfigError) as excinfo:
      validate_job(bad, 8)
    assert _one_line_error(excinfo, field) == (
        f"config.{field}: -1 must be an int >= 0 (0 = from the task's data)")


def test_an_explicit_max_len_the_derived_lengths_exceed_is_named():
  config = sft_config.get_config("task=jsonl_math,size=test")
  config.model.max_len = 100
  validate_job(config, 8)  # nothing to compare with before the data is read
  with pytest.raises(config_lib.ConfigError) as excinfo:
    config_lib.resolve_task_lengths(config, _Lengths(48, 64))
  assert _one_line_error(excinfo, "model.max_len") == (
      "config.model.max_len: 100 < 112 = task.max_prompt_len 48 (derived from the data) + "
      "sample.max_new_tokens 64 (= task.max_response_len, derived from the data); set "
      "model.max_len=0 to follow them")
  assert config.sample.max_new_tokens == 0  # nothing was filled in
  # The same through validate, given the task's limits.
  with pytest.raises(config_lib.ConfigError, match=r"^config\.model\.max_len: 100 < 112 = "):
    config_lib.validate(config, 8, prompt_len=48, response_len=64)
  config.model.max_len = 112
  config_lib.resolve_task_lengths(config, _Lengths(48, 64))
  assert (config.model.max_len, config.sample.max_new_tokens) == (112, 64)


def test_token_checks_run_before_anything_is_written(tmp_path):
  """A reference over an explicit limit stops a strict run with nothing prepared."""
  manual = _write(tmp_path / "gsm", train=_gsm_rows(20, "Tom"), test=_gsm_rows(4, "Ann"))
  cfg = tasks.default_task_config("jsonl_math")
  cfg.manual_dir, cfg.data_dir, cfg.max_response_len = manual, str(tmp_path / "tfds"), 5
  with pytest.raises(base.DataError, match=r"solution_too_many_tokens: reference has \d+ tokens"
                     r" > max_response_len=5; raise config\.task\.max_response_len, or set it "
                     r"to 0 to derive it from the data"):
    jm.make(cfg, str(tmp_path / "work"))
  assert not os.path.exists(tmp_path / "tfds" / "jsonl_math") or not any(
      (tmp_path / "tfds" / "jsonl_math").iterdir())
  # Lenient: the same limit drops problems, and the data is prepared.
  cfg.strict = False
  with pytest.raises(base.DataError, match="no problem within the token limits"):
    jm.make(cfg, str(tmp_path / "work"))
  cfg.max_response_len = 0
  task = jm.make(cfg, str(tmp_path / "work"))
  assert not any(task.token_filter_counts.values())
  assert len(os.listdir(tmp_path / "tfds" / "jsonl_math")) == 1
  assert re.fullmatch(r"fp_[0-9a-f]{16}", os.listdir(tmp_path / "tfds" / "jsonl_math")[0])
