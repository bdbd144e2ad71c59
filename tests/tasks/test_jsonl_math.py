"""Tests of the jsonl_math task: builder, validation, answers, tokenizer, rewards."""

import json
import os
import pathlib
import re
import string
import subprocess
import sys
import time

import pytest
import sentencepiece as spm
import tensorflow_datasets as tfds

from pavjax import tasks
from pavjax.tasks import answers
from pavjax.tasks import base
from pavjax.tasks import jsonl_builder
from pavjax.tasks import jsonl_math as jm
from pavjax.tasks import jsonl_reader
from pavjax.tasks import tokenizer as tokenizer_lib

# ---------------------------------------------------------------------------
# Fixture data: train mixes both styles (format='auto'), validation is GSM8K,
# test mixes both styles again. EXPECTED holds the exact prepared records.
# ---------------------------------------------------------------------------

TRAIN = [
    {"id": "g1", "question": "Tom has 3 apples and buys 4 more. How many apples does he have?",
     "answer": "Tom buys 4 more, so he has 3 + 4 = <<3+4=7>>7 apples.\n#### 7"},
    {"question": "A car costs $1,200 and a bike costs $34. What do both cost together?",
     "answer": "Together they cost 1200 + 34 = <<1200+34=1234>>1234 dollars.\n#### 1,234"},
    {"problem": "What is $\\frac{2}{4}$ in lowest terms?",
     "solution": "Divide both by 2. The answer is $\\boxed{\\frac{1}{2}}$."},
    {"id": 17, "problem": "Find $x$ if $2x = 6$.",
     "solution": "We have $2x = 6$. Dividing by 2 gives $x = 3$.\nSo $x = \\boxed{3}$."},
]
VALIDATION = [
    {"question": "Sam had 10 pens and lost 4. How many are left?",
     "answer": "He has 10 - 4 = <<10-4=6>>6 pens left.\n#### 6"},
]
TEST = [
    {"problem": "Write $\\sqrt{3}/2$ as a fraction.",
     "solution": "It is $\\boxed{\\dfrac{\\sqrt{3}}{2}}$."},
    {"question": "Ann reads 12 pages a day for 5 days. How many pages does she read?",
     "answer": "She reads 12 * 5 = <<12*5=60>>60 pages.\n#### 60"},
    {"problem": "What is 0.5 as a fraction?", "solution": "Half of one.\nAnswer: 1/2"},
]


def _rec(uid, source, fmt, question, steps, answer, solution, index):
  return dict(uid=uid, source=source, format=fmt, question=question, steps=steps,
              answer=answer, solution=solution, index=index)


EXPECTED = {
    "train": [
        _rec("g1", "train.jsonl:1", "gsm8k", TRAIN[0]["question"],
             ["Tom buys 4 more, so he has 3 + 4 = 7 apples.", "#### 7"], "7",
             TRAIN[0]["answer"], 0),
        _rec("train.jsonl:2", "train.jsonl:2", "gsm8k", TRAIN[1]["question"],
             ["Together they cost 1200 + 34 = 1234 dollars.", "#### 1,234"], "1234",
             TRAIN[1]["answer"], 1),
        _rec("train.jsonl:3", "train.jsonl:3", "math", TRAIN[2]["problem"],
             ["Divide both by 2.", "The answer is $\\boxed{\\frac{1}{2}}$."], "\\frac{1}{2}",
             TRAIN[2]["solution"], 2),
        _rec("17", "train.jsonl:4", "math", TRAIN[3]["problem"],
             ["We have $2x = 6$.", "Dividing by 2 gives $x = 3$.", "So $x = \\boxed{3}$."], "3",
             TRAIN[3]["solution"], 3),
    ],
    "validation": [
        _rec("validation.jsonl:1", "validation.jsonl:1", "gsm8k", VALIDATION[0]["question"],
             ["He has 10 - 4 = 6 pens left.", "#### 6"], "6", VALIDATION[0]["answer"], 0),
    ],
    "test": [
        _rec("test.jsonl:1", "test.jsonl:1", "math", TEST[0]["problem"],
             ["It is $\\boxed{\\dfrac{\\sqrt{3}}{2}}$."], "\\frac{\\sqrt{3}}{2}",
             TEST[0]["solution"], 0),
        _rec("test.jsonl:2", "test.jsonl:2", "gsm8k", TEST[1]["question"],
             ["She reads 12 * 5 = 60 pages.", "#### 60"], "60", TEST[1]["answer"], 1),
        _rec("test.jsonl:3", "test.jsonl:3", "math", TEST[2]["problem"],
             ["Half of one.", "Answer: 1/2"], "1/2", TEST[2]["solution"], 2),
    ],
}

GOOD_LINE = json.dumps({"question": "How much is 1 + 1?", "answer": "1 + 1 = 2\n#### 2"})


def _write_jsonl(path, records):
  with open(path, "w", encoding="utf-8") as f:
    for rec in records:
      f.write(json.dumps(rec) + "\n")


def _write_raw(path, lines):
  with open(path, "wb") as f:
    f.write(b"\n".join(lines) + b"\n")


@pytest.fixture
def manual_dir(tmp_path):
  d = tmp_path / "manual"
  d.mkdir()
  _write_jsonl(d / "train.jsonl", TRAIN)
  _write_jsonl(d / "validation.jsonl", VALIDATION)
  _write_jsonl(d / "test.jsonl", TEST)
  return d


