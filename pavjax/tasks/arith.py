"""Synthetic multi-step arithmetic in text: one computed quantity per line.

A problem gives a few quantities (some of them distractors, not needed for the
answer), defines new quantities from them, and asks for the last one:

  prompt:    c=7, q=12, h=9, k=3, u=5, r=14. x=c*k, m=x+q, b=m-u, w=b*k. find w.
  response:  x=c*k=7*3=21
             m=x+q=21+12=33
             b=m-u=33-5=28
             w=b*k=28*3=84
             answer: 84

Each solution line computes exactly one new quantity from earlier ones (the
definition, the operand values, the result); the last line is the final answer.
Step i always uses the result of step i-1, so every step is needed; its other
operand is a fresh given or, with probability `reuse_prob`, an earlier quantity.
Operators are drawn uniformly from those (`ops`, with the operand order) whose
result stays in [0, max_value]: no negative numbers, no modulus.

Default difficulty (`default_config()`): 3 computed quantities from givens in
[1, 20], ops `+-*`, every value in [0, 99] (so products such as 7*13=91), one
distractor given, random variable letters. Prompts are at most 48 tokens and
responses 64 with the default tokenizer. Most of a small model's errors are
look-ups (binding a letter to its value), not the arithmetic itself; the SFT
accuracy measured on this default is in the README (Tasks).
`DIFFICULTIES['easy']` is a CPU-sized variant (see there).
Difficulty scales with `num_steps`, `max_operand`, `max_value`, `ops`,
`num_distractors` and `shuffle_definitions`.

Splits: problems are generated from one seeded stream and de-duplicated on their
structure (given values and definitions with variables renamed by order of
appearance); the first `num_eval` unique problems are validation, the next
`num_eval` test, the next `num_train` train. So splits are disjoint by
construction, deterministic per seed, and validation/test do not depend on
`num_train`.

Tokens (see pavjax.tasks.tokenizer): 0 pad, 1 unk, 2 BOS, 3 EOS, 4 newline (the
step delimiter), then sentencepiece pieces (BPE trained on the train corpus with
split digits, cached at `workdir/tokenizer/arith_<config hash>.model`) or fixed
characters (`tokenizer='char'`). With `hf_tokenizer` set, a pretrained checkpoint's
tokenizer replaces both (its own ids, pad and EOS; see pavjax.tasks.hf_tokenizer).
Prompt = BOS, prompt text, newline; response = the solution lines joined by
newline, then EOS.
"""

from __future__ import annotations

import random
import re
import string
import tempfile
import types
from typing import Sequence

import ml_collections
import numpy as np

from pavjax import artifacts
from pavjax.tasks import answers
from pavjax.tasks import base
from pavjax.tasks import hf_tokenizer
from pavjax.tasks import tokenizer as tokenizer_lib
from pavjax.tasks import text as text_lib
from pavjax.tasks.text import TextTask

_OPS = "+-*"
_LETTERS = string.ascii_lowercase
# Characters the task's text uses (also fed to sentencepiece so every one is covered).
CHARSET = " " + _LETTERS + string.digits + "=+-*,.:"
ANSWER_RE = re.compile(r"-?[0-9]{1,12}")  # the only answers compared at all
_TOKENIZER_VERSION = 1  # bump when the tokenizer training changes (new cache key)
_TEMP_WORKDIR: str | None = None


# Named difficulties: overrides of default_config(). `easy` is sized for CPU runs: with
# one-digit givens, + and - only and no distractor, the 0.8M-parameter `tiny` model
# reaches ~27% greedy accuracy after 800 SFT steps (4 min on 2 CPU cores), where the
# default difficulty leaves it at 4-9% after 1000-1500 steps: too few correct samples
# for verifiers or RL to learn from. The errors left are the same kind (binding a
# letter to the wrong value at some step), so process verifiers have work to do.
DIFFICULTIES = {
    "default": {},
    "easy": dict(ops="+-", max_operand=9, max_value=50, num_distractors=0),
}


def difficulty(name: str) -> dict:
  """Field overrides of the named difficulty (see DIFFICULTIES)."""
  if name not in DIFFICULTIES:
    raise ValueError(f"unknown arith difficulty {name!r}; known: {sorted(DIFFICULTIES)}")
  return dict(DIFFICULTIES[name])


