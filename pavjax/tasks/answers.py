"""Safe final-answer extraction, normalization and comparison for text tasks.

Model output is untrusted: nothing here evaluates it (no eval/exec, no sympy),
every regex and scan is linear-time, lengths are checked before any conversion,
and numbers are compared as exact fractions parsed from at most
`MAX_NUMBER_CHARS` characters (no exponents, so "9e999999" cannot build a huge
integer).

Numbers (`parse_number`): an optional sign, ASCII digits, thousands separators
(`1,234`), decimals (`0.5`, `.5`), `a/b` and `\\frac{a}{b}`, optionally wrapped in
`$...$` / `\\boxed{...}` with a trailing period. Two answers that both parse are
compared by value (`answers_match`), so `0.5`, `1/2` and `\\frac{1}{2}` agree.

Answer lines (the arith convention). A response is a sequence of lines; its
final answer is the one line that starts with an answer marker ("answer:" by
default, case-insensitive). `grade_text` maps a decoded response to a
`base.Outcome`:

  empty             nothing but whitespace
  too_long          more than `max_chars` characters (checked first, in O(1))
  no_answer         no answer line
  multiple_answers  more than one answer line
  wrong / correct   the answer (after normalization) against the reference

Math solutions (GSM8K / MATH style, `extract_final_answer`): the first kind of
marker present wins, in this order:
  1. lines starting with `####` (GSM8K), the answer is the rest of the line;
  2. `\\boxed{...}` / `\\fbox{...}` (outermost ones; nested braces and escaped
     `\\{ \\}` are handled in one linear pass);
  3. lines starting with `Answer:` / `Final answer:` / `The answer is:` (any case);
  4. the phrase "the answer is" / "the final answer is" anywhere in a line, with or
     without a colon ("So the answer is 12.5."): only its last occurrence counts (a
     solution may use the phrase in passing before it concludes), and the answer is
     the rest of that line up to the first period followed by a space ("The answer
     is 5. Check: ..." gives `5`; the period of `12.5` is kept).
If markers of the chosen kind disagree (after normalization) the reason is
`multiple_answers`; if there is none, or they are all empty, it is `no_answer`.

Normalization of math answers (`normalize_answer`, a documented subset of the
usual MATH `strip_string`): read the Unicode minus sign U+2212 as `-` (also in
`parse_number`); drop a trailing unit `\\text{ cm}` (text starting
with a space), `\\left` / `\\right`, `\\!` `\\,` `\\;` `\\:` `\\quad` `~` spacing,
`$` and `\\$`, `%` and `\\%`, degrees `^\\circ` / `^{\\circ}`; unwrap `\\text{}`
`\\textbf{}` `\\mbox{}` `\\mathrm{}` `\\mathbf{}` `\\boxed{}`; a plain-text unit
word: when what is left is exactly a plain number (sign, digits, `1,234` commas, a
decimal part), spaces, then one word of two or more ASCII letters (and perhaps a
period), the word is dropped (`405 dollars` -> `405`, `12 apples.` -> `12`), unless
it changes the value (`pi`, `hundred`, `thousand`, `million`, `billion`, `trillion`,
`dozen`, `squared`, `cubed`: those are kept); anything else keeps its words (`x^2
dollars`, `405 dollars and 5 cents`, `5 x`), and answers longer than
`MAX_UNIT_ANSWER_CHARS` are not looked at; `\\dfrac` / `\\tfrac` ->
`\\frac`; `\\frac12` -> `\\frac{1}{2}`, `\\sqrt2` -> `\\sqrt{2}`; remove all
whitespace and a trailing period; `x=5` -> `5` for a one-letter left side; a
number with thousands commas `1,234` -> `1234`; `5.50` -> `5.5`, `3.0` -> `3`,
`.5` -> `0.5`; a redundant outer brace pair. Two normalized answers match
(`answers_match(..., exact_text=True)`) when equal as strings, or when both are
short plain numbers with the same exact rational value. jsonl_math grades with
`pavjax.tasks.grading`, which runs these two checks first and then, for other answers,
a time-limited symbolic check (math-verify) in a separate process: nothing here uses sympy.
"""

from __future__ import annotations

import dataclasses
import fractions
import re

from pavjax.tasks import base

MAX_NUMBER_CHARS = 40  # longest numeric string parse_number accepts
MAX_ANSWER_CHARS = 200  # longest answer string compared as free text
MAX_UNIT_ANSWER_CHARS = 64  # longest "<number> <word>" answer whose word may be dropped
UNICODE_MINUS = "\u2212"  # read as "-" in numbers and math answers

