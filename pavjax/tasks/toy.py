"""A tiny toy task for tests and smoke runs: running sums of digits mod 10.

Prompt `BOS d1 .. dk =`, reference response `s1 NL s2 NL .. sk EOS` with
`s_i = (d1 + .. + d_i) mod 10`: k steps of two tokens each. Correct iff the last
step's digit equals `s_k`. Cheap to learn, so jobs can be smoke-tested in seconds.
"""

from __future__ import annotations

from typing import Sequence

import ml_collections
import numpy as np

from pavjax.tasks import base

PAD, BOS, EOS, NL, EQ = 0, 1, 2, 3, 4
DIGIT0 = 5  # digit d is token DIGIT0 + d


def default_config() -> ml_collections.ConfigDict:
  cfg = ml_collections.ConfigDict()
  cfg.num_digits = 4  # digits per problem (= reasoning steps)
  cfg.num_train = 512  # problems in the train split
  cfg.num_eval = 64  # problems in each of validation and test
  cfg.seed = 0  # generator seed; splits are disjoint by construction
  return cfg


class ToyTask(base.Task):
  """Running digit sums mod 10 (see module docstring)."""

  name = "toy"

  def __init__(self, num_digits: int = 4, num_train: int = 512, num_eval: int = 64, seed: int = 0):
    self.num_digits = num_digits
    rng = np.random.default_rng(seed)
    total = num_train + 2 * num_eval
    seen, problems = set(), []
    while len(problems) < total:
      digits = tuple(int(d) for d in rng.integers(0, 10, num_digits))
      if digits in seen and len(seen) < 10**num_digits:
        continue
      seen.add(digits)
      sums = np.cumsum(digits) % 10
      problems.append(base.Problem(
          uid=f"toy-{len(problems)}", prompt=(BOS, *(DIGIT0 + d for d in digits), EQ),
          steps=tuple((DIGIT0 + int(s), NL) for s in sums), answer=str(int(sums[-1]))))
    self._splits = {"train": problems[:num_train],
                    "validation": problems[num_train:num_train + num_eval],
                    "test": problems[num_train + num_eval:]}

  vocab_size = DIGIT0 + 10
  eos_id = EOS
  step_end_ids = (NL,)

  @property
  def max_prompt_len(self) -> int:
    return self.num_digits + 2

  @property
  def max_response_len(self) -> int:
    return 2 * self.num_digits + 2

  def split(self, name: str) -> Sequence[base.Problem]:
    return self._splits[name]

  def encode_prompt(self, problem: base.Problem) -> list[int]:
    return list(problem.prompt)

  def encode_solution(self, problem: base.Problem) -> list[int]:
    toks = [t for step in problem.steps for t in step]
    return toks[:-1] + [EOS]  # the last step ends with EOS instead of NL

  def decode(self, tokens: Sequence[int]) -> str:
    names = {PAD: "", BOS: "<s>", EOS: "</s>", NL: "\n", EQ: "="}
    return "".join(names.get(int(t), str(int(t) - DIGIT0)) for t in tokens)

  def is_correct(self, response: Sequence[int], problem: base.Problem) -> base.Outcome:
    body, has_eos = base.response_until_eos(response, EOS)
    if not body and has_eos:
      return base.Outcome(0.0, base.EMPTY)
    if not has_eos:
      return base.Outcome(0.0, base.TRUNCATED)
    if len(body) > self.max_response_len:
      return base.Outcome(0.0, base.TOO_LONG)
    last = body[-1]
    if not DIGIT0 <= last < DIGIT0 + 10:
      return base.Outcome(0.0, base.NO_ANSWER)
    ok = str(last - DIGIT0) == problem.answer
    return base.Outcome(float(ok), base.CORRECT if ok else base.WRONG)


def make(task_cfg: ml_collections.ConfigDict, workdir: str | None = None) -> ToyTask:
  del workdir
  return ToyTask(task_cfg.num_digits, task_cfg.num_train, task_cfg.num_eval, task_cfg.seed)
