"""Real math word problems brought by the user as JSONL files (GSM8K / MATH style).

How a user brings data: put `train.jsonl`, `test.jsonl` and optionally
`validation.jsonl` (one JSON object per line, UTF-8) in a directory and point
`config.task.manual_dir` at it. Records look like

  GSM8K: {"question": "...", "answer": "step 1\\nstep 2\\n#### 42"}
  MATH:  {"problem": "...", "solution": "... so the answer is $\\\\boxed{\\\\frac{1}{2}}$."}

`pavjax.tasks.jsonl_reader` documents the files, record styles, ids, step
segmentation and bad-line handling (strict / lenient); `pavjax.tasks.answers`
documents final-answer extraction (`####`, `\\boxed{}`, `Answer:` lines, then a
last "the answer is ..." phrase) and
normalization, used both for the references and for model responses.

Storage: the validated records are written by a `tensorflow-datasets` builder
(`pavjax.tasks.jsonl_builder.JsonlMath`) as ArrayRecord files under
`<data_dir>/jsonl_math/fp_<fingerprint>/1.0.0/` and read back with
`builder.as_data_source()` / `tfds.data_source(...)`: no TensorFlow is needed.
The fingerprint hashes the input files and every option that changes the
records, so new data never reuses a stale cache. Next to the ArrayRecord files,
`jsonl_math_summary.json` holds the validation summary (per-reason counts of
skipped lines and `skipped_lines`, the `file:line` of the first 100 per reason,
kept records per split, ...).

Tokenizer, one of three:
  * none given (the default): a SentencePiece BPE model trained on the train
    split's questions and reference steps (`tokenizer.train_sentencepiece`, the
    code arith uses: digits split, every character of the text covered, ids 0-4
    = pad, unk, BOS, EOS, newline), with every printable ASCII character and the
    answer markers (`####`, `\\boxed`, `Answer:`) in it whatever the data holds.
    `sp_vocab_size` is its target size (a soft limit: small data gives fewer
    pieces). It is trained once and cached at
    `<cache_dir or workdir>/tokenizer/jsonl_math_<hash>.model` (`<data_dir>/tokenizer/`
    when the task is built without either), the hash covering
    the prepared data's fingerprint and the tokenizer options, so new data never
    reuses a stale model.
  * `tokenizer_path`: a user-given SentencePiece model, used as is through
    `pavjax.tasks.tokenizer.SentencePieceTokenizer`. Task ids are SentencePiece ids
    shifted by `offset`: 0 when the model's pad id is 0, else 1 (every piece id
    moves up by one and id 0 becomes padding). SentencePiece drops newlines, so
    text is encoded line by line and the lines are joined with a dedicated newline
    id `NL = piece_size + offset` (the step delimiter). EOS is the model's eos id
    (shifted) when it has one, else one more extra id after NL. `vocab_size` covers
    the extras.
  * `hf_tokenizer`: a Hugging Face checkpoint's tokenizer: its own ids, BOS, EOS,
    pad and newline id, the same line convention (`pavjax.tasks.hf_tokenizer`).
Prompts are `[BOS] question NL` (BOS only when the tokenizer has one); references
are `step1 NL step2 NL .. stepK EOS`.
Token limits. `max_prompt_len` / `max_response_len` left at 0 (the default) come from
the data: the longest tokenized prompt / reference (EOS included) over all three
splits, in the chosen tokenizer, times 1.25 and rounded up to a multiple of 16
(`derived_length`), so no problem is over a derived limit. The jobs follow them
(`config_lib.resolve_task_lengths`: `sample.max_new_tokens` and `model.max_len` at 0).
The longest lengths and the derived limits are kept per tokenizer next to the prepared
data (`jsonl_math_lengths.json`) and reported in `data_report()['token_lengths']`.
Problems whose prompt or reference exceeds a limit the user set, or whose tokenized
reference is not judged correct (a lossy tokenizer), raise
`base.DataError('<path>:<line>: <reason>: <detail>')` in strict mode and are dropped and
counted (`token_filter_counts`, with their `file:line` in `token_filter_lines`) in
lenient mode. These checks run before any ArrayRecord file is written.

Grading (`is_correct`): the response's final answer, extracted and normalized like the
reference's, is compared with `pavjax.tasks.grading.answers_equivalent`. Plain numbers
(`1,000`, `0.75`, `3/4`, `\\frac{3}{4}`) are compared exactly without sympy, equal strings
match, and with `grader='math_verify'` (the default) anything else goes to the math-verify
package (`2\\sqrt{2}` = `\\sqrt{8}`, `x^2+2x+1` = `(x+1)^2`, `\\{1,2\\}` = `\\{2,1\\}`,
`(1,2]` != `(1,2)`) in a worker process that is killed past `grade_timeout_s` seconds: a
hostile answer is wrong within the limit, from any thread. `grader='exact'` stops after
the string comparison. The grading module's docstring lists the decisions (`50\\%` = `50`,
`90^\\circ` = `90`, answers that read as words are compared as strings).
"""

