"""Real math word problems brought by the user as JSONL files (GSM8K / MATH style).

How a user brings data
----------------------
Put JSONL files (one JSON object per line, UTF-8) in a directory and point
`config.task.manual_dir` at it:

  train.jsonl        required
  test.jsonl         required
  validation.jsonl   optional; when absent, a deterministic `val_fraction` of the
                     train records (chosen by `seed`) becomes the validation split

Two record styles are understood (`format='auto'` picks per record: a record with
`problem` or `solution` is MATH style, else one with `question` or `answer` is
GSM8K style; extra fields are ignored):

  GSM8K: {"question": "...", "answer": "step 1\\nstep 2\\n#### 42"}
  MATH:  {"problem": "...", "solution": "... so the answer is $\\\\boxed{\\\\frac{1}{2}}$."}

A record may carry an `id` (string or integer; `unique_id` as in MATH-500 is also
accepted); without one its id is `<file name>:<line>` (e.g. `train.jsonl:7`).
Ids must be unique over all files.

Steps (the reference solution, one entry per step; a step never holds a newline):
  * GSM8K: every non-empty line of `answer`, with calculator annotations `<<..>>`
    removed; the final `#### x` line is kept as the last step, so a policy learns
    to end with it.
  * MATH: every non-empty line of `solution`, further split into sentences at
    `.`, `!` or `?` followed by a space and an upper-case letter, `$` or `\\`,
    but never inside math (`$..$`, `$$..$$`, `\\(..\\)`, `\\[..\\]`) or braces.

Final answers (`extract_final_answer`, used both for the references and for model
responses): the first kind of marker present wins, in this order:
  1. lines starting with `####` (GSM8K), the answer is the rest of the line;
  2. `\\boxed{...}` / `\\fbox{...}` (outermost ones; nested braces and escaped
     `\\{ \\}` are handled in one linear pass);
  3. lines starting with `Answer:` / `Final answer:` / `The answer is:` (any case).
If markers of the chosen kind disagree (after normalization) the reason is
`multiple_answers`; if there is none, or they are all empty, it is `no_answer`.

Normalization (`normalize_answer`, a documented subset of the usual MATH
`strip_string`): drop a trailing unit `\\text{ cm}` (text starting with a space),
`\\left` / `\\right`, `\\!` `\\,` `\\;` `\\:` `\\quad` `~` spacing, `$` and `\\$`,
`%` and `\\%`, degrees `^\\circ` / `^{\\circ}`; unwrap `\\text{}` `\\textbf{}`
`\\mbox{}` `\\mathrm{}` `\\mathbf{}` `\\boxed{}`; `\\dfrac` / `\\tfrac` -> `\\frac`;
`\\frac12` -> `\\frac{1}{2}`, `\\sqrt2` -> `\\sqrt{2}`; remove all whitespace and
a trailing period; `x=5` -> `5` for a one-letter left side; a number with
thousands commas `1,234` -> `1234`; `5.50` -> `5.5`, `3.0` -> `3`, `.5` -> `0.5`;
a redundant outer brace pair. Two normalized answers match when equal as
strings, or when both are short plain numbers (integer, decimal, `a/b`,
`\\frac{a}{b}`) with the same exact rational value. Nothing is ever evaluated
as code; every parse is linear in the text length.

Bad input lines (`BAD_LINE_REASONS`, checked in this order, a line counts once
under its first failing reason): `empty_line`, `invalid_utf8`, `invalid_json`,
`not_object`, `missing_field`, `non_string_field`, `empty_field`,
`prompt_too_long` (more than `max_prompt_chars` characters), `no_answer`,
`multiple_answers` (the reference has no / conflicting final answers),
`duplicate_id`. With `strict=True` the first bad line raises
`ValueError('<path>:<line>: <reason>: <detail>')`; with `strict=False` bad lines
are skipped and counted. The whole manual directory is validated before any
file is written, so preparation never fails midway.

Storage: the validated records are written by a `tensorflow-datasets` builder
(`pavjax.tasks.jsonl_builder.JsonlMath`) as ArrayRecord files under
`<data_dir>/jsonl_math/fp_<fingerprint>/1.0.0/` and read back with
`builder.as_data_source()` / `tfds.data_source(...)`: no TensorFlow is needed.
The fingerprint hashes the input files and every option that changes the
records, so new data never reuses a stale cache. Next to the ArrayRecord files,
`jsonl_math_summary.json` holds the validation summary (per-reason counts of
skipped lines, kept records per split, ...).

Tokenizer: a user-given SentencePiece model (`tokenizer_path`). Task ids are
SentencePiece ids shifted by `offset`: 0 when the model's pad id is 0, else 1
(every piece id moves up by one and id 0 becomes padding). SentencePiece drops
newlines, so text is encoded line by line and the lines are joined with a
dedicated newline id `NL = piece_size + offset` (the step delimiter). EOS is the
model's eos id (shifted) when it has one, else one more extra id after NL.
`vocab_size` covers the extras. Prompts are `[BOS] question NL` (BOS only when
the model has one); references are `step1 NL step2 NL .. stepK EOS`.
Problems whose prompt or reference exceeds `max_prompt_len` / `max_response_len`
tokens, or whose tokenized reference is not judged correct (a lossy tokenizer),
raise in strict mode and are dropped and counted (`token_filter_counts`) in
lenient mode.
"""