def default_config() -> ml_collections.ConfigDict:
  """Knobs of the arith task (every field commented)."""
  cfg = ml_collections.ConfigDict()
  cfg.num_steps = 3  # computed quantities (solution lines before the answer line)
  cfg.max_operand = 20  # given quantities are uniform in [1, max_operand]
  cfg.max_value = 99  # every computed quantity stays in [0, max_value]
  cfg.ops = "+-*"  # operators steps may use (subset of '+-*')
  cfg.reuse_prob = 0.3  # chance a step's 2nd operand is an earlier quantity, not a fresh given
  cfg.num_distractors = 1  # extra given quantities not needed for the answer
  cfg.shuffle_definitions = False  # list definitions in random order (solver must order them)
  cfg.show_values = True  # lines spell out operand values "d=a*b=7*3=21" (else "d=a*b=21")
  cfg.num_train = 20000  # problems in the train split
  cfg.num_eval = 500  # problems in each of validation and test
  cfg.seed = 0  # generator seed (problems, splits and hence the tokenizer)
  cfg.tokenizer = "sentencepiece"  # 'sentencepiece' (BPE, trained and cached) or 'char'
  cfg.sp_vocab_size = 128  # sentencepiece target vocab (soft limit; tiny corpora give fewer)
  cfg.max_prompt_len = 0  # prompt budget in tokens (BOS and newline included); 0 = longest prompt
  cfg.max_response_len = 0  # response budget in tokens, EOS included; 0 = auto (see ArithTask)
  cfg.cache_dir = ""  # where the tokenizer is cached ('' = the job's workdir; the pipeline shares one)
  cfg.hf_tokenizer = ""  # Hugging Face checkpoint dir whose tokenizer replaces arith's ('' = own)
  cfg.step_delimiter = "\n"  # text between steps (on a command line: $'\n\n' for blank lines)
  return cfg


def _apply(op: str, x: int, y: int) -> int:
  if op == "+":
    return x + y
  if op == "-":
    return x - y
  if op == "*":
    return x * y
  raise ValueError(f"unknown op {op!r}")


def _validate(cfg: ml_collections.ConfigDict) -> None:
  if cfg.num_steps < 1:
    raise ValueError(f"arith: num_steps={cfg.num_steps} must be >= 1")
  if cfg.max_operand < 1 or cfg.max_value < cfg.max_operand:
    raise ValueError(f"arith: need 1 <= max_operand ({cfg.max_operand}) <= max_value "
                     f"({cfg.max_value})")
  if not cfg.ops or set(cfg.ops) - set(_OPS) or len(set(cfg.ops)) != len(cfg.ops):
    raise ValueError(f"arith: ops={cfg.ops!r} must be distinct characters of {_OPS!r}")
  if not 0.0 <= cfg.reuse_prob <= 1.0:
    raise ValueError(f"arith: reuse_prob={cfg.reuse_prob} must be in [0, 1]")
  most_vars = 2 * cfg.num_steps + 1 + cfg.num_distractors
  if cfg.num_distractors < 0 or most_vars > len(_LETTERS):
    raise ValueError(f"arith: num_steps={cfg.num_steps} and num_distractors="
                     f"{cfg.num_distractors} may need {most_vars} variables; only 26 letters")
  if cfg.num_train < 1 or cfg.num_eval < 1:
    raise ValueError("arith: num_train and num_eval must be >= 1")
  if cfg.tokenizer not in ("sentencepiece", "char"):
    raise ValueError(f"arith: tokenizer={cfg.tokenizer!r} must be 'sentencepiece' or 'char'")
  text_lib.check_step_delimiter("arith", cfg.get("step_delimiter", "\n"))