from __future__ import annotations

import fractions
import hashlib
import json
import logging
import math
import os
from typing import Any, Mapping, Sequence

import ml_collections

from pavjax import artifacts
from pavjax.tasks import answers
from pavjax.tasks import base
from pavjax.tasks import grading
from pavjax.tasks import hf_tokenizer
from pavjax.tasks import jsonl_reader
from pavjax.tasks import tokenizer as tokenizer_lib
from pavjax.tasks import text as text_lib
from pavjax.tasks.text import TextTask

# Reasons a validated record is dropped once tokenized (lenient mode).
PROMPT_TOO_MANY_TOKENS = "prompt_too_many_tokens"
SOLUTION_TOO_MANY_TOKENS = "solution_too_many_tokens"
REFERENCE_NOT_CORRECT = "reference_not_correct"
TOKEN_FILTER_REASONS = (PROMPT_TOO_MANY_TOKENS, SOLUTION_TOO_MANY_TOKENS, REFERENCE_NOT_CORRECT)

# Bump when the prepared records or the validation summary change (a new fingerprint):
# 2 added skipped_lines, 3 the answer extraction's U+2212, 'the answer is' and unit words.
_PREPARE_VERSION = 3
# Bump when the trained tokenizer changes for the same data (a new cache key).
_TOKENIZER_VERSION = 1
# Always in the trained tokenizer: each printable ASCII character alone (so no such
# character of a test problem or of a model's answer is unknown), and the answer markers
# as single pieces.
TOKENIZER_COVERAGE = "".join(chr(c) for c in range(33, 127))
ANSWER_MARKERS = ("####", "\\boxed", "Answer:")
_MAX_TOKENIZER_LINES = 200_000  # sentencepiece trains on at most this many lines
# Limits left at 0 come from the data: the longest tokenized prompt (reference) of all
# splits times LENGTH_HEADROOM, rounded up to a multiple of LENGTH_MULTIPLE.
# 5/4: room for a model's response to run longer than the references.
LENGTH_HEADROOM = fractions.Fraction(5, 4)
LENGTH_MULTIPLE = 16
LENGTHS_FILE = "jsonl_math_lengths.json"  # derived lengths per tokenizer, next to the data


def derived_length(longest: int) -> int:
  """`ceil(1.25 * longest)` rounded up to a multiple of 16, in exact arithmetic: a limit
  with headroom over the longest sequence of the data (at least 16)."""
  with_headroom = math.ceil(LENGTH_HEADROOM * int(longest))
  return max(math.ceil(fractions.Fraction(with_headroom, LENGTH_MULTIPLE)), 1) * LENGTH_MULTIPLE


