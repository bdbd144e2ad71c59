"""Tests for the arith task, its tokenizers and the safe answer checker (no jax needed)."""

import os
import re
import time

import numpy as np
import pytest

from pavjax import tasks
from pavjax.tasks import answers
from pavjax.tasks import arith
from pavjax.tasks import base
from pavjax.tasks import tokenizer as tokenizer_lib


def _cfg(**overrides):
  cfg = arith.default_config()
  cfg.num_train = 1500
  cfg.num_eval = 100
  for key, val in overrides.items():
    cfg[key] = val
  return cfg


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("arith_workdir"))


@pytest.fixture(scope="module")
def sp_task(workdir):
  return arith.make(_cfg(), workdir)


@pytest.fixture(scope="module")
def char_task():
  return arith.make(_cfg(tokenizer="char", num_steps=2, max_operand=9, num_distractors=1))


@pytest.fixture(scope="module", params=["sentencepiece", "char"])
def task(request, sp_task, char_task):
  return sp_task if request.param == "sentencepiece" else char_task


def _respond(task, text, eos=True):
  return task.tokenizer.encode(text) + ([task.eos_id] if eos else [])


# ---------------------------------------------------------------- generation


def test_generator_is_deterministic_per_seed():
  cfg = _cfg(num_train=300, num_eval=50)
  a, b = arith.generate_splits(cfg), arith.generate_splits(cfg)
  assert a == b
  other = arith.generate_splits(_cfg(num_train=300, num_eval=50, seed=1))
  for split in base.SPLITS:
    assert [p.prompt for p in a[split]] != [p.prompt for p in other[split]]
  # Validation and test do not depend on num_train.
  bigger = arith.generate_splits(_cfg(num_train=600, num_eval=50))
  assert bigger["validation"] == a["validation"] and bigger["test"] == a["test"]


def _canonical(prompt):
  """Prompt with variables renamed by order of first appearance."""
  body = prompt[: prompt.rindex(" find ")]
  names = {}
  return re.sub(r"[a-z]", lambda m: names.setdefault(m.group(0), f"v{len(names)}"), body)


def test_splits_are_disjoint_and_sized(sp_task):
  sizes = {"train": 1500, "validation": 100, "test": 100}
  seen = {}
  for split in base.SPLITS:
    problems = sp_task.split(split)
    assert len(problems) == sizes[split]
    for p in problems:
      key = _canonical(p.prompt)
      assert key not in seen, f"{p.uid} duplicates {seen[key]}"
      seen[key] = p.uid
  assert len({p.uid for s in base.SPLITS for p in sp_task.split(s)}) == 1700
  with pytest.raises(ValueError):
    sp_task.split("dev")


_GIVEN_RE = re.compile(r"([a-z])=([0-9]{1,4})")
_DEF_RE = re.compile(r"([a-z])=([a-z])([-+*])([a-z])")
_STEP_RE = re.compile(
    r"([a-z])=([a-z])([-+*])([a-z])=([0-9]{1,4})([-+*])([0-9]{1,4})=([0-9]{1,6})")
_SAFE_OPS = {"+": lambda x, y: x + y, "-": lambda x, y: x - y, "*": lambda x, y: x * y}


def _check_solution(problem, max_value):
  """Recomputes every line from the prompt with a regex parser (no eval)."""
  givens_txt, defs_txt, question = problem.prompt.split(". ")
  values = {}
  for item in givens_txt.split(", "):
    m = _GIVEN_RE.fullmatch(item)
    assert m, item
    values[m.group(1)] = int(m.group(2))
  defs = {}
  for item in defs_txt.split(", "):
    m = _DEF_RE.fullmatch(item)
    assert m, item
    defs[m.group(1)] = m.groups()[1:]
  used = set()
  for line in problem.steps[:-1]:
    m = _STEP_RE.fullmatch(line)
    assert m, line
    name, x, op, y, vx, op2, vy, result = m.groups()
    assert name not in values, f"{line}: recomputes {name}"
    assert defs[name] == (x, op, y) and op2 == op
    assert x in values and y in values, f"{line}: uses a quantity not computed yet"
    assert (int(vx), int(vy)) == (values[x], values[y])
    assert int(result) == _SAFE_OPS[op](values[x], values[y])
    assert 0 <= int(result) <= max_value
    values[name] = int(result)
    used |= {x, y}
  assert set(defs) <= set(values)
  target = question[len("find "):-1]
  assert problem.steps[-1] == f"answer: {values[target]}" == f"answer: {problem.answer}"
  return len(values) - len(used) - 1  # givens never used (distractors)