def _train_sp(tmp_dir, name, **ids):
  corpus = []
  for rec in TRAIN + VALIDATION + TEST:
    corpus.extend(str(v) for v in rec.values())
  corpus.append(string.ascii_letters + string.digits + string.punctuation)
  corpus_path = os.path.join(tmp_dir, "corpus.txt")
  with open(corpus_path, "w") as f:
    f.write("\n".join(corpus) + "\n")
  prefix = os.path.join(tmp_dir, name)
  spm.SentencePieceTrainer.train(
      input=corpus_path, model_prefix=prefix, vocab_size=120, hard_vocab_limit=False,
      character_coverage=1.0, minloglevel=2, **ids)
  return prefix + ".model"


@pytest.fixture(scope="session")
def sp_models(tmp_path_factory):
  d = str(tmp_path_factory.mktemp("sp"))
  return {
      # pad is 0 already: ids are used as they are.
      "pad0": _train_sp(d, "pad0", pad_id=0, unk_id=1, bos_id=2, eos_id=3),
      # SentencePiece defaults (unk 0, bos 1, eos 2, no pad): ids shift by one.
      "default": _train_sp(d, "default"),
      # No bos / eos: EOS becomes an extra id after NL.
      "noeos": _train_sp(d, "noeos", unk_id=0, bos_id=-1, eos_id=-1, pad_id=-1),
  }


def _cfg(manual, tokenizer_path, **overrides):
  cfg = tasks.default_task_config("jsonl_math")
  cfg.manual_dir = str(manual)
  cfg.tokenizer_path = tokenizer_path
  for key, value in overrides.items():
    setattr(cfg, key, value)
  return cfg


def _prepared_dirs(data_dir):
  root = os.path.join(data_dir, "jsonl_math")
  if not os.path.isdir(root):
    return []
  return [c for c in os.listdir(root) if os.path.isdir(os.path.join(root, c, "1.0.0"))]


# ---------------------------------------------------------------------------
# Answers and steps.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("raw, expected", [
    ("1,234", "1234"),
    ("$1,234.50", "1234.5"),
    ("3.0", "3"),
    (" 42. ", "42"),
    (".5", "0.5"),
    ("-0", "0"),
    ("\\dfrac{1}{2}", "\\frac{1}{2}"),
    ("\\tfrac12", "\\frac{1}{2}"),
    ("\\frac{\\sqrt3}{2}", "\\frac{\\sqrt{3}}{2}"),
    ("\\left( 1, 2 \\right)", "(1,2)"),
    ("\\text{(B)}", "(B)"),
    ("5\\text{ cm}", "5"),
    ("90^\\circ", "90"),
    ("50\\%", "50"),
    ("x = 5", "5"),
    ("{7}", "7"),
    ("1,\\!000", "1000"),
    ("\\boxed{12}", "12"),
    ("(1,234)", "(1,234)"),  # not a number with thousands commas: kept
    ("\\rightarrow", "\\rightarrow"),  # \right only as a whole command
    ("\u22125", "-5"),  # Unicode minus sign
    ("$\u2212\\frac{3}{4}$", "-\\frac{3}{4}"),
    ("405 dollars", "405"),  # one unit word after a plain number is dropped
    ("12 apples.", "12"),
    ("\\$1,234.50 Dollars", "1234.5"),
    ("\\text{7 days}", "7"),
    ("x^2 dollars", "x^2dollars"),  # not a plain number: words kept
    ("405 dollars and 5 cents", "405dollarsand5cents"),  # more than one word: kept
    ("5 x", "5x"),  # a one-letter word is a variable, not a unit
    ("2 hundred", "2hundred"),  # words that change the value are kept
    ("3 pi", "3pi"),
    ("1" * 60 + " dollars", "1" * 60 + "dollars"),  # longer than MAX_UNIT_ANSWER_CHARS
])
def test_normalize_answer(raw, expected):
  assert answers.normalize_answer(raw) == expected


@pytest.mark.parametrize("text, expected", [
    ("so \\boxed{\\frac{1}{2}}.", ("\\frac{1}{2}", "")),
    ("$\\boxed{\\frac{\\sqrt{3}}{\\sqrt{4}}}$", ("\\frac{\\sqrt{3}}{\\sqrt{4}}", "")),
    ("\\boxed{\\{1, 2\\}}", ("\\{1,2\\}", "")),  # escaped braces inside
    ("\\boxed{\\boxed{3}}", ("3", "")),  # outermost group only
    ("\\fbox{4} and again \\boxed{4.0}", ("4", "")),  # agreeing answers
    ("steps\n#### 1,234", ("1234", "")),
    ("#### 7\n\\boxed{8}", ("7", "")),  # #### wins over \boxed
    ("x\nThe final answer is: 12", ("12", "")),
    ("ANSWER: $3$", ("3", "")),
    ("\\boxed{1} or \\boxed{2}", (None, base.MULTIPLE_ANSWERS)),
    ("#### 1\n#### 2", (None, base.MULTIPLE_ANSWERS)),
    ("\\boxed{0.5} and \\boxed{\\frac{1}{2}}", ("0.5", "")),  # numerically equal
    ("no marker at all", (None, base.NO_ANSWER)),
    ("\\boxed{}", (None, base.NO_ANSWER)),
    ("\\boxed{3", (None, base.NO_ANSWER)),  # unclosed
    ("####", (None, base.NO_ANSWER)),
    ("The answer is 405.", ("405", "")),  # the phrase without a colon (kind 4)
    ("so the answer is $405$", ("405", "")),
    ("So the answer is 12.5.", ("12.5", "")),  # a decimal point is not a sentence end
    ("The answer is 5. Check: 2+3=5.", ("5", "")),  # the sentence ends at ". "
    ("Thus the final answer is 1,234 apples.", ("1234", "")),
    ("The answer is \u22127.", ("-7", "")),
    ("First the answer is 3?\nNo: the answer is 4.", ("4", "")),  # the last phrase counts
    ("The answer is 3.\nAnswer: 4", ("4", "")),  # an Answer: line wins over the phrase
    ("The answer is 3. So \\boxed{4}", ("4", "")),  # \boxed wins over the phrase
    ("theanswer is 3; the answers is 3", (None, base.NO_ANSWER)),  # whole words only
    ("The answer is.", (None, base.NO_ANSWER)),
])
def test_extract_final_answer(text, expected):
  assert answers.extract_final_answer(text) == expected


