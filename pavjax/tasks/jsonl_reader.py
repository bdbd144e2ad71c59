"""Reading and validating the user's JSONL files for the jsonl_math task.

Files (in `config.task.manual_dir`, one JSON object per line, UTF-8):

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

The reference's final answer is `answers.extract_final_answer` of its steps.

Bad input lines (`BAD_LINE_REASONS`, checked in this order, a line counts once
under its first failing reason): `empty_line`, `invalid_utf8`, `invalid_json`,
`not_object`, `missing_field`, `non_string_field`, `empty_field`,
`prompt_too_long` (more than `max_prompt_chars` characters), `no_answer`,
`multiple_answers` (the reference has no / conflicting final answers),
`duplicate_id`. With `strict=True` the first bad line raises
`base.DataError('<path>:<line>: <reason>: <detail>')` (a `ValueError`); with
`strict=False` bad lines are skipped and counted, and the summary lists where
they were (`skipped_lines`: reason -> `file:line` of the first
`SKIPPED_LINES_CAP` of them). A manual directory that does not exist, a missing
train.jsonl or test.jsonl, an empty file (no line at all), or a split left with no
record is a `base.DataError` in either mode. The whole manual directory is validated before
any file is written, so preparation never fails midway.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import os
import re
from typing import Any, Mapping

import numpy as np

from pavjax.tasks import answers
from pavjax.tasks import base

SPLIT_FILES = {"train": "train.jsonl", "validation": "validation.jsonl", "test": "test.jsonl"}
FORMATS = ("auto", "gsm8k", "math")
SUMMARY_FILE = "jsonl_math_summary.json"  # the validation summary, next to the prepared data
SKIPPED_LINES_CAP = 100  # at most this many `file:line` entries per reason in the summary

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

_FIELDS = {"gsm8k": ("question", "answer"), "math": ("problem", "solution")}
_ID_FIELDS = ("id", "unique_id")


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
  answer, reason = answers.extract_final_answer("\n".join(steps))
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


def _config_error(field: str, message: str) -> ValueError:
  from pavjax import config_lib  # pylint: disable=g-import-not-at-top  (config_lib imports tasks)
  return config_lib.ConfigError(field, message)


def split_files(manual_dir: str) -> dict[str, str]:
  """split -> path of the JSONL files present.

  Raises:
    ConfigError: `manual_dir` is empty.
    base.DataError: the directory does not exist, or lacks train.jsonl or test.jsonl.
  """
  if not manual_dir:
    raise _config_error("task.manual_dir", "is empty: set it to a directory holding "
                        "train.jsonl and test.jsonl (and optionally validation.jsonl)")
  if not os.path.exists(manual_dir):
    raise base.DataError(f"{manual_dir} does not exist (config.task.manual_dir)")
  if not os.path.isdir(manual_dir):
    raise base.DataError(f"{manual_dir} is not a directory (config.task.manual_dir)")
  files = {split: os.path.join(manual_dir, name) for split, name in SPLIT_FILES.items()
           if os.path.isfile(os.path.join(manual_dir, name))}
  missing = [SPLIT_FILES[s] for s in ("train", "test") if s not in files]
  if missing:
    raise base.DataError(f"{manual_dir} lacks {', '.join(missing)}; expected "
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
    base.DataError: `<path>:<line>: <reason>: <detail>` for a bad line in strict mode;
      also for a missing directory, missing or empty files, or a split left empty.
    ConfigError: bad options.
  """
  if fmt not in FORMATS:
    raise _config_error("task.format", f"{fmt!r} is not one of {FORMATS}")
  if max_prompt_chars <= 0:
    raise _config_error("task.max_prompt_chars", f"{max_prompt_chars} must be positive")
  files = split_files(manual_dir)
  counts = {reason: 0 for reason in BAD_LINE_REASONS}
  skipped_lines: dict[str, list[str]] = {reason: [] for reason in BAD_LINE_REASONS}
  records: dict[str, list[dict[str, Any]]] = {}
  seen: dict[str, str] = {}  # uid -> source of the kept record
  lines_read = {}
  for split in ("train", "validation", "test"):
    if split not in files:
      continue
    path = files[split]
    fname = os.path.basename(path)
    lines = _read_lines(path)
    if not lines:
      raise base.DataError(f"{path} is empty")
    lines_read[fname] = len(lines)
    kept = []
    for lineno, raw in enumerate(lines, start=1):
      try:
        rec = _parse_line(raw, fname, lineno, fmt, max_prompt_chars)
        if rec["uid"] in seen:
          raise _BadLine(DUPLICATE_ID, f"id {rec['uid']!r} already used at {seen[rec['uid']]}")
      except _BadLine as e:
        if strict:
          raise base.DataError(f"{path}:{lineno}: {e.reason}: {e.detail}") from None
        counts[e.reason] += 1
        if len(skipped_lines[e.reason]) < SKIPPED_LINES_CAP:
          skipped_lines[e.reason].append(f"{fname}:{lineno}")
        continue
      seen[rec["uid"]] = rec["source"]
      kept.append(rec)
    records[split] = kept
  validation_source = "file"
  if "validation" not in files:
    validation_source = "carved"
    if not 0.0 < val_fraction < 1.0:
      raise _config_error("task.val_fraction", f"{val_fraction} is not in (0, 1): cannot "
                          f"carve a validation split (no validation.jsonl in {manual_dir})")
    train = records["train"]
    n_val = min(max(int(round(val_fraction * len(train))), 1), len(train) - 1)
    if n_val < 1:
      raise base.DataError(f"{files['train']}: has {len(train)} valid records: too few to "
                           "carve a validation split from; add validation.jsonl "
                           f"(skipped lines per reason: {counts})")
    chosen = set(np.random.default_rng(seed).permutation(len(train))[:n_val].tolist())
    records["validation"] = [r for i, r in enumerate(train) if i in chosen]
    records["train"] = [r for i, r in enumerate(train) if i not in chosen]
  for split in base.SPLITS:
    if not records[split]:
      raise base.DataError(f"{files.get(split, files['train'])}: split {split!r} has no "
                           f"valid record (skipped lines per reason: {counts})")
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
      "skipped_lines": skipped_lines,
      "kept": {split: len(recs) for split, recs in records.items()},
      "record_formats": dict(collections.Counter(
          r["format"] for recs in records.values() for r in recs)),
  }
  if any(counts.values()):
    logging.warning("jsonl_math: skipped bad lines in %s: %s", manual_dir,
                    {k: v for k, v in counts.items() if v})
  return ValidationResult(records, counts, summary)