def default_config() -> ml_collections.ConfigDict:
  """The jsonl_math task's knobs (every field commented)."""
  cfg = ml_collections.ConfigDict()
  cfg.manual_dir = ""  # directory with train.jsonl, test.jsonl (+ optional validation.jsonl)
  cfg.data_dir = ""  # tfds data_dir for the prepared ArrayRecord files; '' = <cache_dir>/tfds
  cfg.cache_dir = ""  # where prepared data is cached ('' = the job's workdir; the pipeline shares one)
  cfg.format = "auto"  # record style: 'auto' (per record), 'gsm8k' or 'math'
  cfg.strict = True  # True: a bad line raises base.DataError; False: skip it and count it
  cfg.max_prompt_chars = 4000  # records whose question is longer (characters) are bad lines
  cfg.tokenizer_path = ""  # user-given SentencePiece .model file ('' = train one, cached)
  cfg.hf_tokenizer = ""  # Hugging Face checkpoint dir whose tokenizer to use instead ('' = off)
  cfg.sp_vocab_size = 4096  # target pieces of the trained tokenizer (soft; unused when given)
  # max prompt tokens (BOS and trailing newline included); 0 = from the data: the longest
  # prompt of all splits with headroom (`derived_length`: x1.25, up to a multiple of 16)
  cfg.max_prompt_len = 0
  # max response tokens, EOS included; 0 = from the data: the longest reference, likewise
  cfg.max_response_len = 0
  cfg.seed = 0  # seed of the train -> validation carve when validation.jsonl is absent
  cfg.val_fraction = 0.05  # fraction of train carved out as validation (if no validation.jsonl)
  cfg.grader = "math_verify"  # math_verify (symbolic, time-limited) | exact (normalised strings)
  cfg.grade_timeout_s = 2.0  # seconds the symbolic check of one answer may take; slower = wrong
  cfg.step_delimiter = "\n"  # text between steps: '\n' (GSM-style) or '\n\n' (MATH-style)
  return cfg