def test_answers_match():
  assert answers.answers_match("0.5", "\\frac{1}{2}", exact_text=True)
  assert answers.answers_match("1/2", "0.50", exact_text=True)
  assert answers.answers_match("-\\frac{3}{4}", "-0.75", exact_text=True)
  assert not answers.answers_match("1/0", "0/0", exact_text=True)
  assert not answers.answers_match("2", "3", exact_text=True)
  assert not answers.answers_match("9" * 100, "9" * 99 + "8", exact_text=True)
  assert not answers.answers_match("\\Pi", "\\pi", exact_text=True)  # case matters in math
  assert answers.answers_match("\\Pi", "\\Pi", exact_text=True)
  assert answers.answers_match("\u22125", "-5")  # the Unicode minus sign, unnormalized too
  assert answers.answers_match("\u22125", "-5", exact_text=True)
  assert not answers.answers_match("\u22125", "5")
  norm = answers.normalize_answer
  assert answers.answers_match(norm("405 dollars"), norm("405"), exact_text=True)
  assert answers.answers_match(norm("12 apples"), norm("12.0"), exact_text=True)
  assert not answers.answers_match(norm("12 apples"), norm("13"), exact_text=True)
  assert not answers.answers_match(norm("x^2 dollars"), norm("x^2"), exact_text=True)


def test_steps():
  assert jsonl_reader.gsm8k_steps("a = <<1+1=2>>2\n\n  b\n####  5 ") == ["a = 2", "b", "#### 5"]
  assert jsonl_reader.math_steps(
      "First, $x = 1. Y$ stays. Then \\(a. B\\) too! Next {p. Q} ok.\n\nLast line $x$.") == [
          "First, $x = 1. Y$ stays.", "Then \\(a. B\\) too!", "Next {p. Q} ok.",
          "Last line $x$."]


# ---------------------------------------------------------------------------
# Builder: prepare once, read back through the ArrayRecord data source.
# ---------------------------------------------------------------------------


def test_prepare_and_read_back(manual_dir, tmp_path):
  data_dir = str(tmp_path / "tfds")
  builder, summary = jm.prepare(str(manual_dir), data_dir)
  assert builder.info.file_format == tfds.core.FileFormat.ARRAY_RECORD
  for split, expected in EXPECTED.items():
    assert jm.load_split(builder, split) == expected, split
  # The same data through the public tfds API, by name.
  config = builder.builder_config.name
  assert config == "fp_" + jm.fingerprint(str(manual_dir), fmt="auto", strict=True,
                                          max_prompt_chars=4000, seed=0, val_fraction=0.05)
  source = tfds.data_source(f"jsonl_math/{config}", split="test", data_dir=data_dir,
                            download=False)
  assert [jsonl_builder.decode_example(source[i]) for i in range(len(source))] == EXPECTED["test"]
  assert summary["kept"] == {"train": 4, "validation": 1, "test": 3}
  assert summary["validation_source"] == "file"
  assert not any(summary["skipped"].values())
  with open(os.path.join(builder.data_dir, jsonl_reader.SUMMARY_FILE)) as f:
    assert json.load(f) == summary
  # Prepared once: a second call reuses the files; changed data gets a new config.
  mtime = os.path.getmtime(os.path.join(builder.data_dir, jsonl_reader.SUMMARY_FILE))
  again, _ = jm.prepare(str(manual_dir), data_dir)
  assert again.data_dir == builder.data_dir
  assert os.path.getmtime(os.path.join(builder.data_dir, jsonl_reader.SUMMARY_FILE)) == mtime
  _write_jsonl(manual_dir / "test.jsonl", TEST[:2])
  changed, _ = jm.prepare(str(manual_dir), data_dir)
  assert changed.data_dir != builder.data_dir
  assert len(jm.load_split(changed, "test")) == 2


