"""Tests of pavjax.tasks.grading: math-verify answer equivalence behind a time limit."""

import math
import os
import string
import threading
import time

import pytest
import sentencepiece as spm

from pavjax.tasks import answers
from pavjax.tasks import base
from pavjax.tasks import grading
from pavjax.tasks import jsonl_math as jm

# (reference, candidate, equivalent). Both sides go through answers.normalize_answer first,
# as in jsonl_math. The comments name the decisions the grading docstring documents.
TABLE = [
    # Plain numbers (exact, no sympy).
    ("\\frac{3}{4}", "0.75", True),
    ("\\frac{1}{3}", "0.33", False),
    ("\\frac{1}{3}", "0.333333", False),  # plain numbers compare exactly
    ("1,000", "1000", True),
    ("1,000", "1.000", False),
    ("-0", "0", True),
    (".5", "\\dfrac{1}{2}", True),
    ("\\$5.00", "5", True),
    ("7/2", "3.5", True),
    # Wrappers and normalization.
    ("405", "\\boxed{\\text{405}}", True),
    ("\\dfrac{1}{2}", "\\frac12", True),
    ("5", "x = 5", True),
    ("5\\text{ cm}", "5", True),
    ("2x+3", "y = 2x+3", True),
    ("50\\%", "50", True),  # the percent sign is dropped: 50% is 50 ...
    ("50\\%", "0.5", False),  # ... not 0.5
    ("\\pi/2", "90^\\circ", False),  # the degree sign is dropped: 90 degrees is 90, not pi/2
    # Unicode minus sign and plain-text unit words (normalization, no sympy).
    ("-5", "\u22125", True),
    ("\u2212\\frac{1}{2}", "-0.5", True),
    ("5", "\u22125", False),
    ("405", "405 dollars", True),
    ("12 apples", "12", True),
    ("12", "13 apples", False),
    ("x^2", "x^2 dollars", False),  # words after an expression are kept (and read as words)
    ("200", "2 hundred", False),  # a word that changes the value is not a unit
    # Symbolic (math-verify).
    ("2\\sqrt{2}", "\\sqrt{8}", True),
    ("2\\sqrt{2}", "\\sqrt{6}", False),
    ("x^2+2x+1", "(x+1)^2", True),
    ("x^2+2x+1", "(x-1)^2", False),
    ("2", "\\sqrt{4}", True),
    ("10^{10}", "10000000000", True),
    ("\\frac{\\pi}{2}", "\\pi/2", True),
    ("\\frac{\\sqrt{2}}{2}", "\\frac{1}{\\sqrt{2}}", True),
    ("\\frac{\\sqrt{2}}{2}", "0.707107", True),  # math-verify's 6-place float rounding
    ("\\frac{\\sqrt{3}}{2}", "0.866", False),
    ("\\frac{1}{2}x", "\\frac{x}{2}", True),
    ("3+2i", "2i+3", True),
    ("2x", "2y", False),
    ("\\infty", "-\\infty", False),
    # Intervals, sets, tuples.
    ("(1,2]", "(1,2)", False),
    ("(1,2]", "\\left(1, 2\\right]", True),
    ("(-\\infty,3)", "\\left(-\\infty, 3\\right)", True),
    ("\\{1,2,3\\}", "\\{3,2,1\\}", True),
    ("1,2,3", "3, 2, 1", True),  # a list of solutions is unordered
    ("1,2,3", "1,2", False),
    ("(1,2)", "(2,1)", False),  # an ordered pair (or interval) reference keeps its order ...
    ("(1,2)", "\\{2,1\\}", False),
    ("(1,2)", "2,1", False),
    ("\\{1,2\\}", "(2,1)", True),  # ... a set reference takes its members in any brackets
    ("\\begin{pmatrix}2\\\\4\\end{pmatrix}", "\\begin{pmatrix}\\frac{4}{2}\\\\2^2\\end{pmatrix}",
     True),
    ("\\begin{pmatrix}2\\\\4\\end{pmatrix}", "\\begin{pmatrix}4\\\\2\\end{pmatrix}", False),
    # Words: compared as strings, never symbolically.
    ("\\text{Monday}", "\\text{Monday}", True),
    ("\\text{Monday}", "\\text{dynamo}", False),  # math-verify alone: M*o*n*d*a*y == d*y*n*a*m*o
    ("\\text{Monday}", "\\text{monday}", False),
    ("(A)", "(a)", True),  # math-verify ignores the case of letters
]

SYMBOLIC_START = TABLE.index(("2\\sqrt{2}", "\\sqrt{8}", True))  # the first symbolic case


def _equivalent(reference, candidate, **kwargs):
  return grading.answers_equivalent(answers.normalize_answer(reference),
                                    answers.normalize_answer(candidate), **kwargs)


@pytest.mark.parametrize("reference, candidate, expected", TABLE)
def test_table(reference, candidate, expected):
  assert _equivalent(reference, candidate) is expected