def fingerprint(manual_dir: str, *, fmt: str, strict: bool, max_prompt_chars: int, seed: int,
                val_fraction: float) -> str:
  """Short hash of the input files and options: names the prepared dataset config."""
  from pavjax.tasks import jsonl_builder  # pylint: disable=g-import-not-at-top
  h = hashlib.sha256()
  h.update(str(jsonl_builder.JsonlMath.VERSION).encode())
  h.update(f"prepare-{_PREPARE_VERSION}".encode())
  opts = dict(fmt=fmt, strict=bool(strict), max_prompt_chars=int(max_prompt_chars),
              seed=int(seed), val_fraction=float(val_fraction))
  h.update(json.dumps(opts, sort_keys=True).encode())
  for split, path in sorted(jsonl_reader.split_files(manual_dir).items()):
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
    fmt: see `jsonl_reader.validate_manual_dir` (as are the remaining options).
    strict: see `jsonl_reader.validate_manual_dir`.
    max_prompt_chars: see `jsonl_reader.validate_manual_dir`.
    seed: see `jsonl_reader.validate_manual_dir`.
    val_fraction: see `jsonl_reader.validate_manual_dir`.

  Returns:
    `(builder, summary)`: the prepared `jsonl_builder.JsonlMath` builder (read it with
    `builder.as_data_source()`), and the validation summary stored next to the data.
  """
  builder, _, summary, pending = validated_records(
      manual_dir, data_dir, fmt=fmt, strict=strict, max_prompt_chars=max_prompt_chars,
      seed=seed, val_fraction=val_fraction)
  write_prepared(builder, manual_dir, pending)
  return builder, summary


def validated_records(manual_dir: str, data_dir: str, **opts):
  """The records of the manual directory, validated, before anything is written.

  Prepared data (same fingerprint) is read back from its ArrayRecord files; otherwise
  the JSONL files are validated in memory (`jsonl_reader.validate_manual_dir`, which
  may raise) and nothing is written until `write_prepared`.

  Args:
    manual_dir: directory with the user's JSONL files.
    data_dir: tfds data_dir.
    **opts: fmt, strict, max_prompt_chars, seed, val_fraction (see `prepare`).

  Returns:
    `(builder, records, summary, pending)`: the builder, split -> records, the validation
    summary (as stored next to the data), and the validation result still to be written
    (None when the data was prepared already).
  """
  from pavjax.tasks import jsonl_builder  # pylint: disable=g-import-not-at-top
  builder = jsonl_builder.make_builder(data_dir, fingerprint(manual_dir, **opts), **opts)
  if builder.is_prepared():
    with open(os.path.join(builder.data_dir, jsonl_reader.SUMMARY_FILE)) as f:
      summary = json.load(f)
    return builder, {split: load_split(builder, split) for split in base.SPLITS}, summary, None
  result = jsonl_reader.validate_manual_dir(manual_dir, **opts)  # may raise: nothing written yet
  summary = jsonl_builder.stored_summary(result, builder.builder_config.name)
  return builder, result.records, summary, result


def write_prepared(builder, manual_dir: str, pending) -> None:
  """Writes the ArrayRecord files of a validation result (`validated_records`); None: no-op."""
  if pending is None:
    return
  from pavjax.tasks import jsonl_builder  # pylint: disable=g-import-not-at-top
  builder.prevalidated = pending
  jsonl_builder.download_and_prepare(builder, manual_dir)


def load_split(builder, split: str) -> list[dict[str, Any]]:
  """Records of one prepared split, via `builder.as_data_source` (no TensorFlow)."""
  from pavjax.tasks import jsonl_builder  # pylint: disable=g-import-not-at-top
  return jsonl_builder.read_split(builder, split)


def load_tokenizer(path: str, hf_path: str = ""):
  """The given tokenizer: the user's SentencePiece `.model` file, or a Hugging Face
  checkpoint's tokenizer when `hf_path` is set; None when neither is set (`make`
  then trains one on the data, see `trained_tokenizer`)."""
  if hf_path:
    if path:
      raise ValueError("config.task.tokenizer_path and config.task.hf_tokenizer are both set; "
                       "keep one")
    return hf_tokenizer.load_tokenizer(hf_path)
  if not path:
    return None
  if not os.path.isfile(path):
    raise ValueError(f"config.task.tokenizer_path={path!r} is not a file")
  return tokenizer_lib.SentencePieceTokenizer.load(path)


def trained_tokenizer_path(cache_root: str, data_fingerprint: str, vocab_size: int) -> str:
  """Where the tokenizer trained on the data with `data_fingerprint` is cached."""
  key = artifacts.content_hash({"data": data_fingerprint, "sp_vocab_size": int(vocab_size),
                                "markers": list(ANSWER_MARKERS),
                                "coverage": TOKENIZER_COVERAGE,
                                "_version": _TOKENIZER_VERSION}, length=12)
  return os.path.join(cache_root, "tokenizer", f"jsonl_math_{key}.model")


def tokenizer_corpus(problems: Sequence[base.Problem]):
  """Training lines: each coverage character alone, then every line of the problems'
  questions and reference steps."""
  yield from TOKENIZER_COVERAGE
  for problem in problems:
    for text in (problem.prompt, *problem.steps):
      yield from (line for line in text.split("\n") if line.strip())


def trained_tokenizer(path: str, train_problems: Sequence[base.Problem], vocab_size: int
                      ) -> tuple[tokenizer_lib.SentencePieceTokenizer, bool]:
  """The tokenizer cached at `path`, or one trained on `train_problems` and written there.

  Returns:
    The tokenizer, and whether it came from the cache.
  """
  if vocab_size < 1:
    raise ValueError(f"config.task.sp_vocab_size={vocab_size} must be positive")
  return tokenizer_lib.load_or_train_sentencepiece(
      path, lambda: tokenizer_corpus(train_problems), vocab_size,
      max_sentences=_MAX_TOKENIZER_LINES,
      extra_options=dict(user_defined_symbols=[tokenizer_lib.NL_PIECE, *ANSWER_MARKERS]))


# ----------------------------------------------------------------------------
# The task.
# ----------------------------------------------------------------------------


class JsonlMathTask(TextTask):
  """User-provided GSM8K / MATH style problems (see the module docstring)."""

  name = "jsonl_math"

  def __init__(self, splits: Mapping[str, Sequence[base.Problem]],
               tokenizer, max_prompt_len: int,
               max_response_len: int, strict: bool = True,
               grader: str = grading.DEFAULT_GRADER,
               grade_timeout_s: float = grading.DEFAULT_TIMEOUT_S,
               step_delimiter: str = "\n", sources: Mapping[str, str] | None = None):
    """Builds the task, checking every problem against the token limits.

    Args:
      splits: split name -> problems.
      tokenizer: the task's tokenizer.
      max_prompt_len: max prompt tokens.
      max_response_len: max response tokens (EOS included).
      strict: raise on a problem over a limit (or whose reference is not judged
        correct) instead of dropping it and counting it in `token_filter_counts`.
      grader: how answers are compared: 'math_verify' or 'exact' (`pavjax.tasks.grading`).
      grade_timeout_s: the most seconds one symbolic answer check may take.
      step_delimiter: the text between steps, in references and in what a model writes
        (`pavjax.step_boundary`): '\n', or '\n\n' for blank-line separated steps.
      sources: problem uid -> `<path>:<line>` of its record, named by the errors and
        by `token_filter_lines`; problems without one are named by uid and split.

    Raises:
      base.DataError: in strict mode, the first problem over a limit (or whose
        reference is not judged correct); in either mode, a split left empty.
    """
    text_lib.check_step_delimiter("jsonl_math", step_delimiter)
    self.step_delimiter = step_delimiter
    grading.validate(grader, grade_timeout_s)
    grading.check_available(grader)
    self.grader = grader
    self.grade_timeout_s = float(grade_timeout_s)
    self.tokenizer = tokenizer
    self.pad_id = tokenizer.pad_id  # 0 for SentencePiece; a pretrained vocabulary's own
    for field, value in (("max_prompt_len", max_prompt_len),
                         ("max_response_len", max_response_len)):
      if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        from pavjax import config_lib  # pylint: disable=g-import-not-at-top  (imports tasks)
        raise config_lib.ConfigError(f"task.{field}", f"{value!r} must be an int >= 0 "
                                     "(0 = from the data)")
    # One pass of the tokenizer over every problem: the limits left at 0 are derived from
    # these lengths, then every problem is checked against the limits.
    encoded = {split: [(problem, len(self.encode_prompt(problem)),
                        self.encode_solution(problem)) for problem in splits.get(split, ())]
               for split in base.SPLITS}
    self.longest_prompt = max((n for rows in encoded.values() for _, n, _ in rows), default=0)
    self.longest_solution = max((len(sol) for rows in encoded.values() for _, _, sol in rows),
                                default=0)
    # The limits that came from the data (config value 0), not from the user.
    self.derived_limits = tuple(name for name, value in (("max_prompt_len", max_prompt_len),
                                                         ("max_response_len", max_response_len))
                                if value == 0)
    self._max_prompt_len = int(max_prompt_len) or derived_length(self.longest_prompt)
    self._max_response_len = int(max_response_len) or derived_length(self.longest_solution)
    self.token_filter_counts = {reason: 0 for reason in TOKEN_FILTER_REASONS}
    # reason -> `file:line` (or `split/uid`) of the first dropped problems, capped like the
    # validation summary's skipped_lines.
    self.token_filter_lines: dict[str, list[str]] = {r: [] for r in TOKEN_FILTER_REASONS}
    self.validation_summary: dict = {}  # set by make(): the JSONL validation pass's counts
    self.tokenizer_path: str | None = None  # set by make(): the trained tokenizer's file
    self.tokenizer_cached = False  # set by make(): the trained tokenizer came from the cache
    sources = sources or {}
    self._splits = {}
    for split in base.SPLITS:
      kept = []
      for problem, n_prompt, solution in encoded[split]:
        reason, detail = self._check(problem, n_prompt, solution)
        if reason:
          where = sources.get(problem.uid)
          if strict:
            if where is None:
              raise base.DataError(f"jsonl_math problem {problem.uid!r} ({split}): {reason}: "
                                   f"{detail}")
            raise base.DataError(f"{where}: {reason}: {detail} (id {problem.uid!r})")
          self.token_filter_counts[reason] += 1
          if len(self.token_filter_lines[reason]) < jsonl_reader.SKIPPED_LINES_CAP:
            self.token_filter_lines[reason].append(
                os.path.basename(where) if where else f"{split}/{problem.uid}")
          continue
        kept.append(problem)
      if not kept:
        raise base.DataError(f"jsonl_math split {split!r} has no problem within the token "
                             f"limits (dropped per reason: {self.token_filter_counts})")
      self._splits[split] = kept
    if any(self.token_filter_counts.values()):
      logging.warning("jsonl_math: dropped problems: %s", self.token_filter_counts)

  def _check(self, problem: base.Problem, n_prompt: int, solution: list[int]
             ) -> tuple[str, str]:
    if n_prompt > self._max_prompt_len:
      return PROMPT_TOO_MANY_TOKENS, (
          f"prompt has {n_prompt} tokens > max_prompt_len={self._max_prompt_len}; raise "
          "config.task.max_prompt_len, or set it to 0 to derive it from the data")
    if len(solution) > self._max_response_len:
      return SOLUTION_TOO_MANY_TOKENS, (
          f"reference has {len(solution)} tokens > max_response_len={self._max_response_len}; "
          "raise config.task.max_response_len, or set it to 0 to derive it from the data")
    outcome = self.is_correct(solution, problem)
    if outcome.reason != base.CORRECT:
      return REFERENCE_NOT_CORRECT, (
          f"the tokenized reference is judged {outcome.reason!r} (answer {problem.answer!r}); "
          "the tokenizer likely loses characters of the answer")
    return "", ""

  def decode(self, tokens: Sequence[int]) -> str:
    """Text of the tokens before EOS, with `</s>` marking EOS when present."""
    body, has_eos = base.response_until_eos(tokens, self.eos_id)
    return self.tokenizer.decode(body) + ("</s>" if has_eos else "")

  def token_lengths(self) -> dict:
    """The longest tokenized prompt and reference over all splits, the limits in use, and
    which of them were derived from those lengths (`derived_length`)."""
    return {"longest_prompt": self.longest_prompt, "longest_solution": self.longest_solution,
            "max_prompt_len": self._max_prompt_len, "max_response_len": self._max_response_len,
            "derived": list(self.derived_limits), "headroom": float(LENGTH_HEADROOM),
            "multiple": LENGTH_MULTIPLE}

  def data_report(self) -> dict:
    """Bad-line counts from validating the JSONL files, problems dropped for token limits,
    and the token lengths (`token_lengths`)."""
    return {"jsonl_validation": self.validation_summary,
            "token_filter_counts": dict(self.token_filter_counts),
            "token_filter_lines": {k: list(v) for k, v in self.token_filter_lines.items()},
            "token_lengths": self.token_lengths()}

  def is_correct(self, response: Sequence[int], problem: base.Problem) -> base.Outcome:
    """Outcome of a response: its final answer (`answers.extract_final_answer`) vs the
    reference, compared by the task's grader (`grading.answers_equivalent`)."""
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
    answer, reason = answers.extract_final_answer(text)
    if reason:
      return base.Outcome(0.0, reason)
    ok = grading.answers_equivalent(problem.answer, answer, grader=self.grader,
                                    timeout_s=self.grade_timeout_s)
    return base.Outcome(float(ok), base.CORRECT if ok else base.WRONG)


  def answer_key(self, response: Sequence[int]) -> str | None:
    """The normalized final answer of the response, or None."""
    body, _ = base.response_until_eos(response, self.eos_id)
    return answers.extract_final_answer(self.tokenizer.decode(body))[0]