def test_each_line_computes_one_quantity_from_earlier_ones(sp_task):
  cfg = sp_task.cfg
  unused = []
  for split in base.SPLITS:
    for p in sp_task.split(split)[:100]:
      assert len(p.steps) == cfg.num_steps + 1
      unused.append(_check_solution(p, cfg.max_value))
  assert min(unused) >= cfg.num_distractors
  # The default difficulty really multiplies (~16% of steps) and uses 2-digit values.
  lines = [l for p in sp_task.split("train") for l in p.steps[:-1]]
  assert sum("*" in l for l in lines) > len(lines) // 10
  assert max(int(l.rsplit("=", 1)[1]) for l in lines) >= 90


def test_shuffled_definitions_and_hidden_values():
  splits = arith.generate_splits(_cfg(num_train=50, num_eval=10, shuffle_definitions=True,
                                      show_values=False, num_steps=5))
  for p in splits["train"]:
    assert len(p.steps) == 6
    for line in p.steps[:-1]:
      assert re.fullmatch(r"[a-z]=[a-z][-+*][a-z]=[0-9]+", line), line


def test_easy_difficulty_keeps_one_digit_givens_plus_minus_and_no_distractor():
  splits = arith.generate_splits(_cfg(**arith.difficulty("easy")))
  for p in splits["train"][:300]:
    givens, definitions = p.prompt.split(". ", 1)
    values = [int(g.split("=")[1]) for g in givens.split(", ")]
    assert all(1 <= v <= 9 for v in values), p.prompt
    assert "*" not in definitions, p.prompt
    # no distractor: every given is an operand of some definition
    names = [g.split("=")[0] for g in givens.split(", ")]
    assert all(re.search(rf"\b{n}\b", definitions) for n in names), p.prompt
    for line in p.steps[:-1]:
      assert 0 <= int(line.rsplit("=", 1)[1]) <= 50, line
  with pytest.raises(ValueError, match="unknown arith difficulty"):
    arith.difficulty("hard")


def test_config_errors():
  with pytest.raises(ValueError, match="ops"):
    arith.generate_splits(_cfg(ops="/"))
  with pytest.raises(ValueError, match="letters"):
    arith.generate_splits(_cfg(num_steps=12, num_distractors=3))
  with pytest.raises(ValueError, match="distinct problems"):
    arith.generate_splits(_cfg(num_steps=1, max_operand=2, ops="+", num_distractors=0))
  bad = _cfg()
  with bad.unlocked():
    bad.bogus = 1
  with pytest.raises(ValueError, match="bogus"):
    arith.make(bad)


# ---------------------------------------------------------------- answer checking


def test_reference_solutions_are_correct(task):
  for split in base.SPLITS:
    for p in task.split(split)[:50]:
      sol = task.encode_solution(p)
      assert sol[-1] == task.eos_id and task.pad_id not in sol
      assert len(sol) <= task.max_response_len
      assert len(task.encode_prompt(p)) <= task.max_prompt_len
      assert task.is_correct(sol, p) == base.Outcome(1.0, base.CORRECT)
      padded = np.array(sol + [task.pad_id] * 7, np.int32)  # numpy input, padding after EOS
      assert task.is_correct(padded, p).reward == 1.0