from __future__ import annotations

import collections
import dataclasses
import fractions
import hashlib
import json
import logging
import os
import re
from typing import Any, Mapping, Sequence

import ml_collections
import numpy as np

from pavjax.tasks import base

SPLIT_FILES = {"train": "train.jsonl", "validation": "validation.jsonl", "test": "test.jsonl"}
FORMATS = ("auto", "gsm8k", "math")
SUMMARY_FILE = "jsonl_math_summary.json"

EMPTY_LINE = "empty_line"
INVALID_UTF8 = "invalid_utf8"
INVALID_JSON = "invalid_json"
NOT_OBJECT = "not_object"
MISSING_FIELD = "missing_field"
NON_STRING_FIELD = "non_string_field"
EMPTY_FIELD = "empty_field"
PROMPT_TOO_LONG = "prompt_too_long"
DUPLICATE_ID = "duplicate_id"
BAD_LINE_REASONS = (EMPTY_LINE, INVALID_UTF8, INVALID_JSON, NOT_OBJECT, MISSING_FIELD,
                    NON_STRING_FIELD, EMPTY_FIELD, PROMPT_TOO_LONG, base.NO_ANSWER,
                    base.MULTIPLE_ANSWERS, DUPLICATE_ID)

# Reasons a validated record is dropped once tokenized (lenient mode).
PROMPT_TOO_MANY_TOKENS = "prompt_too_many_tokens"
SOLUTION_TOO_MANY_TOKENS = "solution_too_many_tokens"
REFERENCE_NOT_CORRECT = "reference_not_correct"
TOKEN_FILTER_REASONS = (PROMPT_TOO_MANY_TOKENS, SOLUTION_TOO_MANY_TOKENS, REFERENCE_NOT_CORRECT)

_FIELDS = {"gsm8k": ("question", "answer"), "math": ("problem", "solution")}
_ID_FIELDS = ("id", "unique_id")
_NUMBER_MAX_CHARS = 40  # longer strings are never parsed as numbers


def default_config() -> ml_collections.ConfigDict:
  """The jsonl_math task's knobs (every field commented)."""
  cfg = ml_collections.ConfigDict()
  cfg.manual_dir = ""  # directory with train.jsonl, test.jsonl (+ optional validation.jsonl)
  cfg.data_dir = ""  # tfds data_dir for the prepared ArrayRecord files; '' = <workdir>/tfds
  cfg.format = "auto"  # record style: 'auto' (per record), 'gsm8k' or 'math'
  cfg.strict = True  # True: a bad line raises ValueError; False: skip it and count it
  cfg.max_prompt_chars = 4000  # records whose question is longer (characters) are bad lines
  cfg.tokenizer_path = ""  # user-given SentencePiece .model file (required)
  cfg.max_prompt_len = 512  # max prompt tokens (BOS and trailing newline included)
  cfg.max_response_len = 1024  # max response tokens, EOS included
  cfg.seed = 0  # seed of the train -> validation carve when validation.jsonl is absent
  cfg.val_fraction = 0.05  # fraction of train carved out as validation (if no validation.jsonl)
  return cfg


# ----------------------------------------------------------------------------
# Final answers: extraction and normalization (pure string code, linear time).
# ----------------------------------------------------------------------------

_BOX_START_RE = re.compile(r"\\(?:boxed|fbox)\s*\{")
_BRACE_TOKEN_RE = re.compile(r"\\.|[{}]", re.DOTALL)
_ANSWER_LINE_RE = re.compile(r"(?:the\s+)?(?:final\s+)?answer(?:\s+is)?\s*:", re.IGNORECASE)


def boxed_contents(text: str) -> list[str]:
  """Contents of the outermost `\\boxed{..}` / `\\fbox{..}` groups, in order.

  Braces are matched in a single pass (escaped `\\{` `\\}` are skipped); an
  unclosed group is ignored. Linear in `len(text)` even for hostile inputs.
  """
  starts = {m.end() - 1 for m in _BOX_START_RE.finditer(text)}
  if not starts:
    return []
  out, stack, open_box = [], [], -1  # open_box: '{' position of the outermost open box
  for m in _BRACE_TOKEN_RE.finditer(text):
    tok = m.group()
    if tok == "{":
      pos = m.start()
      stack.append(pos)
      if open_box < 0 and pos in starts:
        open_box = pos
    elif tok == "}" and stack:
      pos = stack.pop()
      if pos == open_box:
        out.append(text[pos + 1:m.start()])
        open_box = -1
  return out


