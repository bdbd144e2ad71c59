"""The base of the text tasks: a `Task` whose ids come from a `Tokenizer`.

Steps are delimited by `step_delimiter` ("\n": one step per line). With pavjax's own
tokenizers the delimiter is made of their newline id (see `pavjax.tasks.tokenizer`
for the id layout). With a pretrained tokenizer a step ends at the first token whose
text completes the delimiter, whatever BPE merged it with (`pavjax.step_boundary`).
"""

from __future__ import annotations

from typing import Mapping, Sequence

from pavjax import step_boundary as step_boundary_lib
from pavjax.tasks import base
from pavjax.tasks.tokenizer import Tokenizer


def check_step_delimiter(task: str, delimiter: str) -> None:
  """A step delimiter is whitespace holding a newline: the tasks write their steps one
  per line, so no other whitespace inside a step can be mistaken for its end."""
  if not delimiter or delimiter.strip() or "\n" not in delimiter:
    raise ValueError(f"{task}: step_delimiter={delimiter!r} must be whitespace holding a "
                     "newline, e.g. '\\n' (one step per line) or '\\n\\n' (blank lines)")


class TextTask(base.Task):
  """A task whose ids come from a `Tokenizer`; its newline id ends a step.

  Prompts are `[BOS] prompt NL` (BOS only when the tokenizer has one), reference
  solutions `step1 NL step2 NL .. stepK EOS`. Subclasses set `tokenizer`,
  `_splits` (split name -> problems), `_max_prompt_len` and `_max_response_len`.
  """

  tokenizer: Tokenizer
  _splits: Mapping[str, Sequence[base.Problem]]
  _max_prompt_len: int
  _max_response_len: int

  @property
  def vocab_size(self) -> int:
    return self.tokenizer.vocab_size

  @property
  def eos_id(self) -> int:
    return self.tokenizer.eos_id

  step_delimiter: str = "\n"  # text that ends a step ("\n\n": blank-line separated steps)

  @property
  def step_end_ids(self) -> tuple[int, ...]:
    """The id that ends a step in pavjax's own line encoding (references, prompts)."""
    return (self.tokenizer.nl_id,)

  @property
  def step_boundary(self) -> step_boundary_lib.StepBoundary:
    """Where steps end (see the module docstring); built once per task."""
    cached = self.__dict__.get("_step_boundary")
    if cached is None:
      texts = getattr(self.tokenizer, "token_texts", None)
      if texts is not None:  # a pretrained vocabulary: tokens may hold the delimiter
        cached = step_boundary_lib.StepBoundary.from_texts(texts(), self.step_delimiter)
      elif self.step_delimiter == "\n":  # own tokenizers: only the newline id holds one
        cached = step_boundary_lib.StepBoundary.from_ids(self.step_end_ids, self.vocab_size)
      else:
        cached = step_boundary_lib.StepBoundary.from_texts(
            [self.tokenizer.decode([i]) for i in range(self.vocab_size)], self.step_delimiter)
      self.__dict__["_step_boundary"] = cached
    return cached

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
    """`[BOS] prompt NL`."""
    bos = [] if self.tokenizer.bos_id is None else [self.tokenizer.bos_id]
    return bos + self.tokenizer.encode(str(problem.prompt)) + [self.tokenizer.nl_id]

  def encode_solution(self, problem: base.Problem) -> list[int]:
    """`step1 DELIM step2 DELIM .. stepK EOS` (DELIM = NL by default)."""
    return (self.tokenizer.encode(self.step_delimiter.join(problem.steps))
            + [self.tokenizer.eos_id])