def _generate_one(rng: random.Random, cfg: types.SimpleNamespace):
  """One problem as (prompt, steps, answer, dedupe key), or None to retry."""
  givens: list[int] = []
  steps: list[tuple[tuple[str, int], str, tuple[str, int], int]] = []  # (x, op, y, value)

  def value(ref):
    return givens[ref[1]] if ref[0] == "g" else steps[ref[1]][3]

  def fresh_given():
    givens.append(rng.randint(1, cfg.max_operand))
    return ("g", len(givens) - 1)

  for i in range(cfg.num_steps):
    p = ("s", i - 1) if i else fresh_given()
    earlier = [("g", j) for j in range(len(givens)) if ("g", j) != p] + [
        ("s", j) for j in range(i - 1)]
    if earlier and rng.random() < cfg.reuse_prob:
      q = rng.choice(earlier)
    else:
      q = fresh_given()
    ops = list(cfg.ops)
    rng.shuffle(ops)
    for op in ops:
      orders = [(a, b) for a, b in ((p, q), (q, p))
                if 0 <= _apply(op, value(a), value(b)) <= cfg.max_value]
      if orders:
        break
    else:
      return None
    x, y = rng.choice(orders)
    steps.append((x, op, y, _apply(op, value(x), value(y))))

  for _ in range(cfg.num_distractors):
    fresh_given()
  names = rng.sample(_LETTERS, len(givens) + len(steps))
  name = {("g", j): names[j] for j in range(len(givens))}
  name.update({("s", j): names[len(givens) + j] for j in range(len(steps))})
  given_order = list(range(len(givens)))
  rng.shuffle(given_order)
  def_order = list(range(len(steps)))
  if cfg.shuffle_definitions:
    rng.shuffle(def_order)

  givens_txt = ", ".join(f"{name[('g', j)]}={givens[j]}" for j in given_order)
  defs_txt = ", ".join(f"{name[('s', j)]}={name[steps[j][0]]}{steps[j][1]}{name[steps[j][2]]}"
                       for j in def_order)
  target = name[("s", len(steps) - 1)]
  prompt = f"{givens_txt}. {defs_txt}. find {target}."

  lines = []
  for j, (x, op, y, v) in enumerate(steps):
    line = f"{name[('s', j)]}={name[x]}{op}{name[y]}="
    if cfg.show_values:
      line += f"{value(x)}{op}{value(y)}="
    lines.append(line + str(v))
  answer = str(steps[-1][3])
  lines.append(f"answer: {answer}")

  # Dedupe key: values in prompt order, definitions with variables numbered by
  # their first appearance in the prompt (givens first, then definitions).
  pos = {("g", j): k for k, j in enumerate(given_order)}
  pos.update({("s", j): len(givens) + k for k, j in enumerate(def_order)})
  key = (tuple(givens[j] for j in given_order),
         tuple((pos[("s", j)], pos[steps[j][0]], steps[j][1], pos[steps[j][2]])
               for j in def_order))
  return prompt, tuple(lines), answer, key


def generate_splits(cfg: ml_collections.ConfigDict) -> dict[str, list[base.Problem]]:
  """Deterministic, disjoint train/validation/test problems for `cfg` (module docstring)."""
  _validate(cfg)
  cfg = types.SimpleNamespace(**cfg.to_dict())  # ConfigDict attribute access is slow
  rng = random.Random(f"arith-{cfg.seed}")
  sizes = {"validation": cfg.num_eval, "test": cfg.num_eval, "train": cfg.num_train}
  total = sum(sizes.values())
  seen, raw = set(), []
  attempts, max_attempts = 0, 20 * total + 1000
  while len(raw) < total:
    attempts += 1
    if attempts > max_attempts:
      raise ValueError(f"arith: only {len(raw)} distinct problems after {max_attempts} tries "
                       f"(need {total}); widen max_operand/num_steps or lower num_train/num_eval")
    out = _generate_one(rng, cfg)
    if out is None or out[3] in seen:
      continue
    seen.add(out[3])
    raw.append(out)
  splits, start = {}, 0
  for split, size in sizes.items():
    splits[split] = [
        base.Problem(uid=f"arith-{split}-{k:05d}", prompt=prompt, steps=lines, answer=answer)
        for k, (prompt, lines, answer, _) in enumerate(raw[start:start + size])]
    start += size
  return splits


def _temp_workdir() -> str:
  global _TEMP_WORKDIR
  if _TEMP_WORKDIR is None:
    _TEMP_WORKDIR = tempfile.mkdtemp(prefix="pavjax_arith_")
  return _TEMP_WORKDIR


