"""The base of the text tasks: a `Task` whose ids come from a `Tokenizer`.

The newline id of the tokenizer ends a step; see `pavjax.tasks.tokenizer` for the
id layout.
"""

from __future__ import annotations

from typing import Mapping, Sequence

from pavjax.tasks import base
from pavjax.tasks.tokenizer import Tokenizer


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
    """`[BOS] prompt NL`."""
    bos = [] if self.tokenizer.bos_id is None else [self.tokenizer.bos_id]
    return bos + self.tokenizer.encode(str(problem.prompt)) + [self.tokenizer.nl_id]

  def encode_solution(self, problem: base.Problem) -> list[int]:
    """`step1 NL step2 NL .. stepK EOS`."""
    return self.tokenizer.encode("\n".join(problem.steps)) + [self.tokenizer.eos_id]
