"""Jobs on your JSONL with lengths from the data: a resume keeps them, changed data is
named, the pipeline checks every stage against them, and SFT ends on the test split."""

import json
import os
import re
import shutil
import sys

import pytest

from pavjax import artifacts
from pavjax import config_lib
from pavjax import tasks
from pavjax.jobs import pipeline
from pavjax.jobs import sft
from pavjax.main import run_job

sys.path.insert(0, ".")
from configs import sft as sft_config  # noqa: E402

Z2 = 1.96 ** 2


def _gsm(folder, n_train=24, n_test=6, long_reference=False):
  os.makedirs(folder, exist_ok=True)
  for split, n, who in (("train", n_train, "Tom"), ("test", n_test, "Ann")):
    with open(os.path.join(folder, f"{split}.jsonl"), "w", encoding="utf-8") as f:
      for i in range(n):
        a, b = i + 2, i % 5 + 1
        steps = [f"{who} has {a}.", f"{who} gets {b}.", f"{a}+{b}={a + b}"]
        if long_reference and split == "train" and i == 0:
          steps = steps[:2] + [f"{who} counts {k}." for k in range(a, a + b + 1)] + steps[2:]
        f.write(json.dumps({"question": f"{who} has {a} and gets {b}. How many?",
                            "answer": "\n".join(steps + [f"#### {a + b}"])}) + "\n")
  return str(folder)


@pytest.fixture
def tokenizer(tmp_path):
  """A SentencePiece model trained once on the first data, given to every job as is, so
  that changed data changes the reference lengths and nothing else."""
  cfg = tasks.default_task_config("jsonl_math")
  cfg.manual_dir = _gsm(tmp_path / "first")
  task = tasks.make_task(cfg, str(tmp_path / "tok"))
  path = str(tmp_path / "sp.model")
  shutil.copyfile(task.tokenizer_path, path)
  return path


def _config(manual, tokenizer_path, **train):
  config = sft_config.get_config("task=jsonl_math,size=test")
  config.task.manual_dir, config.task.tokenizer_path = manual, tokenizer_path
  config.train.num_steps, config.train.batch_size, config.train.log_every = 4, 8, 2
  config.checkpoint.every = 2
  config.sample.num_eval, config.sample.batch_size = 4, 8
  for key, value in train.items():
    config.train[key] = value
  return config


def test_a_resumed_job_keeps_the_lengths_it_derived(tmp_path, tokenizer, capsys):
  manual = _gsm(tmp_path / "first")
  workdir = str(tmp_path / "run")
  first_config = _config(manual, tokenizer, halt_at_step=2)
  first = run_job(first_config, workdir)
  assert first["halted"] and first["step"] == 2 and "test" not in first
  lengths = first["data"]["token_lengths"]
  prompt, response = lengths["max_prompt_len"], lengths["max_response_len"]
  record = {"task.max_prompt_len": prompt, "task.max_response_len": response,
            "sample.max_new_tokens": response, "model.max_len": prompt + response,
            "derived": list(config_lib.LENGTH_FIELDS)}
  assert first["lengths"] == record == config_lib.read_task_lengths(workdir)
  # config.json keeps the zeros the user gave; the numbers are in the record.
  with open(os.path.join(workdir, artifacts.CONFIG)) as f:
    saved = json.load(f)
  assert (saved["task"]["max_prompt_len"], saved["task"]["max_response_len"],
          saved["sample"]["max_new_tokens"], saved["model"]["max_len"]) == (0, 0, 0, 0)
  # The job ran with the numbers filled in (the config object shows them).
  assert (first_config.model.max_len, first_config.sample.max_new_tokens) == (
      prompt + response, response)

  # The same command again resumes: no config change is seen, the lengths are the same.
  second = run_job(_config(manual, tokenizer), workdir)
  assert second["step"] == 4 and not second["halted"]
  assert second["lengths"] == record
  rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  assert [r["step"] for r in rows] == [2, 4]  # steps 1-2 came from the checkpoint
  # The config object the first run filled in resumes as well (its job lengths are now
  # numbers it carries, no longer derived).
  first_config.train.halt_at_step = 0
  again = run_job(first_config, workdir)
  assert again["step"] == 4
  assert again["lengths"] == dict(record, derived=["task.max_prompt_len",
                                                   "task.max_response_len"])

  # SFT ends on the test split: n, accuracy and its interval, responses; printed too.
  test = second["test"]
  assert test["split"] == "test" and test["n"] == 4 and test["method"] == "greedy"
  assert test["accuracy"] == test["correct"] / 4
  assert test["ci95"] == pytest.approx(list(_wilson(test["correct"], 4)), abs=1e-6)
  assert sum(test["reasons"].values()) == 4 and len(test["samples"]) == sft.NUM_SHOWN
  assert [s["problem"] for s in test["samples"]] == ["test.jsonl:1", "test.jsonl:2",
                                                     "test.jsonl:3"]
  assert test["samples"][0]["prompt"] == "Ann has 2 and gets 1. How many?"
  with open(os.path.join(workdir, artifacts.SUMMARY)) as f:
    assert json.load(f)["test"] == again["test"]
  printed = capsys.readouterr().out
  low, high = test["ci95"]
  assert (f"test accuracy: {100 * test['accuracy']:.1f}% ({test['correct']}/4 problems, greedy "
          f"decoding), 95% Wilson interval [{100 * low:.1f}%, {100 * high:.1f}%]") in printed
  assert "[test.jsonl:1] reward " in printed and "Q: Ann has 2 and gets 1. How many?" in printed
  assert "sft: step 2, " in printed and "(halted before the last step: no test evaluation)" in (
      printed)