def _tokenizer_key(task_cfg: ml_collections.ConfigDict, trained_path: str | None) -> str:
  """Names the tokenizer whose lengths `record_lengths` keeps: a trained model by its
  cache name, a given SentencePiece file by a hash of its bytes, an HF tokenizer by its
  directory."""
  if trained_path:
    return f"trained:{os.path.basename(trained_path)}"
  hf_dir = task_cfg.get("hf_tokenizer", "")
  if hf_dir:
    return f"hf:{os.path.abspath(hf_dir)}"
  with open(task_cfg.tokenizer_path, "rb") as f:
    return f"sentencepiece:{hashlib.sha256(f.read()).hexdigest()[:16]}"


def record_lengths(prepared_dir: str, tokenizer_key: str, step_delimiter: str,
                   task: JsonlMathTask) -> dict:
  """Keeps the data's token lengths next to the prepared data, per tokenizer.

  `<prepared_dir>/jsonl_math_lengths.json` maps `<tokenizer> step_delimiter=<json>` to
  the longest tokenized prompt and reference over all splits and the limits derived
  from them (`derived_length`), whatever the config set: a property of the data and
  its tokenizer, the same for every stage that reads it. Returns that entry.
  """
  entry = {"longest_prompt": task.longest_prompt, "longest_solution": task.longest_solution,
           "derived_max_prompt_len": derived_length(task.longest_prompt),
           "derived_max_response_len": derived_length(task.longest_solution)}
  key = f"{tokenizer_key} step_delimiter={json.dumps(step_delimiter)}"
  path = os.path.join(prepared_dir, LENGTHS_FILE)
  kept = artifacts.read_json(path) or {}
  if kept.get(key) != entry:
    if key in kept:  # the same data and tokenizer gave other lengths: should not happen
      logging.warning("jsonl_math: %s: lengths for %s were %s, now %s", path, key, kept[key],
                      entry)
    artifacts.write_json(path, {**kept, key: entry})
  return entry


