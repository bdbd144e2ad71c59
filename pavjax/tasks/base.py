"""The Task protocol every job uses.

A task owns its problems, its tokenizer and its outcome reward. Jobs only see
token ids, the step-ending tokens and `is_correct`; everything that needs strings
(answer checking, step segmentation) runs on the host, between jitted steps.

Token conventions shared by all tasks: `pad_id` (0 unless the task's tokenizer says
otherwise) is padding; `eos_id` ends a response; a response is a list of steps, each
ending where `step_boundary` says (or at EOS): for most tasks at one of
`step_end_ids`, for text from a pretrained tokenizer where the token text completes
the step delimiter (`pavjax.step_boundary`).
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Callable, Sequence

import numpy as np

from pavjax import step_boundary as step_boundary_lib

SPLITS = ("train", "validation", "test")

# Outcome reasons. `correct` is the only one with reward 1.
CORRECT = "correct"
WRONG = "wrong"
EMPTY = "empty"
NO_ANSWER = "no_answer"
TRUNCATED = "truncated"
MULTIPLE_ANSWERS = "multiple_answers"
TOO_LONG = "too_long"
REASONS = (CORRECT, WRONG, EMPTY, NO_ANSWER, TRUNCATED, MULTIPLE_ANSWERS, TOO_LONG)


class DataError(ValueError):
  """The task's data is unusable: a bad line, a missing or empty file, a problem over
  the token limits. The message is one line, `<file>:<line>: <reason>: <detail>` when
  a line is to blame; `python -m pavjax.main` prints it as `pavjax: bad data: ...`
  and exits with code 2."""


@dataclasses.dataclass(frozen=True)
class Problem:
  """One problem: its prompt, reference solution steps and final answer."""

  uid: str
  prompt: str | tuple[int, ...]  # text, or token ids for token-level tasks
  steps: tuple[str, ...] | tuple[tuple[int, ...], ...]  # reference solution, one entry per step
  answer: str


@dataclasses.dataclass(frozen=True)
class Outcome:
  """The outcome reward Rex of a response, with the reason it got that reward."""

  reward: float
  reason: str

  def __post_init__(self):
    if self.reason not in REASONS:
      raise ValueError(f"unknown outcome reason {self.reason!r}; known: {REASONS}")


# (problems, responses, width) -> [B, width] Q^mu of each response's prefixes.
PrefixValues = Callable[[Sequence[Problem], Sequence[Sequence[int]], int], np.ndarray]


class Task(abc.ABC):
  """A problem source with a tokenizer and an outcome reward."""

  name: str = ""
  pad_id: int = 0

  @property
  @abc.abstractmethod
  def vocab_size(self) -> int:
    """Number of token ids the model must cover."""

  @property
  @abc.abstractmethod
  def eos_id(self) -> int:
    """Token that ends a response."""

  @property
  @abc.abstractmethod
  def step_end_ids(self) -> tuple[int, ...]:
    """Tokens that end a step (the step delimiter); sampling for step-wise search stops on them."""

  @property
  def action_ids(self) -> tuple[int, ...] | None:
    """Ids a response may hold, when the task's action vocabulary is smaller than
    `vocab_size` (pad and prompt-only ids excluded); None: any id. A policy that
    honours it (the MADE, `MadeConfig.action_ids`) never samples the others."""
    return None

  @property
  @abc.abstractmethod
  def max_prompt_len(self) -> int:
    """Upper bound on `len(encode_prompt(p))` over this task's problems."""

  @property
  @abc.abstractmethod
  def max_response_len(self) -> int:
    """Responses longer than this (in tokens, EOS included) count as truncated."""

  @abc.abstractmethod
  def split(self, name: str) -> Sequence[Problem]:
    """Deterministic train / validation / test problems (from the task's seed)."""

  @abc.abstractmethod
  def encode_prompt(self, problem: Problem) -> list[int]:
    """Prompt token ids (the policy continues from here)."""

  @abc.abstractmethod
  def encode_solution(self, problem: Problem) -> list[int]:
    """Reference response token ids: every step, then EOS."""

  @abc.abstractmethod
  def decode(self, tokens: Sequence[int]) -> str:
    """Human-readable text of token ids (for logs and sample tables)."""

  @abc.abstractmethod
  def is_correct(self, response: Sequence[int], problem: Problem) -> Outcome:
    """Outcome reward of a sampled response (token ids, padding allowed after EOS)."""

  def answer_key(self, response: Sequence[int]) -> str | None:
    """The final answer a vote groups this response under (None: it states none).

    Default: the response's tokens up to EOS, so only identical responses agree.
    Text tasks override it with their normalized final answer.
    """
    body, _ = response_until_eos(response, self.eos_id)
    body = [t for t in body if t != self.pad_id]
    return " ".join(map(str, body)) if body else None

  def procedural_prover(self, prover_cfg) -> PrefixValues:
    """An exact prover mu for RL (`rl.prover.kind='procedural'`), where the task has one.

    Returns a function of (problems, responses, width) giving Q^mu after the question
    and after each step of each response ([B, width], 0 past its last step).
    `prover_cfg` is the RL config's `rl.prover` (each task reads its own fields).
    """
    raise NotImplementedError(f"task {self.name!r} has no procedural prover")

  def data_report(self) -> dict:
    """What loading the data skipped or counted (per-reason counts); job summaries include it."""
    return {}

  @property
  def step_boundary(self) -> step_boundary_lib.StepBoundary:
    """The step-end rule over this task's token ids: the one place steps are defined.

    Default: each of `step_end_ids` ends a step by itself. Text tasks with a
    pretrained tokenizer override it with the delimiter automaton.
    """
    cached = self.__dict__.get("_step_boundary")
    if cached is None:
      cached = step_boundary_lib.StepBoundary.from_ids(self.step_end_ids, self.vocab_size)
      self.__dict__["_step_boundary"] = cached
    return cached

  def segment_steps(self, response: Sequence[int]) -> list[tuple[int, int]]:
    """Half-open token spans [start, end) of the steps of a response.

    A step ends right after a token `step_boundary` marks, or EOS; tokens after
    EOS are ignored, and a trailing unfinished step (truncation) is its own span.
    """
    return self.step_boundary.segment(response, self.eos_id, self.pad_id)