def test_validation_carved_from_train(tmp_path):
  d = tmp_path / "m"
  d.mkdir()
  train = [{"question": f"What is {i} + 1?", "answer": f"{i} + 1 = {i + 1}\n#### {i + 1}"}
           for i in range(20)]
  _write_jsonl(d / "train.jsonl", train)
  _write_jsonl(d / "test.jsonl", TEST)
  splits = {}
  for seed in (0, 0, 1):
    res = jsonl_reader.validate_manual_dir(str(d), seed=seed, val_fraction=0.2)
    splits.setdefault(seed, []).append(
        {s: [r["source"] for r in recs] for s, recs in res.records.items()})
    assert res.summary["validation_source"] == "carved"
  assert splits[0][0] == splits[0][1]  # deterministic
  assert splits[0][0]["validation"] != splits[1][0]["validation"]  # seed-dependent
  first = splits[0][0]
  assert len(first["validation"]) == 4 and len(first["train"]) == 16
  assert sorted(first["train"] + first["validation"]) == sorted(
      f"train.jsonl:{i}" for i in range(1, 21))
  with pytest.raises(ValueError, match="val_fraction"):
    jsonl_reader.validate_manual_dir(str(d), val_fraction=0.0)


# ---------------------------------------------------------------------------
# Bad input: strict raises with file:line and reason; lenient counts exactly.
# ---------------------------------------------------------------------------

BAD_LINES = {
    "empty_line": b"   ",
    "invalid_utf8": b'{"question": "caf\xff?", "answer": "#### 1"}',
    "invalid_json": b'{"question": "q", "answer": ',
    "not_object": b"[1, 2, 3]",
    "missing_field": b'{"question": "How many?"}',
    "non_string_field": b'{"question": 5, "answer": "#### 5"}',
    "empty_field": b'{"question": "  ", "answer": "#### 5"}',
    "prompt_too_long": json.dumps({"question": "x" * 101, "answer": "#### 1"}).encode(),
    "no_answer": b'{"question": "q?", "answer": "It is 4."}',
    "multiple_answers": b'{"problem": "p?", "solution": "$\\\\boxed{1}$ or $\\\\boxed{2}$"}',
    "duplicate_id": b'{"question": "again?", "answer": "#### 2", "id": "train.jsonl:1"}',
}


@pytest.mark.parametrize("reason", sorted(BAD_LINES))
def test_strict_raises_with_file_line_and_reason(reason, tmp_path):
  d = tmp_path / "m"
  d.mkdir()
  _write_raw(d / "train.jsonl", [GOOD_LINE.encode(), GOOD_LINE.encode().replace(b"1 + 1", b"2")])
  _write_jsonl(d / "test.jsonl", TEST)
  _write_raw(d / "validation.jsonl", [GOOD_LINE.encode(), GOOD_LINE.encode(), BAD_LINES[reason]])
  path = os.path.join(str(d), "validation.jsonl")
  with pytest.raises(base.DataError, match=re.escape(f"{path}:3: {reason}:")):
    jsonl_reader.validate_manual_dir(str(d), max_prompt_chars=100)


def test_strict_duplicate_and_non_string_id(tmp_path):
  d = tmp_path / "m"
  d.mkdir()
  line = json.loads(GOOD_LINE)
  _write_jsonl(d / "train.jsonl", [dict(line, id="a"), dict(line, id="b")])
  _write_jsonl(d / "test.jsonl", [dict(line, id="b")])
  with pytest.raises(ValueError, match=re.escape(
      f"{d / 'test.jsonl'}:1: duplicate_id: id 'b' already used at train.jsonl:2")):
    jsonl_reader.validate_manual_dir(str(d))
  _write_jsonl(d / "test.jsonl", [dict(line, id=["c"])])
  with pytest.raises(ValueError, match=re.escape(f"{d / 'test.jsonl'}:1: non_string_field:")):
    jsonl_reader.validate_manual_dir(str(d))
  _write_jsonl(d / "test.jsonl", [dict(line, id=True)])
  with pytest.raises(ValueError, match=re.escape(f"{d / 'test.jsonl'}:1: non_string_field:")):
    jsonl_reader.validate_manual_dir(str(d))


def test_strict_make_fails_before_writing(tmp_path, sp_models):
  d = tmp_path / "m"
  d.mkdir()
  _write_raw(d / "train.jsonl", [GOOD_LINE.encode()] * 3 + [b"{oops"])
  _write_jsonl(d / "test.jsonl", TEST)
  data_dir = str(tmp_path / "tfds")
  with pytest.raises(ValueError, match=re.escape(f"{d / 'train.jsonl'}:4: invalid_json:")):
    jm.make(_cfg(d, sp_models["pad0"], data_dir=data_dir))
  assert not _prepared_dirs(data_dir)