def answer_candidates(text: str) -> tuple[str, list[str]]:
  """Raw final-answer candidates of a solution text and the marker kind used.

  Returns `(kind, candidates)` with kind one of '####', 'boxed', 'answer:' or ''
  (no marker at all); see the module docstring for the priority order.
  """
  lines = [line.strip() for line in text.split("\n")]
  hashes = [line.lstrip("#").strip() for line in lines if line.startswith("####")]
  if hashes:
    return "####", hashes
  boxed = boxed_contents(text)
  if boxed:
    return "boxed", boxed
  answers = []
  for line in lines:
    m = _ANSWER_LINE_RE.match(line[:64])  # bounded prefix: constant-time matching
    if m:
      answers.append(line[m.end():].strip())
  if answers:
    return "answer:", answers
  return "", []


def extract_final_answer(text: str) -> tuple[str | None, str]:
  """The normalized final answer of a solution text.

  Returns `(answer, "")` on success, else `(None, reason)` with reason
  `base.NO_ANSWER` or `base.MULTIPLE_ANSWERS`.
  """
  _, raw = answer_candidates(text)
  values = [v for v in (normalize_answer(c) for c in raw) if v]
  if not values:
    return None, base.NO_ANSWER
  first = values[0]
  if any(not answers_match(v, first) for v in values[1:]):
    return None, base.MULTIPLE_ANSWERS
  return first, ""


_UNIT_RE = re.compile(r"\\(?:text|mbox|mathrm)\{\s[^{}]*\}\s*$")
_LEFT_RIGHT_RE = re.compile(r"\\(?:left|right)(?![A-Za-z])")
_FRAC_RE = re.compile(r"\\[dt]frac(?![A-Za-z])")
_WRAP_RE = re.compile(
    r"\\(?:text|textbf|textrm|textit|mbox|mathrm|mathbf|boxed|fbox)\s*\{([^{}]*)\}")
_DEGREE_RE = re.compile(r"\^\s*\{?\s*\\circ\s*\}?")
_SPACING_RE = re.compile(r"\\[!,;: ]|\\q?quad(?![A-Za-z])|~")
_FRAC_DIGITS_RE = re.compile(r"\\frac(\d)(\d)")
_FRAC_DIGIT_NUM_RE = re.compile(r"\\frac(\d)\{")
_FRAC_DIGIT_DEN_RE = re.compile(r"\\frac\{([^{}]*)\}(\d)")
_SQRT_RE = re.compile(r"\\sqrt(\w)")
_WS_RE = re.compile(r"\s+")
_THOUSANDS_RE = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_DECIMAL_RE = re.compile(r"-?\d+\.\d+")
_BARE_DECIMAL_RE = re.compile(r"-?\.\d+")
_ONE_VAR_LHS_RE = re.compile(r"[A-Za-z]=")


def _outer_braces_redundant(s: str) -> bool:
  """Whether `s` is `{...}` with the first brace closing at the very end."""
  if len(s) < 2 or s[0] != "{" or s[-1] != "}":
    return False
  depth = 0
  for m in _BRACE_TOKEN_RE.finditer(s):
    tok = m.group()
    if tok == "{":
      depth += 1
    elif tok == "}":
      depth -= 1
      if depth == 0:
        return m.end() == len(s)
  return False


def normalize_answer(answer: str) -> str:
  """Canonical string form of a final answer (see the module docstring)."""
  s = answer.strip()
  s = _UNIT_RE.sub("", s)
  s = _LEFT_RIGHT_RE.sub("", s)
  s = _FRAC_RE.sub(r"\\frac", s)
  for _ in range(3):  # a bounded number of passes unwraps a few nested levels
    s, n = _WRAP_RE.subn(r"\1", s)
    if not n:
      break
  s = _DEGREE_RE.sub("", s)
  s = _SPACING_RE.sub("", s)
  s = s.replace("\\$", "").replace("$", "").replace("\\%", "").replace("%", "")
  s = _WS_RE.sub("", s)
  s = s.rstrip(".")
  if _ONE_VAR_LHS_RE.match(s) and s.count("=") == 1:
    s = s[2:]
  s = _FRAC_DIGITS_RE.sub(r"\\frac{\1}{\2}", s)
  s = _FRAC_DIGIT_NUM_RE.sub(r"\\frac{\1}{", s)
  s = _FRAC_DIGIT_DEN_RE.sub(r"\\frac{\1}{\2}", s)
  s = _SQRT_RE.sub(r"\\sqrt{\1}", s)
  for _ in range(3):
    if not _outer_braces_redundant(s):
      break
    s = s[1:-1]
  if _THOUSANDS_RE.fullmatch(s):
    s = s.replace(",", "")
  if _BARE_DECIMAL_RE.fullmatch(s):
    s = s.replace(".", "0.", 1)
  if _DECIMAL_RE.fullmatch(s):
    s = s.rstrip("0").rstrip(".")
  if s == "-0":
    s = "0"
  return s