def tokenizer_path(cfg: ml_collections.ConfigDict, workdir: str | None) -> str:
  """Where the sentencepiece model for `cfg` is cached."""
  fields = {k: v for k, v in cfg.to_dict().items()
            if k not in ("name", "tokenizer", "max_prompt_len", "max_response_len", "cache_dir",
                         "hf_tokenizer", "step_delimiter")}
  fields["_version"] = _TOKENIZER_VERSION
  root = workdir if workdir is not None else _temp_workdir()
  return f"{root}/tokenizer/arith_{artifacts.content_hash(fields, length=12)}.model"


class ArithTask(TextTask):
  """Multi-step arithmetic in text (see module docstring)."""

  name = "arith"

  def __init__(self, cfg: ml_collections.ConfigDict, workdir: str | None = None):
    """Generates the splits and builds (or loads) the tokenizer.

    Args:
      cfg: a config with `default_config()`'s fields.
      workdir: where the sentencepiece model is cached (a temp dir if None).
    """
    self.cfg = cfg
    self.step_delimiter = cfg.get("step_delimiter", "\n")
    self._splits = generate_splits(cfg)
    self.tokenizer_cached = False
    self.tokenizer_path = None
    if cfg.hf_tokenizer:
      self.tokenizer = hf_tokenizer.load_tokenizer(cfg.hf_tokenizer)
      # A pretrained vocabulary uses id 0 for real text: pad with the tokenizer's pad id.
      self.pad_id = self.tokenizer.pad_id
    elif cfg.tokenizer == "char":
      self.tokenizer = tokenizer_lib.CharTokenizer(CHARSET)
    else:
      self.tokenizer_path = tokenizer_path(cfg, workdir)
      self.tokenizer, self.tokenizer_cached = tokenizer_lib.load_or_train_sentencepiece(
          self.tokenizer_path, self._corpus, cfg.sp_vocab_size)
    problems = [p for split in base.SPLITS for p in self._splits[split]]
    longest_prompt = max(len(self.encode_prompt(p)) for p in problems)
    longest_solution = max(len(self.encode_solution(p)) for p in problems)
    self.longest_solution = longest_solution
    self._max_prompt_len = cfg.max_prompt_len or longest_prompt
    if self._max_prompt_len < longest_prompt:
      raise ValueError(f"arith: max_prompt_len={cfg.max_prompt_len} but a prompt has "
                       f"{longest_prompt} tokens")
    # Auto budget: 1.25x the longest reference (room for a wordier policy), to a multiple of 8.
    auto = -(-(longest_solution * 5 // 4 + 1) // 8) * 8
    self._max_response_len = cfg.max_response_len or auto
    if self._max_response_len < longest_solution:
      raise ValueError(f"arith: max_response_len={cfg.max_response_len} but a reference "
                       f"solution has {longest_solution} tokens")

  def _corpus(self):
    """Training text for sentencepiece: each character alone (coverage), then train text."""
    yield from CHARSET.strip()
    for p in self._splits["train"]:
      yield p.prompt
      yield from p.steps

  @property
  def bos_id(self) -> int:
    """Token that starts every prompt."""
    return self.tokenizer.bos_id

  def decode(self, tokens: Sequence[int]) -> str:
    return self.tokenizer.decode([int(t) for t in tokens])

  def step_texts(self, response: Sequence[int]) -> list[str]:
    """Text of each step of a response: its text up to EOS, split at the delimiter.

    One per `segment_steps` span: a boundary token that carries text past the
    delimiter (a pretrained tokenizer's "\nanswer:") gives that text to the next
    step here, where the token spans keep it in the step it ends.
    """
    ids = np.asarray(response).reshape(-1).tolist()
    body = ids[:ids.index(self.eos_id)] if self.eos_id in ids else ids
    text = self.tokenizer.decode([t for t in body if t != self.pad_id])
    parts = text.split(self.step_delimiter)
    if len(parts) > 1 and not parts[-1]:
      parts.pop()  # the text ends with a delimiter: no step after it
    return parts if text else []

  def is_correct(self, response: Sequence[int], problem: base.Problem) -> base.Outcome:
    """Outcome of a response; decodes on the host, never evaluates its text.

    Reasons: truncated (no EOS), too_long (EOS after `max_response_len` tokens),
    empty, no_answer (no "answer:" line), multiple_answers, then wrong/correct on
    the answer, which must be a 1-12 digit integer.

    Args:
      response: token ids, padding allowed after EOS.
      problem: the problem the response answers.

    Returns:
      The outcome reward and its reason.
    """
    ids = np.asarray(response).reshape(-1).tolist()
    try:
      eos = ids.index(self.eos_id)
    except ValueError:
      return base.Outcome(0.0, base.TRUNCATED)
    if eos + 1 > self.max_response_len:
      return base.Outcome(0.0, base.TOO_LONG)
    body = [t for t in ids[:eos] if t != self.pad_id]
    if not body:
      return base.Outcome(0.0, base.EMPTY)
    text = self.tokenizer.decode(body)
    return answers.grade_text(text, problem.answer, max_chars=64 * self.max_response_len,
                              answer_re=ANSWER_RE)


  def step_prover(self, p: float) -> StepProver:
    """The exact procedural prover with per-line accuracy `p` (see StepProver)."""
    return StepProver(p)

  def procedural_prover(self, prover_cfg) -> base.PrefixValues:
    """StepProver(`prover_cfg.step_accuracy`) over each response's lines."""
    mu = self.step_prover(prover_cfg.step_accuracy)

    def values(problems, responses, width):
      return np.stack([mu.line_values(p, self.step_texts(r), width)
                       for p, r in zip(problems, responses)])
    return values

  def answer_key(self, response: Sequence[int]) -> str | None:
    """The canonical number on the response's answer line, or None."""
    body, _ = base.response_until_eos([int(t) for t in np.asarray(response).reshape(-1)],
                                      self.eos_id)
    text = self.tokenizer.decode([t for t in body if t != self.pad_id])
    parsed = answers.parse_final_answer(text, max_chars=64 * self.max_response_len)
    if parsed.answer is None or not ANSWER_RE.fullmatch(parsed.answer):
      return None
    return answers.normalize_number(parsed.answer)


class StepProver:
  """An exact procedural prover mu for arith (the analogue of planted's mu_gamma).

  From a prefix whose lines all equal the reference solution's, mu writes each
  remaining line (the answer line included) correctly with probability `p`, and a
  line it gets wrong is never repaired. So, for a problem whose reference has L
  lines, the exact value after h response lines is

    Q^mu(prefix_h) = p ** (L - h)   if the h lines equal the reference's first h,
                     0              otherwise,

  so A^mu of line h is p^(L-h) (1 - p) > 0 when it is right, -p^(L-h+1) when it is
  the first wrong line, and 0 after that: an exact process reward, for testing RL
  apart from how well a learned verifier ranks steps. With p = 1 a right line
  earns 0 and the first wrong one -1. These are the values of unfinished
  prefixes; after a response's EOS its value is its outcome (the RL job's
  `Prover` sets that column), since nothing is left for mu to write.
  """

  def __init__(self, p: float):
    if not 0.0 < p <= 1.0:
      raise ValueError(f"step prover accuracy must be in (0, 1], got {p}")
    self.p = float(p)

  def line_values(self, problem: base.Problem, lines: Sequence[str], width: int) -> np.ndarray:
    """[width] Q^mu after 0, 1, ... lines of `lines` (0 past the response's last line)."""
    ref = [line.strip() for line in problem.steps]
    out = np.zeros(width, np.float64)
    for h in range(min(len(lines), width - 1) + 1):
      if h > 0 and (h > len(ref) or lines[h - 1].strip() != ref[h - 1]):
        break  # a wrong (or surplus) line: every longer prefix is worth 0 too
      out[h] = self.p ** (len(ref) - h)
    return out


def make(task_cfg: ml_collections.ConfigDict, workdir: str | None = None) -> ArithTask:
  """Builds the task from `task_cfg` (missing fields take `default_config()` values)."""
  cfg = default_config()
  for key, val in task_cfg.items():
    if key == "name":
      continue
    if key not in cfg:
      raise ValueError(f"arith: unknown config field {key!r}; known: {sorted(cfg.keys())}")
    cfg[key] = val
  return ArithTask(cfg, workdir)
