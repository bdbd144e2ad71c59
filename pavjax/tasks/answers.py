"""Safe final-answer parsing and comparison for text tasks.

Model output is untrusted: nothing here evaluates it (no eval/exec, no sympy),
every regex is linear-time, lengths are checked before any conversion, and
numbers are compared as exact fractions parsed from at most `MAX_NUMBER_CHARS`
characters (no exponents, so "9e999999" cannot build a huge integer).

A response is a sequence of lines; its final answer is the one line that starts
with an answer marker ("answer:" by default, case-insensitive). `grade_text`
maps a decoded response to a `base.Outcome`:

  empty             nothing but whitespace
  too_long          more than `max_chars` characters (checked first, in O(1))
  no_answer         no answer line
  multiple_answers  more than one answer line
  wrong / correct   the answer (after normalization) against the reference
"""

from __future__ import annotations

import dataclasses
import fractions
import re

from pavjax.tasks import base

MAX_NUMBER_CHARS = 40  # longest numeric string normalize_number accepts
MAX_ANSWER_CHARS = 200  # longest answer string compared at all

# A line is an answer line if it starts (after optional spaces) with "answer:".
ANSWER_LINE_RE = re.compile(r"[ \t]*answer[ \t]*:[ \t]*(.*)", re.IGNORECASE)
# Other conventions a task may pass as `line_re`: GSM8K "#### 42", "final answer: 42".
GSM8K_LINE_RE = re.compile(r"[ \t]*####[ \t]*(.*)")
FINAL_ANSWER_LINE_RE = re.compile(r"[ \t]*(?:final[ \t]+)?answer[ \t]*:[ \t]*(.*)", re.IGNORECASE)

_INT_RE = re.compile(r"[+-]?[0-9]+")
_DEC_RE = re.compile(r"[+-]?(?:[0-9]+\.[0-9]*|\.[0-9]+)")
_FRAC_RE = re.compile(r"([+-]?[0-9]+)[ \t]*/[ \t]*([0-9]+)")
_THOUSANDS_RE = re.compile(r"[+-]?[0-9]{1,3}(?:,[0-9]{3})+(?:\.[0-9]*)?")
_SPACE_RE = re.compile(r"\s+")


@dataclasses.dataclass(frozen=True)
class ParsedAnswer:
  """The final answer of a response, or why there is none.

  `reason` is None when `answer` holds the (stripped) text after the marker,
  else one of base.EMPTY, base.TOO_LONG, base.NO_ANSWER, base.MULTIPLE_ANSWERS.
  """

  answer: str | None
  reason: str | None


def parse_final_answer(text: str, *, max_chars: int = 20000,
                       line_re: re.Pattern[str] = ANSWER_LINE_RE) -> ParsedAnswer:
  """Finds the single answer line of `text` (see module docstring).

  Args:
    text: decoded response (EOS already stripped).
    max_chars: longer texts are `too_long` without being scanned.
    line_re: matched (`re.match`) against each line; group 1 is the answer.

  Returns:
    A ParsedAnswer.
  """
  if len(text) > max_chars:
    return ParsedAnswer(None, base.TOO_LONG)
  if not text.strip():
    return ParsedAnswer(None, base.EMPTY)
  found = []
  for line in text.split("\n"):
    m = line_re.match(line)
    if m:
      found.append(m.group(1).strip())
      if len(found) > 1:
        return ParsedAnswer(None, base.MULTIPLE_ANSWERS)
  if not found:
    return ParsedAnswer(None, base.NO_ANSWER)
  return ParsedAnswer(found[0], None)


def _strip_wrappers(text: str) -> str:
  """Removes $...$, \\boxed{...}, a trailing period and surrounding spaces (bounded input)."""
  text = text.strip()
  for _ in range(3):
    before = text
    if len(text) >= 2 and text[0] == "$" and text[-1] == "$":
      text = text[1:-1].strip()
    if text.startswith("\\boxed{") and text.endswith("}"):
      text = text[len("\\boxed{"):-1].strip()
    if text.endswith(".") and not _DEC_RE.fullmatch(text):
      text = text[:-1].rstrip()
    if text == before:
      break
  return text


def parse_number(text: str) -> fractions.Fraction | None:
  """Exact value of an integer, decimal, fraction or 1,234-style number; else None.

  Accepts an optional sign, thousands separators, "$...$" and a trailing period;
  rejects exponents, expressions and anything over MAX_NUMBER_CHARS characters.
  """
  if len(text) > MAX_NUMBER_CHARS + 20:
    return None
  text = _strip_wrappers(text)
  if len(text) > MAX_NUMBER_CHARS:
    return None
  if _THOUSANDS_RE.fullmatch(text):
    text = text.replace(",", "")
  if _INT_RE.fullmatch(text) or _DEC_RE.fullmatch(text):
    return fractions.Fraction(text)
  m = _FRAC_RE.fullmatch(text)
  if m:
    den = int(m.group(2))
    if den == 0:
      return None
    return fractions.Fraction(int(m.group(1)), den)
  return None


def normalize_number(text: str) -> str | None:
  """Canonical string of a number ("042" -> "42", "0.50" -> "1/2", "-0" -> "0"), or None."""
  value = parse_number(text)
  if value is None:
    return None
  if value.denominator == 1:
    return str(value.numerator)
  return f"{value.numerator}/{value.denominator}"


def normalize_text(text: str) -> str:
  """Lower-cased, whitespace-collapsed answer text without $ / \\boxed / trailing period."""
  return _SPACE_RE.sub(" ", _strip_wrappers(text[: MAX_ANSWER_CHARS + 20])).lower()


def answers_match(predicted: str, reference: str) -> bool:
  """Numeric equality when both parse as numbers, else normalized text equality."""
  if len(predicted) > MAX_ANSWER_CHARS:
    return False
  p, r = parse_number(predicted), parse_number(reference)
  if p is not None and r is not None:
    return p == r
  if p is not None or r is not None:
    return False
  return normalize_text(predicted) == normalize_text(reference)


def grade_text(text: str, reference: str, *, max_chars: int = 20000,
               line_re: re.Pattern[str] = ANSWER_LINE_RE,
               answer_re: re.Pattern[str] | None = None) -> base.Outcome:
  """Outcome reward of a decoded response against a reference answer.

  Truncation (no EOS) is a token-level fact the caller checks before decoding.

  Args:
    text: decoded response, EOS excluded.
    reference: the reference answer.
    max_chars: longer responses are `too_long`.
    line_re: the answer-line pattern (see `parse_final_answer`).
    answer_re: if given, the answer must `fullmatch` it (e.g. `-?[0-9]{1,12}`), else
      it is wrong.

  Returns:
    The outcome, with a reason from base.REASONS.
  """
  parsed = parse_final_answer(text, max_chars=max_chars, line_re=line_re)
  if parsed.reason is not None:
    return base.Outcome(0.0, parsed.reason)
  answer = parsed.answer
  if len(answer) > MAX_ANSWER_CHARS or (answer_re is not None and not answer_re.fullmatch(answer)):
    return base.Outcome(0.0, base.WRONG)
  if answers_match(answer, reference):
    return base.Outcome(1.0, base.CORRECT)
  return base.Outcome(0.0, base.WRONG)