def problems_from_records(records: Sequence[Mapping[str, Any]]) -> list[base.Problem]:
  """Problems of prepared records (as returned by `load_split`)."""
  return [base.Problem(uid=r["uid"], prompt=r["question"], steps=tuple(r["steps"]),
                       answer=r["answer"]) for r in records]


def make(task_cfg: ml_collections.ConfigDict, workdir: str | None = None) -> JsonlMathTask:
  """Validates and prepares the user's data (once), loads or trains the tokenizer, builds the
  task."""
  data_dir = task_cfg.data_dir
  if not data_dir:
    if not workdir:
      raise ValueError("jsonl_math needs config.task.data_dir or a workdir (data_dir='' means "
                       "<workdir>/tfds)")
    data_dir = os.path.join(workdir, "tfds")
  grader = task_cfg.get("grader", grading.DEFAULT_GRADER)  # configs older than the fields
  grade_timeout_s = task_cfg.get("grade_timeout_s", grading.DEFAULT_TIMEOUT_S)
  grading.validate(grader, grade_timeout_s)  # fail fast, before any data is prepared
  grading.check_available(grader)
  step_delimiter = task_cfg.get("step_delimiter", "\n")
  text_lib.check_step_delimiter("jsonl_math", step_delimiter)
  tokenizer = load_tokenizer(task_cfg.tokenizer_path,  # fail fast on a bad path
                             task_cfg.get("hf_tokenizer", ""))
  vocab_size = task_cfg.get("sp_vocab_size", 4096)
  if tokenizer is None and vocab_size < 1:
    raise ValueError(f"config.task.sp_vocab_size={vocab_size} must be positive")
  # Validate the records, build the tokenizer and check every problem against the token
  # limits before any ArrayRecord file is written: bad data stops the run with nothing
  # half-prepared (the trained tokenizer is cached; it depends on the data only).
  builder, records, summary, pending = validated_records(
      task_cfg.manual_dir, data_dir, fmt=task_cfg.format, strict=task_cfg.strict,
      max_prompt_chars=task_cfg.max_prompt_chars, seed=task_cfg.seed,
      val_fraction=task_cfg.val_fraction)
  splits = {split: problems_from_records(records[split]) for split in base.SPLITS}
  sources = {r["uid"]: os.path.join(task_cfg.manual_dir, r["source"])
             for recs in records.values() for r in recs}
  sp_path, cached = None, False
  if tokenizer is None:  # none given: train one on the train split (cached per data)
    sp_path = trained_tokenizer_path(workdir or data_dir, builder.builder_config.name,
                                     vocab_size)
    tokenizer, cached = trained_tokenizer(sp_path, splits["train"], vocab_size)
    logging.info("jsonl_math: %s tokenizer %s (%d ids)", "cached" if cached else "trained",
                 sp_path, tokenizer.vocab_size)
  task = JsonlMathTask(splits, tokenizer, task_cfg.max_prompt_len, task_cfg.max_response_len,
                       strict=task_cfg.strict, grader=grader, grade_timeout_s=grade_timeout_s,
                       step_delimiter=step_delimiter, sources=sources)
  write_prepared(builder, task_cfg.manual_dir, pending)
  task.validation_summary = summary
  task.tokenizer_path, task.tokenizer_cached = sp_path, cached
  record_lengths(builder.data_dir, _tokenizer_key(task_cfg, sp_path), step_delimiter, task)
  return task