def test_answer_checker_outcomes(task):
  p = task.split("test")[0]
  ans = int(p.answer)
  body = "\n".join(p.steps[:-1])

  def outcome(text, eos=True):
    return task.is_correct(_respond(task, text, eos), p)

  assert outcome(f"answer: {ans}") == base.Outcome(1.0, base.CORRECT)
  assert outcome(f"{body}\nanswer: {ans:03d}").reason == base.CORRECT  # leading zeros ok
  assert outcome(f"{body}\nanswer: {ans + 1}") == base.Outcome(0.0, base.WRONG)
  assert outcome(f"{body}\nanswer: {ans}.5").reason == base.WRONG
  assert outcome(f"{body}\nanswer:").reason == base.WRONG
  assert outcome(f"{body}\nanswer: {ans}", eos=False) == base.Outcome(0.0, base.TRUNCATED)
  assert task.is_correct([task.eos_id], p) == base.Outcome(0.0, base.EMPTY)
  assert task.is_correct([task.pad_id, task.eos_id, 9, 9], p).reason == base.EMPTY
  assert task.is_correct([], p).reason == base.TRUNCATED
  assert outcome(body).reason == base.NO_ANSWER
  assert outcome(f"{ans}").reason == base.NO_ANSWER
  assert outcome(f"answer: {ans}\nanswer: {ans}").reason == base.MULTIPLE_ANSWERS
  assert outcome(f"answer: {ans}\n{body}\nanswer: 1").reason == base.MULTIPLE_ANSWERS
  long_text = (body + "\n") * (task.max_response_len // 4 + 1) + f"answer: {ans}"
  assert outcome(long_text) == base.Outcome(0.0, base.TOO_LONG)
  assert outcome(long_text, eos=False).reason == base.TRUNCATED
  # Out-of-range and unknown ids decode to a marker, never crash.
  assert task.is_correct([task.vocab_size + 5, 10**9, task.eos_id], p).reward == 0.0


HOSTILE = [
    "__import__('os').system('touch {sentinel}')",
    "answer: __import__('os').system('touch {sentinel}')",
    "answer: eval(\"open('{sentinel}', 'w')\")",
    "answer: 9**9**9",
    "answer: 10**10**10**10",
    "answer: 1e999999999",
    "answer: " + "9" * 100000,
    "answer: " + "(" * 100000,
    "(" * 100000,
    "answer: 1\n" * 50000,
    "answer: " + "1" * 13,
]


def test_answer_key_is_the_canonical_answer_for_votes(task):
  p = task.split("test")[0]
  ans = int(p.answer)
  body = "\n".join(p.steps[:-1])
  key = lambda text: task.answer_key(_respond(task, text) + [task.pad_id])
  assert key(f"{body}\nanswer: {ans:03d}") == key(f"answer: {ans}") == str(ans)
  assert key(f"{body}\nanswer: {ans + 1}") == str(ans + 1)
  assert key(body) is None
  assert key(f"answer: {ans}.5") is None
  assert key(f"answer: 1\nanswer: 2") is None


def test_hostile_responses_get_zero_fast_without_side_effects(task, tmp_path):
  sentinel = tmp_path / "sentinel"
  p = task.split("test")[0]
  for template in HOSTILE:
    text = template.replace("{sentinel}", str(sentinel))
    ids = _respond(task, text)
    start = time.perf_counter()
    out = task.is_correct(ids, p)
    elapsed = time.perf_counter() - start
    assert out.reward == 0.0 and out.reason in base.REASONS, (text[:60], out)
    # Linear work on 500k tokens takes ~0.05 s on an idle 2-core VM (twice that under
    # load); evaluating 9**9**9 or a regex blow-up would take minutes.
    assert elapsed < 0.5, (text[:60], elapsed)
    # Same text straight into the string-level checker (no token budget in front of it).
    start = time.perf_counter()
    out = answers.grade_text(text, p.answer, answer_re=arith.ANSWER_RE)
    assert out.reward == 0.0, (text[:60], out)
    assert time.perf_counter() - start < 0.05, text[:60]
  assert not sentinel.exists()


def test_answers_helpers():
  assert answers.normalize_number(" 042 ") == "42"
  assert answers.normalize_number("-0") == "0"
  assert answers.normalize_number("1,234") == "1234"
  assert answers.normalize_number("0.50") == "1/2" == answers.normalize_number("2/4")
  assert answers.normalize_number("$3$.") == "3"
  assert answers.normalize_number("\\boxed{7}") == "7"
  for bad in ("1e5", "9**9", "1/0", "", "abc", "1" * 60, "٣", "1_000", "--1"):
    assert answers.normalize_number(bad) is None, bad
  assert answers.answers_match("0.5", "1/2") and not answers.answers_match("0.5", "0.51")
  assert answers.answers_match("Blue Whale.", "blue  whale")
  assert not answers.answers_match("12", "twelve")
  parsed = answers.parse_final_answer("step one\nFinal Answer: 12\n",
                                      line_re=answers.FINAL_ANSWER_LINE_RE)
  assert parsed == answers.ParsedAnswer("12", None)
  assert answers.parse_final_answer("x\n#### 7", line_re=answers.GSM8K_LINE_RE).answer == "7"
  assert answers.parse_final_answer("   \n ").reason == base.EMPTY
  assert answers.parse_final_answer("a" * 30, max_chars=10).reason == base.TOO_LONG
  assert answers.grade_text("answer: 3", "3") == base.Outcome(1.0, base.CORRECT)
  assert answers.grade_text("answer: 3", "3", answer_re=re.compile("[0-9]")).reward == 1.0
  assert answers.grade_text("answer: 33", "33", answer_re=re.compile("[0-9]")).reward == 0.0


# ---------------------------------------------------------------- tokenization


def test_segmentation_round_trips_step_text(task):
  nl = task.step_end_ids[0]
  for p in task.split("validation")[:30]:
    sol = task.encode_solution(p)
    spans = task.segment_steps(sol + [task.pad_id] * 3)
    assert len(spans) == len(p.steps) and spans[-1][1] == len(sol)
    for (start, stop), step in zip(spans, p.steps):
      end_tok = sol[stop - 1]
      assert end_tok in (nl, task.eos_id)
      assert task.decode(sol[start:stop]) == step + ("\n" if end_tok == nl else "")
    assert task.step_texts(sol) == list(p.steps)
    # A truncated response: the unfinished last step is its own span.
    cut = sol[: spans[1][0] + 3]
    assert task.step_texts(cut) == [p.steps[0], task.decode(cut[spans[1][0]:])]
    # The prompt decodes to its text, framed by BOS and the newline.
    prompt = task.encode_prompt(p)
    assert prompt[0] == task.bos_id and prompt[-1] == nl
    assert task.decode(prompt) == p.prompt + "\n"
    assert nl not in task.tokenizer.encode(p.prompt)


def test_special_ids(task):
  tok = task.tokenizer
  assert task.pad_id == tok.pad_id == 0
  assert (tok.unk_id, tok.bos_id, task.eos_id, tok.nl_id) == (1, 2, 3, 4)
  assert task.step_end_ids == (4,)
  ids = {t for s in base.SPLITS for p in task.split(s)[:50]
         for t in task.encode_prompt(p) + task.encode_solution(p)}
  assert max(ids) < task.vocab_size and tok.unk_id not in ids


def test_sentencepiece_model_is_cached(sp_task, workdir):
  path = sp_task.tokenizer_path
  assert path.startswith(os.path.join(workdir, "tokenizer", "arith_")) and path.endswith(".model")
  assert os.path.exists(path)
  mtime = os.path.getmtime(path)
  again = arith.make(_cfg(), workdir)
  assert again.tokenizer_cached and again.tokenizer_path == path
  assert os.path.getmtime(path) == mtime
  p = sp_task.split("train")[7]
  assert again.encode_prompt(p) == sp_task.encode_prompt(p)
  assert again.encode_solution(p) == sp_task.encode_solution(p)
  assert again.vocab_size == sp_task.vocab_size <= 128
  # Digits are split: every digit is its own piece.
  assert [sp_task.decode([t]) for t in sp_task.tokenizer.encode("907")] == ["9", "0", "7"]
  # A different config gets a different model file.
  assert arith.tokenizer_path(_cfg(seed=3), workdir) != path
  # The budgets do not change the cache key.
  assert arith.tokenizer_path(_cfg(max_response_len=500), workdir) == path


def test_char_fallback(char_task):
  tok = char_task.tokenizer
  assert isinstance(tok, tokenizer_lib.CharTokenizer)
  assert char_task.vocab_size == 5 + len(arith.CHARSET)
  text = "a=1, b=2. c=a*b. find c.\nc=a*b=1*2=2\nanswer: 2"
  assert tok.decode(tok.encode(text)) == text
  assert tok.encode("?") == [tok.unk_id]
  assert tok.decode([0, 2, 3]) == ""
  p = char_task.split("train")[0]
  assert len(char_task.encode_solution(p)) == len("\n".join(p.steps)) + 1
  assert char_task.is_correct(char_task.encode_solution(p), p).reward == 1.0


def test_registry_builds_default_task(tmp_path):
  cfg = tasks.default_task_config("arith")
  assert cfg.name == "arith" and cfg.num_steps >= 3 and "*" in cfg.ops
  with cfg.unlocked():
    cfg.num_train = 300
    cfg.num_eval = 20
  task = tasks.make_task(cfg, str(tmp_path))
  assert isinstance(task, arith.ArithTask) and isinstance(task, base.Task)
  assert os.listdir(tmp_path / "tokenizer")
  seq_len = task.max_prompt_len + task.max_response_len
  arrays = base.sft_arrays(task, task.split("train")[:8], seq_len)
  assert arrays.inputs.shape[0] == 8 and arrays.mask.sum() > 0


# ---------------------------------------------------------------- procedural prover


def test_step_prover_values_by_hand(char_task):
  problem = char_task.split("train")[0]
  ref = list(problem.steps)  # two computed lines and the answer line: L = 3
  assert len(ref) == 3
  mu = char_task.step_prover(0.5)
  right = char_task.step_texts(_respond(char_task, "\n".join(ref)))
  np.testing.assert_allclose(mu.line_values(problem, right, 5), [0.125, 0.25, 0.5, 1.0, 0.0])
  np.testing.assert_allclose(mu.line_values(problem, right, 3), [0.125, 0.25, 0.5])
  wrong = ref[1][:-1] + str((int(ref[1][-1]) + 1) % 10)  # the second line's result changed
  lines = char_task.step_texts(_respond(char_task, "\n".join([ref[0], wrong] + ref[2:])))
  np.testing.assert_allclose(mu.line_values(problem, lines, 4), [0.125, 0.25, 0.0, 0.0])
  surplus = char_task.step_texts(_respond(char_task, "\n".join(ref + [ref[0]])))
  np.testing.assert_allclose(mu.line_values(problem, surplus, 5), [0.125, 0.25, 0.5, 1.0, 0.0])
  assert mu.line_values(problem, [], 3).tolist() == [0.125, 0.0, 0.0]
  with pytest.raises(ValueError, match="accuracy"):
    char_task.step_prover(0.0)