_INT_OR_DEC_RE = re.compile(r"-?\d+(?:\.\d+)?")
_SLASH_RE = re.compile(r"(-?\d+)/(\d+)")
_TEX_FRAC_RE = re.compile(r"(-?)\\frac\{(-?\d+)\}\{(-?\d+)\}")


def _as_number(s: str) -> fractions.Fraction | None:
  """Exact value of a short plain number (int, decimal, a/b, \\frac{a}{b})."""
  if len(s) > _NUMBER_MAX_CHARS:
    return None
  if _INT_OR_DEC_RE.fullmatch(s):
    return fractions.Fraction(s)
  m = _SLASH_RE.fullmatch(s)
  if m and int(m.group(2)):
    return fractions.Fraction(int(m.group(1)), int(m.group(2)))
  m = _TEX_FRAC_RE.fullmatch(s)
  if m and int(m.group(3)):
    value = fractions.Fraction(int(m.group(2)), int(m.group(3)))
    return -value if m.group(1) else value
  return None


def answers_match(a: str, b: str) -> bool:
  """Whether two normalized answers agree (string equality or equal short numbers)."""
  if a == b:
    return True
  x, y = _as_number(a), _as_number(b)
  return x is not None and x == y


# ----------------------------------------------------------------------------
# Step segmentation of the references.
# ----------------------------------------------------------------------------

_CALC_RE = re.compile(r"<<[^<>\n]*>>")


def gsm8k_steps(answer: str) -> list[str]:
  """GSM8K steps: non-empty lines without `<<..>>` annotations (`####` line kept)."""
  steps = []
  for line in answer.split("\n"):
    line = _CALC_RE.sub("", line).strip()
    if line.startswith("####"):
      line = "#### " + line.lstrip("#").strip()
    if line:
      steps.append(line)
  return steps


def _split_sentences(line: str) -> list[str]:
  """Splits one line at sentence ends outside math and braces (linear scan)."""
  out, start, i, n = [], 0, 0, len(line)
  in_math, depth = False, 0
  while i < n:
    ch = line[i]
    if ch == "\\" and i + 1 < n:
      nxt = line[i + 1]
      if nxt in "([":
        in_math = True
      elif nxt in ")]":
        in_math = False
      i += 2
      continue
    if ch == "$":
      in_math = not in_math
      i += 2 if line.startswith("$$", i) else 1
      continue
    if ch == "{":
      depth += 1
    elif ch == "}":
      depth = max(depth - 1, 0)
    elif (ch in ".!?" and not in_math and depth == 0 and i + 2 < n and line[i + 1] == " "
          and (line[i + 2].isupper() or line[i + 2] in "$\\")):
      out.append(line[start:i + 1].strip())
      start = i + 2
    i += 1
  out.append(line[start:].strip())
  return [s for s in out if s]


def math_steps(solution: str) -> list[str]:
  """MATH steps: non-empty lines, each split into sentences outside math."""
  steps = []
  for line in solution.split("\n"):
    steps.extend(_split_sentences(line.strip()))
  return steps


# ----------------------------------------------------------------------------
# Validation of the manual directory (runs before anything is written).
# ----------------------------------------------------------------------------


@dataclasses.dataclass
class ValidationResult:
  """Validated records per split, with what was skipped.

  Attributes:
    records: split -> records (dicts with the builder's features, in file order).
    counts: bad-line reason -> number of skipped lines (every reason present).
    summary: JSON-ready summary (counts, kept records, lines read, options).
  """

  records: dict[str, list[dict[str, Any]]]
  counts: dict[str, int]
  summary: dict[str, Any]


class _BadLine(Exception):

  def __init__(self, reason: str, detail: str):
    super().__init__(reason, detail)
    self.reason, self.detail = reason, detail


def _record_format(obj: Mapping[str, Any], fmt: str) -> str:
  if fmt != "auto":
    return fmt
  if "problem" in obj or "solution" in obj:
    return "math"
  if "question" in obj or "answer" in obj:
    return "gsm8k"
  raise _BadLine(MISSING_FIELD, "neither question/answer (GSM8K) nor problem/solution (MATH)")