def test_lenient_counts(tmp_path, sp_models):
  d = tmp_path / "m"
  d.mkdir()
  good = [json.dumps({"question": f"What is {i} + 1?",
                      "answer": f"{i} + 1 = {i + 1}\n#### {i + 1}"}).encode() for i in range(10)]
  repeats = {"invalid_json": 2, "empty_line": 3, "missing_field": 1}
  lines = list(good)
  where = {reason: [] for reason in jsonl_reader.BAD_LINE_REASONS}  # reason -> file:line

  def add(line, reason=None):
    lines.append(line)
    if reason:
      where[reason].append(f"train.jsonl:{len(lines)}")

  for reason, bad in sorted(BAD_LINES.items()):
    for _ in range(repeats.get(reason, 1)):
      add(bad, reason)
  add(b'{"answer": "#### 3"}', "missing_field")  # GSM8K record without question
  add(b'{"solution": ["\\\\boxed{1}"], "problem": "p"}', "non_string_field")
  add(b'{"id": "x", "question": "q1", "answer": "#### 1"}')
  add(b'{"id": "x", "question": "q2", "answer": "#### 2"}', "duplicate_id")
  _write_raw(d / "train.jsonl", lines)
  _write_jsonl(d / "test.jsonl", TEST)
  expected = {reason: 1 for reason in jsonl_reader.BAD_LINE_REASONS}
  expected.update(invalid_json=2, empty_line=3, missing_field=2, non_string_field=2,
                  duplicate_id=2)
  # duplicate_id: the BAD_LINES one collides with train.jsonl:1's default id.
  res = jsonl_reader.validate_manual_dir(str(d), strict=False, max_prompt_chars=100,
                                         val_fraction=0.25)
  assert res.counts == expected
  assert res.summary["skipped"] == expected
  assert {reason: len(w) for reason, w in where.items()} == expected
  assert res.summary["skipped_lines"] == where
  assert where["empty_line"] == ["train.jsonl:13", "train.jsonl:14", "train.jsonl:15"]
  assert res.summary["lines_read"] == {"train.jsonl": len(lines), "test.jsonl": 3}
  assert res.summary["kept"] == {"train": 8, "validation": 3, "test": 3}
  # Through the task: the summary lands next to the prepared data.
  data_dir = str(tmp_path / "tfds")
  task = jm.make(_cfg(d, sp_models["pad0"], data_dir=data_dir, strict=False,
                      max_prompt_chars=100, val_fraction=0.25))
  assert [len(task.split(s)) for s in base.SPLITS] == [8, 3, 3]
  # Jobs copy the task's data report into their summary.json.
  assert task.data_report()["jsonl_validation"]["skipped"] == expected
  (config,) = _prepared_dirs(data_dir)
  summary_path = os.path.join(data_dir, "jsonl_math", config, "1.0.0", jsonl_reader.SUMMARY_FILE)
  with open(summary_path) as f:
    written = json.load(f)
  assert written["skipped"] == expected and written["skipped_lines"] == where
  # Strict on the same files stops at the first bad line (line 11, after 10 good ones).
  with pytest.raises(ValueError, match=re.escape(f"{d / 'train.jsonl'}:11: ")):
    jsonl_reader.validate_manual_dir(str(d), strict=True, max_prompt_chars=100)


def test_missing_files_and_options(tmp_path, sp_models):
  d = tmp_path / "m"
  d.mkdir()
  _write_jsonl(d / "train.jsonl", TRAIN)
  with pytest.raises(ValueError, match="lacks test.jsonl"):
    jsonl_reader.validate_manual_dir(str(d))
  _write_jsonl(d / "test.jsonl", TEST)
  with pytest.raises(ValueError, match="format"):
    jsonl_reader.validate_manual_dir(str(d), fmt="csv")
  with pytest.raises(ValueError, match="missing_field"):  # MATH records lack question/answer
    jsonl_reader.validate_manual_dir(str(d), fmt="gsm8k")
  with pytest.raises(ValueError, match="tokenizer_path='/no/such.model' is not a file"):
    jm.make(_cfg(d, "/no/such.model", data_dir=str(tmp_path / "tfds")))
  with pytest.raises(ValueError, match="sp_vocab_size=0 must be positive"):
    jm.make(_cfg(d, "", sp_vocab_size=0, data_dir=str(tmp_path / "tfds")))
  with pytest.raises(ValueError, match="data_dir"):
    jm.make(_cfg(d, sp_models["pad0"]), workdir=None)


# ---------------------------------------------------------------------------
# Tokenizer and task.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name, offset, extra_eos", [
    ("pad0", 0, False), ("default", 1, False), ("noeos", 1, True)])
def test_tokenizer_ids(sp_models, name, offset, extra_eos):
  tok = tokenizer_lib.SentencePieceTokenizer.load(sp_models[name])
  assert tok.offset == offset
  assert tok.nl_id == tok.piece_size + offset
  assert tok.eos_id == (tok.nl_id + 1 if extra_eos else tok.sp.eos_id() + offset)
  assert tok.vocab_size == tok.nl_id + (2 if extra_eos else 1)
  text = "Tom has 3 apples.\n\n#### 7\n$\\boxed{\\frac{1}{2}}$"
  ids = tok.encode(text)
  assert 0 not in ids and max(ids) < tok.vocab_size
  assert ids.count(tok.nl_id) == 3
  assert tok.decode(ids) == text
  assert tok.decode([0] + ids + [0, tok.eos_id]) == text  # padding and extras dropped


