"""Where a reasoning step ends: one rule, as a token-level automaton.

A step is the unit the method scores (arXiv 2410.08146, Sec. 2: a response is a
sequence of steps; process rewards and advantages are per step). pavjax's own
tokenizers give the step delimiter its own token, so "a step ends at the newline
token" would do. A pretrained tokenizer does not: BPE merges the delimiter with its
neighbours (".\\n\\n" or "\\n\\nThe" can be one token) and a delimiter may straddle two
tokens ("\\n" then "\\n"). The rule here covers both:

  A step ends at the first token whose text completes the step delimiter, counting
  the response's text from the start of the step. After a boundary the search for
  the next delimiter starts right after the one just found (occurrences never
  overlap), and a token ends at most one step, even if its text holds more.

The rule is an automaton over token ids with S states (S = the delimiter's length in
bytes): state s means the text since the last boundary ends with the delimiter's
first s bytes. `next_state[s, t]` and `ends[s, t]` give, for token t read in state s,
the state after it and whether it ends a step. The tables are built once per
vocabulary (a few MB at V = 256k) and read the same way by the trajectory table's
segmentation (`segment`, on the host) and by the step-wise sampler (`advance`, in
jitted code), so sampling, rollouts, verifier labels, search and RL agree on every
boundary. Tasks whose delimiter is a set of ids (`from_ids`: one state) are the
special case where a token ends a step by its id alone.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True, eq=False)
class StepBoundary:
  """The step-end automaton of one vocabulary (see the module docstring)."""

  next_state: np.ndarray  # [S, V] int32: the state after reading token t in state s
  ends: np.ndarray  # [S, V] bool: token t read in state s ends a step

  @property
  def num_states(self) -> int:
    return self.next_state.shape[0]

  @property
  def vocab_size(self) -> int:
    return self.next_state.shape[1]

  @classmethod
  def from_ids(cls, ids: Sequence[int], vocab_size: int) -> "StepBoundary":
    """Each of `ids` ends a step by itself; no other token does (one state)."""
    ends = np.zeros((1, vocab_size), bool)
    ids = np.asarray(list(ids), np.int64)
    if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
      raise ValueError(f"step-end ids {ids.tolist()} outside the vocabulary [0, {vocab_size})")
    ends[0, ids] = True
    return cls(np.zeros((1, vocab_size), np.int32), ends)

  @classmethod
  def from_texts(cls, texts: Sequence[str | bytes], delimiter: str | bytes) -> "StepBoundary":
    """The automaton of `delimiter` over tokens whose decoded texts are `texts`.

    `texts[t]` is token t's text (str, compared as UTF-8 bytes, or bytes); special
    tokens that print nothing are "". Works on bytes, so a token holding half of a
    multi-byte character is no problem for an ASCII delimiter.
    """
    delim = delimiter.encode("utf-8") if isinstance(delimiter, str) else bytes(delimiter)
    if not delim:
      raise ValueError("the step delimiter is empty")
    m = len(delim)
    # KMP over bytes: step[s][c] = the matched-prefix length after byte c in state s.
    fail = [0] * (m + 1)
    k = 0
    for i in range(1, m):
      while k and delim[i] != delim[k]:
        k = fail[k]
      if delim[i] == delim[k]:
        k += 1
      fail[i + 1] = k

    def byte_step(s: int, c: int) -> int:
      while s and delim[s] != c:
        s = fail[s]
      return s + 1 if delim[s] == c else 0

    # Only bytes of the delimiter matter; any other byte sends every state to 0.
    table = {c: [byte_step(s, c) for s in range(m)] for c in set(delim)}
    next_state = np.zeros((m, len(texts)), np.int32)
    ends = np.zeros((m, len(texts)), bool)
    for t, text in enumerate(texts):
      data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
      if not data:  # prints nothing (a special token): the match so far stands
        next_state[:, t] = np.arange(m)
        continue
      if not any(c in table for c in data):
        continue  # every state -> 0, no boundary (the zeros already there)
      for s0 in range(m):
        s, hit = s0, False
        for c in data:
          s = table[c][s] if c in table else 0
          if s == m:  # the delimiter is complete: a boundary; matching starts afresh
            hit, s = True, 0
        next_state[s0, t], ends[s0, t] = s, hit
    return cls(next_state, ends)

  def segment(self, response: Sequence[int], eos_id: int,
              pad_id: int | None = None) -> list[tuple[int, int]]:
    """Half-open token spans [start, end) of the steps of a response.

    A step ends right after a boundary token or EOS; tokens after EOS are ignored,
    and a trailing unfinished step (truncation) is its own span, without trailing
    `pad_id` tokens. Matching starts in state 0 at the response's first token.
    """
    spans, start, state = [], 0, 0
    if self.num_states == 1:  # ids alone decide (the common case): a set lookup per token
      end_ids = self._end_ids()
      for i, tok in enumerate(response):
        if tok == eos_id or tok in end_ids:
          spans.append((start, i + 1))
          start = i + 1
          if tok == eos_id:
            return spans
    else:
      ends, next_state = self.ends.item, self.next_state.item
      for i, tok in enumerate(response):
        tok = int(tok)
        if tok == eos_id:
          spans.append((start, i + 1))
          return spans
        hit = ends(state, tok)
        state = next_state(state, tok)
        if hit:
          spans.append((start, i + 1))
          start = i + 1
    stop = len(response)
    while pad_id is not None and stop > start and int(response[stop - 1]) == pad_id:
      stop -= 1
    if stop > start:
      spans.append((start, stop))
    return spans

  def _end_ids(self) -> frozenset:
    cached = self.__dict__.get("_end_id_set")
    if cached is None:
      cached = frozenset(int(i) for i in np.flatnonzero(self.ends[0]))
      object.__setattr__(self, "_end_id_set", cached)
    return cached

  def state_after(self, tokens: Sequence[int], state: int = 0) -> int:
    """The automaton's state after reading `tokens` from `state`."""
    for tok in tokens:
      state = int(self.next_state[state, int(tok)])
    return state

  def arrays(self) -> tuple[jnp.ndarray, jnp.ndarray]:
    """(next_state, ends) as device arrays, for `advance` in jitted code."""
    return jnp.asarray(self.next_state), jnp.asarray(self.ends)


def advance(tables: tuple[jnp.ndarray, jnp.ndarray], state: jnp.ndarray,
            tokens: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
  """One token per row: (state after `tokens` [B], whether each ends a step [B])."""
  next_state, ends = tables
  return next_state[state, tokens], ends[state, tokens]