def _parse_line(raw: bytes, fname: str, lineno: int, fmt: str,
                max_prompt_chars: int) -> dict[str, Any]:
  """One JSONL line -> record dict, or raises _BadLine (duplicate ids not checked)."""
  if not raw.strip():
    raise _BadLine(EMPTY_LINE, "blank line")
  try:
    text = raw.decode("utf-8")
  except UnicodeDecodeError as e:
    raise _BadLine(INVALID_UTF8, str(e)) from None
  try:
    obj = json.loads(text)
  except (ValueError, RecursionError) as e:
    raise _BadLine(INVALID_JSON, str(e)[:200]) from None
  if not isinstance(obj, dict):
    raise _BadLine(NOT_OBJECT, f"a JSON {type(obj).__name__}, not an object")
  rec_fmt = _record_format(obj, fmt)
  prompt_key, solution_key = _FIELDS[rec_fmt]
  for key in (prompt_key, solution_key):
    if key not in obj:
      raise _BadLine(MISSING_FIELD, f"{rec_fmt} record without {key!r}")
  for key in (prompt_key, solution_key):
    if not isinstance(obj[key], str):
      raise _BadLine(NON_STRING_FIELD, f"{key!r} is a {type(obj[key]).__name__}, not a string")
  uid = f"{fname}:{lineno}"
  for key in _ID_FIELDS:
    if key in obj:
      value = obj[key]
      if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise _BadLine(NON_STRING_FIELD, f"{key!r} is a {type(value).__name__}, not a string")
      uid = str(value)
      break
  for key in (prompt_key, solution_key):
    if not obj[key].strip():
      raise _BadLine(EMPTY_FIELD, f"{key!r} is empty")
  if not uid.strip():
    raise _BadLine(EMPTY_FIELD, "id is empty")
  question, solution = obj[prompt_key].strip(), obj[solution_key]
  if len(question) > max_prompt_chars:
    raise _BadLine(PROMPT_TOO_LONG,
                   f"{prompt_key!r} has {len(question)} characters > max_prompt_chars="
                   f"{max_prompt_chars}")
  steps = gsm8k_steps(solution) if rec_fmt == "gsm8k" else math_steps(solution)
  answer, reason = extract_final_answer("\n".join(steps))
  if reason:
    raise _BadLine(reason, f"reference {solution_key!r} has "
                   f"{'no final answer' if reason == base.NO_ANSWER else 'conflicting answers'}")
  return {"uid": uid, "source": f"{fname}:{lineno}", "format": rec_fmt, "question": question,
          "steps": steps, "answer": answer, "solution": solution}


def _read_lines(path: str) -> list[bytes]:
  with open(path, "rb") as f:
    data = f.read()
  if data.startswith(b"\xef\xbb\xbf"):
    data = data[3:]
  lines = data.split(b"\n")
  if lines and lines[-1] == b"":
    lines.pop()  # the file's final newline ends the last line, it starts none
  return [line[:-1] if line.endswith(b"\r") else line for line in lines]


def split_files(manual_dir: str) -> dict[str, str]:
  """split -> path of the JSONL files present; raises if a required one is missing."""
  if not manual_dir:
    raise ValueError("config.task.manual_dir is empty: set it to a directory holding "
                     "train.jsonl and test.jsonl (and optionally validation.jsonl)")
  files = {split: os.path.join(manual_dir, name) for split, name in SPLIT_FILES.items()
           if os.path.isfile(os.path.join(manual_dir, name))}
  missing = [SPLIT_FILES[s] for s in ("train", "test") if s not in files]
  if missing:
    raise ValueError(f"manual_dir={manual_dir!r} lacks {', '.join(missing)}; expected "
                     f"{sorted(SPLIT_FILES.values())} (validation.jsonl optional)")
  return files