@pytest.mark.parametrize("name", ["pad0", "default", "noeos"])
def test_task_reference_solutions_correct(manual_dir, tmp_path, sp_models, name):
  task = tasks.make_task(_cfg(manual_dir, sp_models[name]), str(tmp_path / "work"))
  assert isinstance(task, jm.JsonlMathTask) and task.name == "jsonl_math"
  assert _prepared_dirs(str(tmp_path / "work" / "tfds"))
  assert task.step_end_ids == (task.tokenizer.nl_id,)
  for split in base.SPLITS:
    problems = task.split(split)
    assert [p.uid for p in problems] == [r["uid"] for r in EXPECTED[split]]
    for problem, rec in zip(problems, EXPECTED[split]):
      assert problem.answer == rec["answer"] and list(problem.steps) == rec["steps"]
      prompt, solution = task.encode_prompt(problem), task.encode_solution(problem)
      assert len(prompt) <= task.max_prompt_len and len(solution) <= task.max_response_len
      assert prompt[-1] == task.tokenizer.nl_id and solution[-1] == task.eos_id
      assert task.is_correct(solution + [0, 0], problem) == base.Outcome(1.0, base.CORRECT)
      spans = task.segment_steps(solution)
      assert len(spans) == len(problem.steps)
      assert [task.tokenizer.decode(solution[a:b]).strip() for a, b in spans] == list(
          problem.steps)
      assert task.decode(solution) == "\n".join(problem.steps) + "</s>"
  arrays = base.sft_arrays(task, task.split("train"), 200)
  assert arrays.inputs.shape == (4, 200) and arrays.inputs.max() < task.vocab_size


def test_task_outcomes(manual_dir, tmp_path, sp_models):
  task = jm.make(_cfg(manual_dir, sp_models["pad0"]), str(tmp_path))
  limit = task.max_response_len
  gsm = task.split("train")[1]  # answer 1234
  math = task.split("train")[2]  # answer \frac{1}{2}
  enc, eos = task.tokenizer.encode, task.eos_id

  def outcome(text, problem, end=(eos,)):
    return task.is_correct(enc(text) + list(end), problem)

  assert outcome("It costs 1234.\n#### $1,234", gsm) == base.Outcome(1.0, base.CORRECT)
  assert outcome("#### 1234.00", gsm).reason == base.CORRECT
  assert outcome("#### 1233", gsm) == base.Outcome(0.0, base.WRONG)
  assert outcome("So \\boxed{0.5}", math).reason == base.CORRECT
  assert outcome("So \\boxed{\\dfrac{1}{2}}", math).reason == base.CORRECT
  assert outcome("Answer: 1/2", math).reason == base.CORRECT
  assert outcome("\\boxed{1/3}", math).reason == base.WRONG
  assert outcome("I do not know", gsm).reason == base.NO_ANSWER
  assert outcome("#### 1\n#### 2", gsm).reason == base.MULTIPLE_ANSWERS
  assert outcome("#### 1234", gsm, end=()).reason == base.TRUNCATED
  assert outcome("#### 1234", gsm, end=(0, 0)).reason == base.TRUNCATED
  assert task.is_correct([eos, 0], gsm) == base.Outcome(0.0, base.EMPTY)
  assert task.is_correct([task.tokenizer.nl_id, eos], gsm).reason == base.EMPTY
  assert task.is_correct([7] * limit + [eos], gsm).reason == base.TOO_LONG
  assert task.is_correct([7] * (limit - 1) + [eos], gsm).reason != base.TOO_LONG


def test_token_limits_strict_and_lenient(manual_dir, tmp_path, sp_models):
  cfg = _cfg(manual_dir, sp_models["pad0"], data_dir=str(tmp_path / "tfds"))
  tok = tokenizer_lib.SentencePieceTokenizer.load(sp_models["pad0"])
  records = [r for split in base.SPLITS for r in EXPECTED[split]]
  lengths = [len(tok.encode("\n".join(r["steps"]))) for r in records]
  cfg.max_response_len = max(lengths)  # the longest references + EOS no longer fit
  too_long = [r["source"] for r, n in zip(records, lengths) if n == max(lengths)]
  # Strict: the first problem over the limit, named by its file and line.
  with pytest.raises(base.DataError, match=re.escape(
      f"{manual_dir / too_long[0].split(':')[0]}:{too_long[0].split(':')[1]}: "
      f"solution_too_many_tokens: reference has {max(lengths) + 1} tokens > "
      f"max_response_len={max(lengths)}")):
    jm.make(cfg)
  cfg.strict = False
  task = jm.make(cfg)
  dropped = lengths.count(max(lengths))
  assert task.token_filter_counts == {jm.PROMPT_TOO_MANY_TOKENS: 0,
                                      jm.SOLUTION_TOO_MANY_TOKENS: dropped,
                                      jm.REFERENCE_NOT_CORRECT: 0}
  assert task.token_filter_lines == {jm.PROMPT_TOO_MANY_TOKENS: [],
                                     jm.SOLUTION_TOO_MANY_TOKENS: too_long,
                                     jm.REFERENCE_NOT_CORRECT: []}
  assert task.data_report()["token_filter_lines"] == task.token_filter_lines
  assert sum(len(task.split(s)) for s in base.SPLITS) == len(lengths) - dropped
  cfg.max_prompt_len = 3
  with pytest.raises(base.DataError, match="no problem within the token limits"):
    jm.make(cfg)


HOSTILE = [
    "{" * 100_000,
    "}" * 100_000,
    "\\boxed{" * 15_000,
    "\\boxed{" + "{" * 50_000 + "}" * 50_000 + "}",
    "\\boxed{}" * 12_000,
    "\\text{" * 15_000 + "}" * 15_000,
    "$" * 100_000,
    "\\" * 100_000,
    "#" * 100_000,
    "\n" * 100_000,
    " " * 100_000 + "answer:",
    "answer: " * 12_000,
    "\\frac" * 20_000,
    "<<" * 50_000,
    "9" * 100_000,
    "1," * 50_000 + "0",
    "\\boxed{1}\\boxed{2}" * 5_000,
    "the answer is " * 8_000,
    "the" + " " * 100_000 + "x",
    "the final " * 10_000,
    "The answer is 1. " * 6_000,
    "the answer is " + "1 " * 50_000,
    "\u2212" * 100_000,
]