def test_changed_data_under_a_resumed_job_is_named(tmp_path, tokenizer):
  manual = _gsm(tmp_path / "data")
  workdir = str(tmp_path / "run")
  first = run_job(_config(manual, tokenizer, halt_at_step=2), workdir)
  old = first["lengths"]["task.max_response_len"]
  _gsm(tmp_path / "data", long_reference=True)  # a longer reference: a longer derived limit
  probe = tasks.make_task(_config(manual, tokenizer).task, str(tmp_path / "probe"))
  new = probe.max_response_len
  assert new > old and probe.max_prompt_len == first["lengths"]["task.max_prompt_len"]
  with pytest.raises(config_lib.ConfigError) as excinfo:
    run_job(_config(manual, tokenizer), workdir)
  error = excinfo.value
  path = os.path.join(workdir, config_lib.LENGTHS_FILE)
  assert error.field == "task.max_response_len"
  assert str(error) == (
      f"config.task.max_response_len: {new} now (derived from the data), {old} in {path}, "
      f"the record of the run whose checkpoints {workdir} holds: the data or its tokenizer "
      f"changed. Use a new workdir, set config.task.max_response_len={old}, or set "
      "PAVJAX_RESUME_ALLOW=task.max_response_len")


def _wilson(correct, n):
  """The Wilson score interval written out (z = 1.96)."""
  p = correct / n
  centre = (p + Z2 / (2 * n)) / (1 + Z2 / n)
  half = 1.96 * (p * (1 - p) / n + Z2 / (4 * n * n)) ** 0.5 / (1 + Z2 / n)
  return max(centre - half, 0.0), min(centre + half, 1.0)


def test_accuracy_interval_closed_forms():
  # None right: [0, z^2 / (n + z^2)]; all right: [n / (n + z^2), 1].
  out = sft.accuracy_interval(0, 128)
  assert (out["n"], out["correct"], out["accuracy"]) == (128, 0, 0.0)
  assert out["ci95"] == pytest.approx([0.0, Z2 / (128 + Z2)], abs=1e-6)
  assert sft.accuracy_interval(50, 50)["ci95"] == pytest.approx([50 / (50 + Z2), 1.0], abs=1e-6)
  assert sft.accuracy_interval(7, 20)["ci95"] == pytest.approx(list(_wilson(7, 20)), abs=1e-6)
  assert sft.accuracy_interval(0, 0) == {"n": 0, "correct": 0, "accuracy": 0.0,
                                         "ci95": [0.0, 1.0]}


def test_the_pipeline_checks_every_stage_against_the_lengths_from_the_data(tmp_path, tokenizer):
  config = config_lib.sibling_config("configs/x.py", "pipeline").get_config(
      "task=jsonl_math,size=tiny")
  config.task.manual_dir, config.task.tokenizer_path = _gsm(tmp_path / "data"), tokenizer
  workdir = str(tmp_path / "run")
  resolved = pipeline.resolve(config, workdir)
  pipeline.check_task_lengths(resolved, 8)  # zeros everywhere: they fit by construction
  task = tasks.make_task(resolved["sft"][0].task, os.path.join(workdir, "task"))
  budget = task.max_response_len
  # A stage's explicit max_len that the data's lengths do not fit is named before any stage.
  config.stages.rl_pav.model.max_len = task.max_prompt_len + budget - 1
  with pytest.raises(config_lib.ConfigError, match=re.escape(
      f"config.stages.rl_pav.model.max_len: {task.max_prompt_len + budget - 1} < "
      f"{task.max_prompt_len + budget} = task.max_prompt_len {task.max_prompt_len} (derived "
      f"from the data) + sample.max_new_tokens {budget} (= task.max_response_len, derived "
      "from the data)")):
    pipeline.check_task_lengths(pipeline.resolve(config, workdir), 8)
  assert not os.path.exists(os.path.join(workdir, "sft"))