# A line is an answer line if it starts (after optional spaces) with "answer:".
ANSWER_LINE_RE = re.compile(r"[ \t]*answer[ \t]*:[ \t]*(.*)", re.IGNORECASE)
# Other conventions a task may pass as `line_re`: GSM8K "#### 42", "final answer: 42".
GSM8K_LINE_RE = re.compile(r"[ \t]*####[ \t]*(.*)")
FINAL_ANSWER_LINE_RE = re.compile(r"[ \t]*(?:final[ \t]+)?answer[ \t]*:[ \t]*(.*)", re.IGNORECASE)

_INT_RE = re.compile(r"[+-]?[0-9]+")
_DEC_RE = re.compile(r"[+-]?(?:[0-9]+\.[0-9]*|\.[0-9]+)")
_SLASH_FRAC_RE = re.compile(r"([+-]?[0-9]+)[ \t]*/[ \t]*([0-9]+)")
_TEX_FRAC_RE = re.compile(r"(-?)\\frac\{(-?[0-9]+)\}\{(-?[0-9]+)\}")
_THOUSANDS_RE = re.compile(r"[+-]?[0-9]{1,3}(?:,[0-9]{3})+(?:\.[0-9]*)?")
_SPACE_RE = re.compile(r"\s+")

# ----------------------------------------------------------------------------
# Numbers and answer comparison.
# ----------------------------------------------------------------------------


def _strip_wrappers(text: str) -> str:
  """Removes $...$, \\boxed{...}, a trailing period and surrounding spaces (bounded input)."""
  text = text.strip().replace(UNICODE_MINUS, "-")
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

  Accepts an optional sign, thousands separators, `a/b`, `\\frac{a}{b}`, "$...$",
  "\\boxed{...}" and a trailing period; rejects exponents, expressions, non-ASCII
  digits and anything over MAX_NUMBER_CHARS characters.
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
  m = _SLASH_FRAC_RE.fullmatch(text)
  if m:
    den = int(m.group(2))
    if den == 0:
      return None
    return fractions.Fraction(int(m.group(1)), den)
  m = _TEX_FRAC_RE.fullmatch(text)
  if m and int(m.group(3)):
    value = fractions.Fraction(int(m.group(2)), int(m.group(3)))
    return -value if m.group(1) else value
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


def answers_match(predicted: str, reference: str, *, exact_text: bool = False) -> bool:
  """Numeric equality when both parse as numbers, else text equality.

  Args:
    predicted: the response's answer.
    reference: the reference answer.
    exact_text: compare non-numbers as they are, at any length (for answers
      already normalized by `normalize_answer`, where case matters: `\\Pi` is not
      `\\pi`); else as `normalize_text` (case- and space-insensitive), and a
      predicted answer over MAX_ANSWER_CHARS characters never matches.

  Returns:
    Whether the answers agree.
  """
  p, r = parse_number(predicted), parse_number(reference)
  if p is not None and r is not None:
    return p == r
  if exact_text:
    return predicted == reference
  if len(predicted) > MAX_ANSWER_CHARS or p is not None or r is not None:
    return False
  return normalize_text(predicted) == normalize_text(reference)


# ----------------------------------------------------------------------------
# Answer lines ("answer: 42") and grading.
# ----------------------------------------------------------------------------


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


# ----------------------------------------------------------------------------
# Math solutions (GSM8K / MATH): extraction and normalization.
# ----------------------------------------------------------------------------

_BOX_START_RE = re.compile(r"\\(?:boxed|fbox)\s*\{")
_BRACE_TOKEN_RE = re.compile(r"\\.|[{}]", re.DOTALL)
_MATH_ANSWER_LINE_RE = re.compile(r"(?:the\s+)?(?:final\s+)?answer(?:\s+is)?\s*:",
                                  re.IGNORECASE)
# "the (final) answer is" inside a line (kind 4). Only spaces and tabs between the words,
# so a match stays within one line; every repetition is followed by a literal, so a
# search is linear in the text.
_ANSWER_PHRASE_RE = re.compile(r"\bthe[ \t]+(?:final[ \t]+)?answer[ \t]+is\b[ \t]*:?",
                               re.IGNORECASE)