def test_exact_grader_stops_at_strings():
  symbolic_only = [(r, c) for r, c, ok in TABLE[SYMBOLIC_START:] if ok and
                   answers.normalize_answer(r) != answers.normalize_answer(c)]
  assert len(symbolic_only) >= 10
  for reference, candidate in symbolic_only:
    assert _equivalent(reference, candidate)
    assert not _equivalent(reference, candidate, grader="exact"), (reference, candidate)
  assert _equivalent("\\frac{3}{4}", "0.75", grader="exact")
  assert _equivalent("\\boxed{\\text{405}}", "405", grader="exact")


def _no_symbolic(*args):
  raise AssertionError(f"the symbolic check ran for {args}")


def test_plain_numbers_take_the_fast_path(monkeypatch):
  monkeypatch.setattr(grading, "symbolic_equivalent", _no_symbolic)
  for reference, candidate, expected in [
      ("\\frac{3}{4}", "0.75", True), ("1,000", "1000", True), ("1,000", "1.000", False),
      ("\\frac{1}{3}", "0.333333", False), ("-0", "0", True), ("7/2", "3.5", True),
      ("12", "13", False), ("1,234,567", "1234567.0", True), ("-\\frac{2}{4}", "-0.5", True),
      ("\\text{Monday}", "\\text{dynamo}", False), ("x^2", "x^2", True),
      ("-5", "\u22125", True), ("405", "405 dollars", True), ("200", "2 hundred", False)]:
    assert _equivalent(reference, candidate) is expected, (reference, candidate)
  with pytest.raises(AssertionError, match="symbolic check ran"):  # the patch is in effect
    _equivalent("2", "\\sqrt{4}")


def test_long_answers_skip_the_symbolic_check(monkeypatch):
  monkeypatch.setattr(grading, "symbolic_equivalent", _no_symbolic)
  long = "x+" * grading.MAX_SYMBOLIC_CHARS + "1"
  assert not grading.answers_equivalent("5", long)
  assert not grading.answers_equivalent(long, "5")
  assert grading.answers_equivalent(long, long)