def validate_manual_dir(manual_dir: str, *, fmt: str = "auto", strict: bool = True,
                        max_prompt_chars: int = 4000, seed: int = 0,
                        val_fraction: float = 0.05) -> ValidationResult:
  """Parses and validates every line of the manual directory's JSONL files.

  Args:
    manual_dir: directory with train.jsonl, test.jsonl and optional validation.jsonl.
    fmt: 'auto', 'gsm8k' or 'math' (see the module docstring).
    strict: raise on the first bad line instead of skipping and counting it.
    max_prompt_chars: longest allowed question, in characters.
    seed: seed of the validation carve (used when validation.jsonl is absent).
    val_fraction: fraction of train carved out as validation (same condition).

  Returns:
    The validated records per split, per-reason counts of skipped lines and a summary.

  Raises:
    ValueError: `<path>:<line>: <reason>: <detail>` for a bad line in strict mode;
      also for missing files, bad options, or a split left empty.
  """
  if fmt not in FORMATS:
    raise ValueError(f"config.task.format={fmt!r}; expected one of {FORMATS}")
  if max_prompt_chars <= 0:
    raise ValueError(f"config.task.max_prompt_chars={max_prompt_chars} must be positive")
  files = split_files(manual_dir)
  counts = {reason: 0 for reason in BAD_LINE_REASONS}
  records: dict[str, list[dict[str, Any]]] = {}
  seen: dict[str, str] = {}  # uid -> source of the kept record
  lines_read = {}
  for split in ("train", "validation", "test"):
    if split not in files:
      continue
    path = files[split]
    fname = os.path.basename(path)
    lines = _read_lines(path)
    lines_read[fname] = len(lines)
    kept = []
    for lineno, raw in enumerate(lines, start=1):
      try:
        rec = _parse_line(raw, fname, lineno, fmt, max_prompt_chars)
        if rec["uid"] in seen:
          raise _BadLine(DUPLICATE_ID, f"id {rec['uid']!r} already used at {seen[rec['uid']]}")
      except _BadLine as e:
        if strict:
          raise ValueError(f"{path}:{lineno}: {e.reason}: {e.detail}") from None
        counts[e.reason] += 1
        continue
      seen[rec["uid"]] = rec["source"]
      kept.append(rec)
    records[split] = kept
  validation_source = "file"
  if "validation" not in files:
    validation_source = "carved"
    if not 0.0 < val_fraction < 1.0:
      raise ValueError(f"no validation.jsonl in {manual_dir!r} and config.task.val_fraction="
                       f"{val_fraction} is not in (0, 1): cannot carve a validation split")
    train = records["train"]
    n_val = min(max(int(round(val_fraction * len(train))), 1), len(train) - 1)
    if n_val < 1:
      raise ValueError(f"train.jsonl has {len(train)} valid records: too few to carve a "
                       "validation split from; add validation.jsonl")
    chosen = set(np.random.default_rng(seed).permutation(len(train))[:n_val].tolist())
    records["validation"] = [r for i, r in enumerate(train) if i in chosen]
    records["train"] = [r for i, r in enumerate(train) if i not in chosen]
  for split in base.SPLITS:
    if not records[split]:
      raise ValueError(f"split {split!r} of {manual_dir!r} has no valid record "
                       f"(skipped lines per reason: {counts})")
    for index, rec in enumerate(records[split]):
      rec["index"] = index
  records = {split: records[split] for split in base.SPLITS}
  summary = {
      "manual_dir": os.path.abspath(manual_dir),
      "format": fmt,
      "strict": strict,
      "max_prompt_chars": max_prompt_chars,
      "seed": seed,
      "val_fraction": val_fraction,
      "validation_source": validation_source,
      "lines_read": lines_read,
      "skipped": counts,
      "kept": {split: len(recs) for split, recs in records.items()},
      "record_formats": dict(collections.Counter(
          r["format"] for recs in records.values() for r in recs)),
  }
  if any(counts.values()):
    logging.warning("jsonl_math: skipped bad lines in %s: %s", manual_dir,
                    {k: v for k, v in counts.items() if v})
  return ValidationResult(records, counts, summary)


def fingerprint(manual_dir: str, *, fmt: str, strict: bool, max_prompt_chars: int, seed: int,
                val_fraction: float) -> str:
  """Short hash of the input files and options: names the prepared dataset config."""
  from pavjax.tasks import jsonl_builder  # pylint: disable=g-import-not-at-top
  h = hashlib.sha256()
  h.update(str(jsonl_builder.JsonlMath.VERSION).encode())
  opts = dict(fmt=fmt, strict=bool(strict), max_prompt_chars=int(max_prompt_chars),
              seed=int(seed), val_fraction=float(val_fraction))
  h.update(json.dumps(opts, sort_keys=True).encode())
  for split, path in sorted(split_files(manual_dir).items()):
    h.update(split.encode() + b"\0")
    with open(path, "rb") as f:
      for chunk in iter(lambda: f.read(1 << 20), b""):
        h.update(chunk)
    h.update(b"\0")
  return h.hexdigest()[:16]


def prepare(manual_dir: str, data_dir: str, *, fmt: str = "auto", strict: bool = True,
            max_prompt_chars: int = 4000, seed: int = 0, val_fraction: float = 0.05):
  """Validates the manual directory and writes the ArrayRecord dataset (once).

  Args:
    manual_dir: directory with the user's JSONL files.
    data_dir: tfds data_dir; the dataset lands in `<data_dir>/jsonl_math/fp_<hash>/1.0.0`.
    fmt: see `validate_manual_dir` (as are the remaining options).
    strict: see `validate_manual_dir`.
    max_prompt_chars: see `validate_manual_dir`.
    seed: see `validate_manual_dir`.
    val_fraction: see `validate_manual_dir`.

  Returns:
    `(builder, summary)`: the prepared `jsonl_builder.JsonlMath` builder (read it with
    `builder.as_data_source()`), and the validation summary stored next to the data.
  """
  from pavjax.tasks import jsonl_builder  # pylint: disable=g-import-not-at-top
  opts = dict(fmt=fmt, strict=strict, max_prompt_chars=max_prompt_chars, seed=seed,
              val_fraction=val_fraction)
  builder = jsonl_builder.make_builder(
      data_dir, fingerprint(manual_dir, **opts), **opts)
  summary_path = os.path.join(builder.data_dir, SUMMARY_FILE)
  if not builder.is_prepared():
    result = validate_manual_dir(manual_dir, **opts)  # may raise: nothing written yet
    builder.prevalidated = result
    jsonl_builder.download_and_prepare(builder, manual_dir)
  with open(summary_path) as f:
    summary = json.load(f)
  return builder, summary