_SENTENCE_END_RE = re.compile(r"\.[ \t]")


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

  Returns `(kind, candidates)` with kind one of '####', 'boxed', 'answer:',
  'answer is' (one candidate: the last phrase's) or '' (no marker at all); see the
  module docstring for the priority order.
  """
  lines = [line.strip() for line in text.split("\n")]
  hashes = [line.lstrip("#").strip() for line in lines if line.startswith("####")]
  if hashes:
    return "####", hashes
  boxed = boxed_contents(text)
  if boxed:
    return "boxed", boxed
  found = []
  for line in lines:
    m = _MATH_ANSWER_LINE_RE.match(line[:64])  # bounded prefix: constant-time matching
    if m:
      found.append(line[m.end():].strip())
  if found:
    return "answer:", found
  last = None
  for last in _ANSWER_PHRASE_RE.finditer(text):
    pass
  if last is not None:
    end = text.find("\n", last.end())
    rest = text[last.end():] if end < 0 else text[last.end():end]
    stop = _SENTENCE_END_RE.search(rest)
    return "answer is", [(rest if stop is None else rest[:stop.start()]).strip()]
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
  if any(not answers_match(v, first, exact_text=True) for v in values[1:]):
    return None, base.MULTIPLE_ANSWERS
  return first, ""


_UNIT_RE = re.compile(r"\\(?:text|mbox|mathrm)\{\s[^{}]*\}\s*$")
_LEFT_RIGHT_RE = re.compile(r"\\(?:left|right)(?![A-Za-z])")
_DT_FRAC_RE = re.compile(r"\\[dt]frac(?![A-Za-z])")
_WRAP_RE = re.compile(
    r"\\(?:text|textbf|textrm|textit|mbox|mathrm|mathbf|boxed|fbox)\s*\{([^{}]*)\}")
_DEGREE_RE = re.compile(r"\^\s*\{?\s*\\circ\s*\}?")
_SPACING_RE = re.compile(r"\\[!,;: ]|\\q?quad(?![A-Za-z])|~")
_FRAC_DIGITS_RE = re.compile(r"\\frac(\d)(\d)")
_FRAC_DIGIT_NUM_RE = re.compile(r"\\frac(\d)\{")
_FRAC_DIGIT_DEN_RE = re.compile(r"\\frac\{([^{}]*)\}(\d)")
_SQRT_RE = re.compile(r"\\sqrt(\w)")
_NORM_THOUSANDS_RE = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_NORM_DECIMAL_RE = re.compile(r"-?\d+\.\d+")
_NORM_BARE_DECIMAL_RE = re.compile(r"-?\.\d+")
_ONE_VAR_LHS_RE = re.compile(r"[A-Za-z]=")
# A plain number, spaces, one word (a unit) and perhaps a period. No two repetitions can
# match the same characters, so a failed fullmatch backtracks linearly (and the input is
# at most MAX_UNIT_ANSWER_CHARS long anyway).
_NUMBER_WORD_RE = re.compile(
    r"([+-]?(?:[0-9]+(?:,[0-9]{3})*(?:\.[0-9]+)?|\.[0-9]+))[ \t]+([A-Za-z]{2,})\.?")
# Words after a number that change its value: never dropped as units.
_NOT_UNIT_WORDS = frozenset({"pi", "hundred", "thousand", "million", "billion", "trillion",
                             "dozen", "squared", "cubed"})


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


def _drop_unit_word(s: str) -> str:
  """`405 dollars` -> `405`: a plain number followed by one unit word (see the docstring)."""
  s = s.strip()
  if len(s) > MAX_UNIT_ANSWER_CHARS:
    return s
  m = _NUMBER_WORD_RE.fullmatch(s)
  if m is None or m.group(2).lower() in _NOT_UNIT_WORDS:
    return s
  return m.group(1)


def normalize_answer(answer: str) -> str:
  """Canonical string form of a math final answer (see the module docstring)."""
  s = answer.strip().replace(UNICODE_MINUS, "-")
  s = _UNIT_RE.sub("", s)
  s = _LEFT_RIGHT_RE.sub("", s)
  s = _DT_FRAC_RE.sub(r"\\frac", s)
  for _ in range(3):  # a bounded number of passes unwraps a few nested levels
    s, n = _WRAP_RE.subn(r"\1", s)
    if not n:
      break
  s = _DEGREE_RE.sub("", s)
  s = _SPACING_RE.sub("", s)
  s = s.replace("\\$", "").replace("$", "").replace("\\%", "").replace("%", "")
  s = _drop_unit_word(s)
  s = _SPACE_RE.sub("", s)
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
  if _NORM_THOUSANDS_RE.fullmatch(s):
    s = s.replace(",", "")
  if _NORM_BARE_DECIMAL_RE.fullmatch(s):
    s = s.replace(".", "0.", 1)
  if _NORM_DECIMAL_RE.fullmatch(s):
    s = s.rstrip("0").rstrip(".")
  if s == "-0":
    s = "0"
  return s