@pytest.mark.parametrize("index", range(len(HOSTILE)))
def test_hostile_strings_fast(index):
  text = HOSTILE[index]
  start = time.perf_counter()
  answers.extract_final_answer(text)
  answers.normalize_answer(text)
  jsonl_reader.math_steps(text)
  jsonl_reader.gsm8k_steps(text)
  assert time.perf_counter() - start < 1.0


def test_hostile_responses_reward_zero(manual_dir, tmp_path, sp_models):
  task = jm.make(_cfg(manual_dir, sp_models["pad0"], max_response_len=10**6), str(tmp_path))
  problem = task.split("test")[0]
  for text in HOSTILE[:8] + HOSTILE[-1:]:
    response = task.tokenizer.encode(text) + [task.eos_id]
    start = time.perf_counter()
    outcome = task.is_correct(response, problem)
    assert outcome.reward == 0.0
    assert time.perf_counter() - start < 1.0, text[:20]


def test_blank_line_steps_for_math_style_data(manual_dir, tmp_path, sp_models):
  """step_delimiter='\\n\\n': references join steps with a blank line, and segmentation
  splits there only (a single newline inside the text would not end a step)."""
  task = tasks.make_task(_cfg(manual_dir, sp_models["pad0"], step_delimiter="\n\n"),
                         str(tmp_path / "work"))
  nl = task.tokenizer.nl_id
  for problem in task.split("train"):
    solution = task.encode_solution(problem)
    assert solution.count(nl) == 2 * (len(problem.steps) - 1)
    assert task.decode(solution) == "\n\n".join(problem.steps) + "</s>"
    spans = task.segment_steps(solution)
    assert len(spans) == len(problem.steps)
    assert [task.tokenizer.decode(solution[a:b]).strip() for a, b in spans] == list(
        problem.steps)
    assert task.is_correct(solution, problem) == base.Outcome(1.0, base.CORRECT)
    if len(problem.steps) > 1:  # the same steps joined by one newline: a single step
      one_line = task.tokenizer.encode("\n".join(problem.steps)) + [task.eos_id]
      assert len(task.segment_steps(one_line)) == 1
  with pytest.raises(ValueError, match="step_delimiter"):
    tasks.make_task(_cfg(manual_dir, sp_models["pad0"], step_delimiter=" "),
                    str(tmp_path / "work2"))


# ---------------------------------------------------------------------------
# Unusable data: a DataError with one line naming the file (and line).
# ---------------------------------------------------------------------------


def test_missing_and_empty_files_are_data_errors(tmp_path):
  d = tmp_path / "m"
  with pytest.raises(base.DataError, match=f"^{re.escape(str(d))} does not exist"):
    jsonl_reader.validate_manual_dir(str(d))
  d.mkdir()
  (d / "train.jsonl").write_bytes(b"")
  _write_jsonl(d / "test.jsonl", TEST)
  with pytest.raises(base.DataError, match=f"^{re.escape(str(d / 'train.jsonl'))} is empty$"):
    jsonl_reader.validate_manual_dir(str(d))
  with pytest.raises(base.DataError, match=f"^{re.escape(str(d / 'train.jsonl'))} is empty$"):
    jsonl_reader.validate_manual_dir(str(d), strict=False)
  _write_raw(d / "train.jsonl", [GOOD_LINE.encode()])  # one record: nothing to carve
  with pytest.raises(base.DataError, match="has 1 valid records: too few to carve"):
    jsonl_reader.validate_manual_dir(str(d))
  (d / "test.jsonl").unlink()
  with pytest.raises(base.DataError, match="lacks test.jsonl"):
    jsonl_reader.validate_manual_dir(str(d))


def test_skipped_lines_are_capped(tmp_path):
  d = tmp_path / "m"
  d.mkdir()
  good = [json.dumps({"question": f"What is {i} + 1?",
                      "answer": f"{i} + 1 = {i + 1}\n#### {i + 1}"}).encode() for i in range(4)]
  _write_raw(d / "train.jsonl", good + [b"{oops"] * 150 + [b"   "])
  _write_jsonl(d / "test.jsonl", TEST)
  res = jsonl_reader.validate_manual_dir(str(d), strict=False)
  assert res.counts[jsonl_reader.INVALID_JSON] == 150
  assert res.summary["skipped_lines"][jsonl_reader.INVALID_JSON] == [
      f"train.jsonl:{n}" for n in range(5, 105)]  # the first 100 of 150
  assert res.summary["skipped_lines"][jsonl_reader.EMPTY_LINE] == ["train.jsonl:155"]
  assert not res.summary["skipped_lines"][jsonl_reader.DUPLICATE_ID]


# ---------------------------------------------------------------------------
# No tokenizer given: one is trained on the train split and cached.
# ---------------------------------------------------------------------------