def load_split(builder, split: str) -> list[dict[str, Any]]:
  """Records of one prepared split, via `builder.as_data_source` (no TensorFlow)."""
  from pavjax.tasks import jsonl_builder  # pylint: disable=g-import-not-at-top
  return jsonl_builder.read_split(builder, split)


# ----------------------------------------------------------------------------
# Tokenizer.
# ----------------------------------------------------------------------------


class SentencePieceTokenizer:
  """A SentencePiece model with id 0 as padding and a dedicated newline id.

  Attributes:
    offset: added to every SentencePiece id (0 if the model's pad id is 0, else 1).
    nl_id: the newline token (`piece_size + offset`).
    eos_id: the model's eos id + offset, or `nl_id + 1` when it has none.
    bos_id: the model's bos id + offset, or None.
    vocab_size: number of task ids.
  """

  def __init__(self, model_path: str):
    import sentencepiece as spm  # pylint: disable=g-import-not-at-top
    if not model_path:
      raise ValueError("config.task.tokenizer_path is empty: jsonl_math needs a SentencePiece "
                       ".model file (train one on your data with sentencepiece)")
    if not os.path.isfile(model_path):
      raise ValueError(f"config.task.tokenizer_path={model_path!r} is not a file")
    self.sp = spm.SentencePieceProcessor(model_file=model_path)
    self.piece_size = self.sp.get_piece_size()
    self.offset = 0 if self.sp.pad_id() == 0 else 1
    self.nl_id = self.piece_size + self.offset
    if self.sp.eos_id() >= 0:
      self.eos_id = self.sp.eos_id() + self.offset
      self.vocab_size = self.nl_id + 1
    else:
      self.eos_id = self.nl_id + 1
      self.vocab_size = self.nl_id + 2
    self.bos_id = self.sp.bos_id() + self.offset if self.sp.bos_id() >= 0 else None

  def encode(self, text: str) -> list[int]:
    """Task ids of a text; each "\\n" becomes `nl_id`."""
    out = []
    for i, line in enumerate(text.split("\n")):
      if i:
        out.append(self.nl_id)
      out.extend(t + self.offset for t in self.sp.encode(line))
    return out

  def decode(self, ids: Sequence[int]) -> str:
    """Text of task ids; `nl_id` becomes "\\n", padding and extra ids are dropped."""
    lines, cur = [], []
    for t in ids:
      t = int(t)
      if t == self.nl_id:
        lines.append(cur)
        cur = []
      elif self.offset <= t < self.piece_size + self.offset:
        cur.append(t - self.offset)
    lines.append(cur)
    return "\n".join(self.sp.decode(line) if line else "" for line in lines)


# ----------------------------------------------------------------------------
# The task.
# ----------------------------------------------------------------------------