LIMIT = 1.0
HOSTILE = {
    "1 MB": "1+" * 500_000 + "1",
    "10k nested braces": "{" * 10_000 + "1" + "}" * 10_000,
    "10k nested fractions": "\\frac{" * 10_000 + "1" + "}{2}" * 10_000,
    "deep fractions (under the cap)": "\\frac{" * 150 + "1" + "}{2}" * 150,
    "power tower": "10^{10^{10^{10}}}",
    "huge factorial": "(10^{10})!",
    "factorial of a million": "1000000!",
    "big power": "3^{10^{8}}",
    "deep square roots": "\\sqrt{" * 3_000 + "2" + "}" * 3_000,
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
@pytest.mark.parametrize("max_chars", [grading.MAX_SYMBOLIC_CHARS, 10**7])
def test_hostile_answers_wrong_within_the_limit(name, max_chars):
  text = HOSTILE[name]
  grading.clear_cache()
  for reference, candidate in [("5", text), (text, "5")]:
    grading.warm_up()  # a worker killed by the previous check restarts outside the timing
    start = time.perf_counter()
    assert not grading.answers_equivalent(reference, candidate, timeout_s=LIMIT,
                                          max_chars=max_chars)
    elapsed = time.perf_counter() - start
    assert elapsed < 2 * LIMIT + 0.5, (name, reference[:20], elapsed)
  grading.warm_up()
  assert grading.answers_equivalent("2\\sqrt{2}", "\\sqrt{8}", timeout_s=LIMIT)  # still works


def test_timeout_kills_the_worker_and_is_cached():
  # The worker's own math-verify timeout is a whole second, so under a 0.5 s limit the
  # power tower (which math-verify gives up on after 1 s) always meets the kill.
  grading.clear_cache()
  grading.warm_up()
  kills = grading._WORKER.kills
  start = time.perf_counter()
  assert not grading.symbolic_equivalent("5", HOSTILE["power tower"], 0.5)
  assert 0.45 < time.perf_counter() - start < 0.95  # not the worker's own 1 s timeout
  assert grading._WORKER.kills == kills + 1
  start = time.perf_counter()
  assert not grading.symbolic_equivalent("5", HOSTILE["power tower"], 0.5)  # cached
  assert time.perf_counter() - start < 0.1 and grading._WORKER.kills == kills + 1
  grading.warm_up()  # the replacement worker answers
  assert grading.symbolic_equivalent("2", "\\sqrt{4}", 0.5)


def test_non_main_threads():
  grading.clear_cache()
  grading.warm_up()
  results, errors = {}, []

  def grade(i):
    try:
      results[i] = (_equivalent(f"{i}\\sqrt{{2}}", f"\\sqrt{{{2 * i * i}}}"),
                    _equivalent(f"{i}\\sqrt{{2}}", f"\\sqrt{{{2 * i * i + 1}}}"))
      start = time.perf_counter()
      hostile = grading.answers_equivalent("5", f"10^{{10^{{10^{{{i}0}}}}}}", timeout_s=LIMIT)
      results[i] += (hostile, time.perf_counter() - start)
    except BaseException as e:  # pylint: disable=broad-except
      errors.append(e)

  threads = [threading.Thread(target=grade, args=(i,)) for i in range(2, 6)]
  for t in threads:
    t.start()
  for t in threads:
    t.join(timeout=120)
  assert not errors and not any(t.is_alive() for t in threads)
  assert sorted(results) == [2, 3, 4, 5]
  for equal, unequal, hostile, _ in results.values():
    assert equal and not unequal and not hostile
  # One check at a time: a thread may wait for the others' checks and for a restart.
  assert max(r[3] for r in results.values()) < len(threads) * (LIMIT + 2.0)


def test_validate():
  grading.validate("math_verify", 2.0)
  grading.validate("exact", 1)
  with pytest.raises(ValueError, match=r"config\.task\.grader='sympy'"):
    grading.validate("sympy", 2.0)
  for bad in (0, -1.0, math.nan, math.inf, "2", True, None, 1e9):
    with pytest.raises(ValueError, match=r"config\.task\.grade_timeout_s="):
      grading.validate("math_verify", bad)
  with pytest.raises(ValueError, match="grader='sympy'"):
    grading.answers_equivalent("2", "\\sqrt{4}", grader="sympy")


def test_config_fields_validated_before_any_work(tmp_path):
  cfg = jm.default_config()
  assert cfg.grader == "math_verify" and cfg.grade_timeout_s == 2.0
  cfg.data_dir = str(tmp_path / "tfds")
  cfg.grader = "strings"
  with pytest.raises(ValueError, match=r"config\.task\.grader='strings' is not one of"):
    jm.make(cfg)
  cfg.grader, cfg.grade_timeout_s = "exact", -2.0
  with pytest.raises(ValueError, match=r"config\.task\.grade_timeout_s=-2\.0"):
    jm.make(cfg)
  assert not os.path.exists(cfg.data_dir)


def test_missing_math_verify_is_a_clear_error(monkeypatch):
  real = grading.importlib.util.find_spec
  monkeypatch.setattr(grading.importlib.util, "find_spec",
                      lambda name: None if name == "math_verify" else real(name))
  with pytest.raises(ImportError, match="pip install 'math-verify"):
    grading.check_available("math_verify")
  grading.check_available("exact")


def test_worker_that_cannot_start_raises(monkeypatch):
  monkeypatch.setattr(grading, "_WORKER_SOURCE", "import sys; sys.exit(3)")
  worker = grading._Worker()
  with pytest.raises(RuntimeError, match="did not start"):
    worker.check("2", "\\sqrt{4}", LIMIT)
  worker.close()


# ---------------------------------------------------------------------------
# jsonl_math's is_correct goes through the grader.
# ---------------------------------------------------------------------------

PROBLEM = base.Problem(uid="p1", prompt="Simplify $\\sqrt{8}$.",
                       steps=("We have $\\sqrt{8} = 2\\sqrt{2}$.", "So $\\boxed{2\\sqrt{2}}$."),
                       answer="2\\sqrt{2}")


@pytest.fixture(scope="module")
def sp_model(tmp_path_factory):
  d = str(tmp_path_factory.mktemp("sp"))
  corpus = os.path.join(d, "corpus.txt")
  with open(corpus, "w") as f:
    f.write("\n".join([PROBLEM.prompt, *PROBLEM.steps, "The answer is \\boxed{\\sqrt{8}}.",
                       string.ascii_letters + string.digits + string.punctuation]) + "\n")
  spm.SentencePieceTrainer.train(
      input=corpus, model_prefix=os.path.join(d, "m"), vocab_size=120, hard_vocab_limit=False,
      character_coverage=1.0, minloglevel=2, pad_id=0, unk_id=1, bos_id=2, eos_id=3)
  return os.path.join(d, "m.model")


def _task(sp_model, **kwargs):
  splits = {split: [PROBLEM] for split in base.SPLITS}
  return jm.JsonlMathTask(splits, jm.load_tokenizer(sp_model), 64, 64, **kwargs)


def test_is_correct_uses_the_grader(sp_model, monkeypatch):
  task = _task(sp_model)
  assert (task.grader, task.grade_timeout_s) == ("math_verify", 2.0)
  response = task.tokenizer.encode("The answer is \\boxed{\\sqrt{8}}.") + [task.eos_id]
  assert task.is_correct(response, PROBLEM) == base.Outcome(1.0, base.CORRECT)
  exact = _task(sp_model, grader="exact", grade_timeout_s=0.5)
  assert exact.is_correct(response, PROBLEM) == base.Outcome(0.0, base.WRONG)
  with pytest.raises(ValueError, match="config.task.grader"):
    _task(sp_model, grader="nope")

  calls = []

  def spy(reference, candidate, **kwargs):
    calls.append((reference, candidate, kwargs))
    return False

  monkeypatch.setattr(grading, "answers_equivalent", spy)
  assert exact.is_correct(response, PROBLEM) == base.Outcome(0.0, base.WRONG)
  assert calls == [("2\\sqrt{2}", "\\sqrt{8}", {"grader": "exact", "timeout_s": 0.5})]