def test_trained_tokenizer_is_cached_per_data(manual_dir, tmp_path):
  cfg = _cfg(manual_dir, "")
  task = tasks.make_task(cfg, str(tmp_path / "work"))
  path = task.tokenizer_path
  assert not task.tokenizer_cached
  assert os.path.dirname(path) == str(tmp_path / "work" / "tokenizer")
  assert re.fullmatch(r"jsonl_math_[0-9a-f]{12}\.model", os.path.basename(path))
  tok = task.tokenizer
  assert [tok.sp.id_to_piece(i) for i in range(8)] == [
      "<pad>", "<unk>", "<s>", "</s>", "<nl>", "####", "\\boxed", "Answer:"]
  assert (tok.pad_id, tok.unk_id, tok.bos_id, tok.eos_id, tok.nl_id) == (0, 1, 2, 3, 4)
  assert tok.sp.encode("2024", out_type=str) == ["2", "0", "2", "4"]  # digits split
  for char in jm.TOKENIZER_COVERAGE:  # every printable ASCII character is a piece
    assert tok.sp.piece_to_id(char) != tok.sp.unk_id(), char
  for split in base.SPLITS:
    for problem in task.split(split):
      solution = task.encode_solution(problem)
      assert task.decode(solution) == "\n".join(problem.steps) + "</s>"
      assert task.is_correct(solution, problem) == base.Outcome(1.0, base.CORRECT), problem.uid
  # Built again: the cached model, not a new one.
  mtime = os.stat(path).st_mtime_ns
  again = tasks.make_task(cfg, str(tmp_path / "work"))
  assert again.tokenizer_cached and again.tokenizer_path == path
  assert os.stat(path).st_mtime_ns == mtime
  assert again.tokenizer.sp.serialized_model_proto() == tok.sp.serialized_model_proto()
  # The pipeline's shared cache dir wins over the workdir.
  shared = tasks.make_task(_cfg(manual_dir, "", cache_dir=str(tmp_path / "cache")),
                           str(tmp_path / "work"))
  assert shared.tokenizer_path == str(tmp_path / "cache" / "tokenizer" / os.path.basename(path))
  assert not shared.tokenizer_cached
  # Other options or other data: another model.
  bigger = tasks.make_task(_cfg(manual_dir, "", sp_vocab_size=200), str(tmp_path / "work"))
  assert bigger.tokenizer_path != path and not bigger.tokenizer_cached
  _write_jsonl(manual_dir / "train.jsonl", TRAIN[:3])
  changed = tasks.make_task(cfg, str(tmp_path / "work"))
  assert changed.tokenizer_path not in (path, bigger.tokenizer_path)
  assert not changed.tokenizer_cached
  # A given tokenizer is used as is: nothing trained.
  before = sorted(os.listdir(tmp_path / "work" / "tokenizer"))
  given = tasks.make_task(_cfg(manual_dir, changed.tokenizer_path), str(tmp_path / "work"))
  assert given.tokenizer_path is None and not given.tokenizer_cached
  assert sorted(os.listdir(tmp_path / "work" / "tokenizer")) == before


# ---------------------------------------------------------------------------
# The command line: one `pavjax: bad data:` line and exit code 2.
# ---------------------------------------------------------------------------

_REPO = pathlib.Path(__file__).resolve().parents[2]


def _run_sft(workdir, *overrides):
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env["JAX_PLATFORMS"] = "cpu"
  args = [sys.executable, "-m", "pavjax.main",
          "--config=configs/sft.py:task=jsonl_math,size=test", f"--workdir={workdir}",
          *overrides]
  return subprocess.run(args, env=env, cwd=_REPO, capture_output=True, text=True, timeout=600)


def test_command_line_reports_bad_data_in_one_line(tmp_path):
  d = tmp_path / "m"
  d.mkdir()
  lines = [GOOD_LINE.encode(), GOOD_LINE.encode().replace(b"1 + 1", b"2 + 2"),
           b'{"question": "q?", "answer": "It is 4."}']
  _write_raw(d / "train.jsonl", lines)
  _write_jsonl(d / "test.jsonl", TEST)
  cases = [
      ([f"--config.task.manual_dir={d}"],
       f"pavjax: bad data: {d / 'train.jsonl'}:3: no_answer: reference 'answer' has no final "
       "answer"),
      ([f"--config.task.manual_dir={tmp_path / 'nope'}"],
       f"pavjax: bad data: {tmp_path / 'nope'} does not exist (config.task.manual_dir)"),
  ]
  for overrides, expected in cases:
    proc = _run_sft(tmp_path / "work", *overrides)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    said = [line for line in proc.stderr.splitlines() if line.startswith("pavjax:")]
    assert said == [expected]
  # Over a token limit, after preparing the data and training a tokenizer.
  _write_raw(d / "train.jsonl", lines[:2])
  proc = _run_sft(tmp_path / "work", f"--config.task.manual_dir={d}",
                  "--config.task.max_response_len=4")
  assert proc.returncode == 2, proc.stderr[-3000:]
  said = [line for line in proc.stderr.splitlines() if line.startswith("pavjax:")]
  assert len(said) == 1, said
  assert re.fullmatch(
      re.escape(f"pavjax: bad data: {d / 'train.jsonl'}:") + r"[12]: solution_too_many_tokens: "
      r"reference has \d+ tokens > max_response_len=4; .* \(id 'train\.jsonl:[12]'\)", said[0])