class JsonlMathTask(base.Task):
  """User-provided GSM8K / MATH style problems (see the module docstring)."""

  name = "jsonl_math"

  def __init__(self, splits: Mapping[str, Sequence[base.Problem]],
               tokenizer: SentencePieceTokenizer, max_prompt_len: int, max_response_len: int,
               strict: bool = True):
    """Builds the task, checking every problem against the token limits.

    Args:
      splits: split name -> problems.
      tokenizer: the task's tokenizer.
      max_prompt_len: max prompt tokens.
      max_response_len: max response tokens (EOS included).
      strict: raise on a problem over a limit (or whose reference is not judged
        correct) instead of dropping it and counting it in `token_filter_counts`.
    """
    self.tokenizer = tokenizer
    self._max_prompt_len = int(max_prompt_len)
    self._max_response_len = int(max_response_len)
    self.token_filter_counts = {reason: 0 for reason in TOKEN_FILTER_REASONS}
    self._splits = {}
    for split in base.SPLITS:
      kept = []
      for problem in splits.get(split, ()):
        reason, detail = self._check(problem)
        if reason:
          if strict:
            raise ValueError(f"jsonl_math problem {problem.uid!r} ({split}): {reason}: {detail}")
          self.token_filter_counts[reason] += 1
          continue
        kept.append(problem)
      if not kept:
        raise ValueError(f"jsonl_math split {split!r} has no problem within the token limits "
                         f"(dropped per reason: {self.token_filter_counts})")
      self._splits[split] = kept
    if any(self.token_filter_counts.values()):
      logging.warning("jsonl_math: dropped problems: %s", self.token_filter_counts)

  def _check(self, problem: base.Problem) -> tuple[str, str]:
    n_prompt = len(self.encode_prompt(problem))
    if n_prompt > self._max_prompt_len:
      return PROMPT_TOO_MANY_TOKENS, (f"prompt has {n_prompt} tokens > max_prompt_len="
                                      f"{self._max_prompt_len}; raise config.task.max_prompt_len")
    solution = self.encode_solution(problem)
    if len(solution) > self._max_response_len:
      return SOLUTION_TOO_MANY_TOKENS, (
          f"reference has {len(solution)} tokens > max_response_len={self._max_response_len}; "
          "raise config.task.max_response_len")
    outcome = self.is_correct(solution, problem)
    if outcome.reason != base.CORRECT:
      return REFERENCE_NOT_CORRECT, (
          f"the tokenized reference is judged {outcome.reason!r} (answer {problem.answer!r}); "
          "the tokenizer likely loses characters of the answer")
    return "", ""

  @property
  def vocab_size(self) -> int:
    return self.tokenizer.vocab_size

  @property
  def eos_id(self) -> int:
    return self.tokenizer.eos_id

  @property
  def step_end_ids(self) -> tuple[int, ...]:
    return (self.tokenizer.nl_id,)

  @property
  def max_prompt_len(self) -> int:
    return self._max_prompt_len

  @property
  def max_response_len(self) -> int:
    return self._max_response_len

  def split(self, name: str) -> Sequence[base.Problem]:
    if name not in self._splits:
      raise ValueError(f"unknown split {name!r}; known: {base.SPLITS}")
    return self._splits[name]

  def encode_prompt(self, problem: base.Problem) -> list[int]:
    """`[BOS] question NL` (BOS only if the SentencePiece model has one)."""
    bos = [] if self.tokenizer.bos_id is None else [self.tokenizer.bos_id]
    return bos + self.tokenizer.encode(str(problem.prompt)) + [self.tokenizer.nl_id]

  def encode_solution(self, problem: base.Problem) -> list[int]:
    """`step1 NL step2 NL .. stepK EOS`."""
    return self.tokenizer.encode("\n".join(problem.steps)) + [self.tokenizer.eos_id]

  def decode(self, tokens: Sequence[int]) -> str:
    """Text of the tokens before EOS, with `</s>` marking EOS when present."""
    body, has_eos = base.response_until_eos(tokens, self.eos_id)
    return self.tokenizer.decode(body) + ("</s>" if has_eos else "")

  def is_correct(self, response: Sequence[int], problem: base.Problem) -> base.Outcome:
    """Outcome of a response: its final answer (see `extract_final_answer`) vs the reference."""
    body, has_eos = base.response_until_eos(response, self.eos_id)
    if has_eos and not body:
      return base.Outcome(0.0, base.EMPTY)
    if not has_eos:
      return base.Outcome(0.0, base.TRUNCATED)
    if len(body) + 1 > self._max_response_len:
      return base.Outcome(0.0, base.TOO_LONG)
    text = self.tokenizer.decode(body)
    if not text.strip():
      return base.Outcome(0.0, base.EMPTY)
    answer, reason = extract_final_answer(text)
    if reason:
      return base.Outcome(0.0, reason)
    ok = answers_match(answer, problem.answer)
    return base.Outcome(float(ok), base.CORRECT if ok else base.WRONG)


def problems_from_records(records: Sequence[Mapping[str, Any]]) -> list[base.Problem]:
  """Problems of prepared records (as returned by `load_split`)."""
  return [base.Problem(uid=r["uid"], prompt=r["question"], steps=tuple(r["steps"]),
                       answer=r["answer"]) for r in records]


def make(task_cfg: ml_collections.ConfigDict, workdir: str | None = None) -> JsonlMathTask:
  """Validates and prepares the user's data (once), loads the tokenizer, builds the task."""
  data_dir = task_cfg.data_dir
  if not data_dir:
    if not workdir:
      raise ValueError("jsonl_math needs config.task.data_dir or a workdir (data_dir='' means "
                       "<workdir>/tfds)")
    data_dir = os.path.join(workdir, "tfds")
  tokenizer = SentencePieceTokenizer(task_cfg.tokenizer_path)  # fail fast on a bad path
  builder, _ = prepare(task_cfg.manual_dir, data_dir, fmt=task_cfg.format,
                       strict=task_cfg.strict, max_prompt_chars=task_cfg.max_prompt_chars,
                       seed=task_cfg.seed, val_fraction=task_cfg.val_fraction)
  splits = {split: problems_from_records(load_split(builder, split)) for split in base.SPLITS}
  return JsonlMathTask(splits, tokenizer, task_cfg.max_prompt_len, task_cfg.max_response_len,
                       strict=task_cfg.strict)