def response_until_eos(response: Sequence[int], eos_id: int) -> tuple[list[int], bool]:
  """Tokens before EOS, and whether EOS was present."""
  out = []
  for tok in response:
    if tok == eos_id:
      return out, True
    out.append(int(tok))
  return out, False


@dataclasses.dataclass
class SFTArrays:
  """Teacher-forcing arrays, right-padded: predict targets[t] from inputs[:t+1]."""

  inputs: np.ndarray  # [N, T] int32
  targets: np.ndarray  # [N, T] int32
  mask: np.ndarray  # [N, T] float32, 1 on response tokens

  def __len__(self) -> int:
    return self.inputs.shape[0]

  def trimmed(self, multiple: int = 8) -> "SFTArrays":
    """The same examples without the all-padding columns after the last loss token.

    Attention is causal, so a column affects only the losses at or after it: the
    loss is unchanged and each step costs less (seq_len drops from max_len to
    the longest example, rounded up to `multiple` columns).
    """
    cols = np.flatnonzero(self.mask.any(axis=0))
    width = covering_width(int(cols[-1]) if len(cols) else 0, self.inputs.shape[1], multiple)
    return SFTArrays(self.inputs[:, :width], self.targets[:, :width], self.mask[:, :width])


def covering_width(last_column: int, width: int, multiple: int = 8) -> int:
  """Columns that keep `last_column`, rounded up to `multiple`, at most `width`."""
  return min(width, -(-(last_column + 1) // multiple) * multiple)


def sft_arrays(task: Task, problems: Sequence[Problem], seq_len: int) -> SFTArrays:
  """Prompt + reference solution per problem; the loss covers the solution only."""
  pairs = [(task.encode_prompt(p), task.encode_solution(p)) for p in problems]
  return sequence_arrays(pairs, seq_len, task.pad_id,
                         names=[f"task {task.name!r} problem {p.uid}" for p in problems])


def sequence_arrays(pairs: Sequence[tuple[Sequence[int], Sequence[int]]], seq_len: int,
                    pad_id: int = 0, names: Sequence[str] | None = None) -> SFTArrays:
  """Teacher-forcing arrays of (prompt, response) token pairs; loss on the response."""
  n = len(pairs)
  inputs = np.full((n, seq_len), pad_id, np.int32)
  targets = np.full((n, seq_len), pad_id, np.int32)
  mask = np.zeros((n, seq_len), np.float32)
  for i, (prompt, response) in enumerate(pairs):
    seq = list(prompt) + list(response)
    if len(seq) - 1 > seq_len:
      name = names[i] if names else f"sequence {i}"
      raise ValueError(
          f"{name}: prompt+solution has {len(seq)} tokens, "
          f"more than model.max_len={seq_len} + 1; raise model.max_len")
    inputs[i, : len(seq) - 1] = seq[:-1]
    targets[i, : len(seq) - 1] = seq[1:]
    mask[i, len(prompt) - 1 : len(seq) - 1] = 1.0
  return SFTArrays(inputs, targets, mask)
