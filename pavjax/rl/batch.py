"""Host-side assembly of an RL batch from sampled responses (PAPER.md section 6).

A batch row is prompt + response, right-padded to a fixed width. Alongside the
tokens it carries which tokens the loss covers, the step each response token
belongs to, and the prefix positions the verifier reads (column 0: the question,
column h: the end of step h).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from pavjax.tasks import base


@dataclasses.dataclass
class Rollouts:
  """B responses (G per prompt, consecutive) as fixed-shape arrays."""

  tokens: np.ndarray  # [B, W] int32 prompt + response, right-padded
  loss_mask: np.ndarray  # [B, W] float32 1 on response tokens the loss covers
  step_ids: np.ndarray  # [B, W] int32 step index of each response token, -1 elsewhere
  positions: np.ndarray  # [B, H + 1] int32 prefix ends (-1 = no such prefix)
  outcome: np.ndarray  # [B] float32 Rex
  finished: np.ndarray  # [B] bool, the response emitted EOS
  responses: list[list[int]]  # response tokens (for the procedural provers)
  problems: list[base.Problem]  # the problem of each row (for the procedural provers)

  @property
  def step_mask(self) -> np.ndarray:
    """[B, H] which steps exist (a prefix mask)."""
    return self.positions[:, 1:] >= 0


def assemble(task: base.Task, prompts: Sequence[Sequence[int]],
             responses: Sequence[Sequence[int]], problems: Sequence[base.Problem], *,
             width: int, max_steps: int, mask_truncated: bool) -> Rollouts:
  """Builds the arrays of one batch.

  Args:
    task: segments responses into steps and scores them.
    prompts, responses, problems: one entry per row.
    width: W, at least the longest prompt + response.
    max_steps: H; later steps share step H - 1's id (and the last prefix).
    mask_truncated: leave responses without EOS out of the loss (their rows stay,
      with an all-zero mask).
  """
  b = len(responses)
  tokens = np.full((b, width), task.pad_id, np.int32)
  loss_mask = np.zeros((b, width), np.float32)
  step_ids = np.full((b, width), -1, np.int32)
  positions = np.full((b, max_steps + 1), -1, np.int32)
  outcome = np.zeros(b, np.float32)
  finished = np.zeros(b, bool)
  for i, (prompt, resp, problem) in enumerate(zip(prompts, responses, problems)):
    p = len(prompt)
    seq = list(prompt) + list(resp)
    if len(seq) > width:
      raise ValueError(f"row {i}: {len(seq)} tokens exceed the batch width {width}")
    tokens[i, :len(seq)] = seq
    outcome[i] = task.is_correct(resp, problem).reward
    finished[i] = task.eos_id in resp
    positions[i, 0] = p - 1
    spans = task.segment_steps(list(resp))
    for h, (start, stop) in enumerate(spans):
      h = min(h, max_steps - 1)
      step_ids[i, p + start:p + stop] = h
      positions[i, h + 1] = p + stop - 1
    if spans and (finished[i] or not mask_truncated):
      loss_mask[i, p:p + spans[-1][1]] = 1.0
  return Rollouts(tokens, loss_mask, step_ids, positions, outcome, finished,
                  [list(r) for r in responses], list(problems))
