"""Best-of-N re-ranking, majority votes and Pass@N over sampled responses.

ArXiv 2410.08146, Sec. 4, App. C.

One pool of M responses per problem serves every N <= M: for N < M the accuracy
is the mean over `num_subsets` random size-N subsets of the pool (drawn without
replacement), for N = M the whole pool is used once. Each selection rule picks
one response per subset:

  pass            oracle: correct if any response is (Pass@N, the ceiling)
  majority        the most frequent final answer (`Task.answer_key`); responses
                  without an answer do not vote; ties go to the answer seen first
                  in the subset's (random) order
  bon:<score>     the response with the highest score (first one on ties)
  weighted:<score>  the answer with the largest total score

Step scores become one number per response with `aggregate_steps`:
  min   the weakest step (default for PRM-Q: one bad step sinks a solution)
  last  the value after the last step (the PRM's own outcome prediction)
  prod  the product over steps (a chain of independent step successes)
PAV-as-ORM ranks whole responses by the minimum over steps of the effective
reward Q^pi + alpha * A^mu, the same per-step number PAV beam search ranks by.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

import numpy as np

AGGREGATES = ("min", "last", "prod")


def aggregate_steps(step_scores: np.ndarray, mask: np.ndarray, how: str) -> np.ndarray:
  """One score per response from per-step scores [.., H] (mask: real steps, a prefix mask).

  A response without steps (empty) scores 0 under every rule.
  """
  if how not in AGGREGATES:
    raise ValueError(f"aggregate {how!r} is not one of {AGGREGATES}")
  s = np.asarray(step_scores, np.float64)
  m = np.asarray(mask, bool)
  has = m.any(axis=-1)
  if how == "min":
    out = np.where(m, s, np.inf).min(axis=-1)
  elif how == "prod":
    out = np.where(m, s, 1.0).prod(axis=-1)
  else:
    last = np.maximum(m.sum(axis=-1) - 1, 0)
    out = np.take_along_axis(s, last[..., None], axis=-1)[..., 0]
  return np.where(has, out, 0.0)


def answer_ids(keys: Sequence[Sequence[str | None]]) -> np.ndarray:
  """Integer ids of final answers within each problem ([P, M]; -1 = no answer)."""
  out = np.full((len(keys), max((len(k) for k in keys), default=0)), -1, np.int64)
  for i, row in enumerate(keys):
    seen: dict[str, int] = {}
    for j, key in enumerate(row):
      if key is not None:
        out[i, j] = seen.setdefault(key, len(seen))
  return out


@dataclasses.dataclass
class Pool:
  """M sampled responses for each of P problems, with what the rules need."""

  correct: np.ndarray  # [P, M] bool
  answers: np.ndarray  # [P, M] int answer ids (`answer_ids`), -1 = none
  scores: Mapping[str, np.ndarray]  # name -> [P, M] response scores (higher = better)
  policy_tokens: np.ndarray  # [P, M] generated tokens of each response
  prompt_tokens: np.ndarray  # [P] prompt length (prefilled once per problem, then forked)

  def __post_init__(self):
    shape = self.correct.shape
    for name, arr in [("answers", self.answers), ("policy_tokens", self.policy_tokens),
                      *[(f"scores[{k}]", v) for k, v in self.scores.items()]]:
      if np.shape(arr) != shape:
        raise ValueError(f"Pool.{name} has shape {np.shape(arr)}, expected {shape}")


def choose(rule: str, answers: np.ndarray, weights: np.ndarray | None) -> np.ndarray:
  """Index of the chosen response along the last axis of [.., n] arrays."""
  if rule == "bon":
    return np.argmax(weights, axis=-1)
  if rule not in ("majority", "weighted"):
    raise ValueError(f"rule {rule!r} is not bon|majority|weighted")
  w = np.ones(answers.shape) if rule == "majority" else np.asarray(weights, np.float64)
  same = (answers[..., :, None] == answers[..., None, :]) & (answers[..., None, :] >= 0)
  votes = np.einsum("...jk,...k->...j", same.astype(np.float64), w)
  votes = np.where(answers >= 0, votes, -np.inf)
  # argmax takes the first maximum: the earliest member of the winning answer.
  # With no answer at all every vote is -inf and the first response is taken.
  return np.argmax(votes, axis=-1)


def methods_for(pool: Pool) -> list[str]:
  """Every rule this pool supports: pass, majority, bon:<s> and weighted:<s>."""
  return (["pass", "majority"] + [f"bon:{s}" for s in pool.scores] +
          [f"weighted:{s}" for s in pool.scores])


def subsets(num_problems: int, pool_size: int, n: int, num_subsets: int, seed: int
            ) -> np.ndarray:
  """[S, P, n] response indices: S random size-n subsets per problem (1 when n = M)."""
  if not 1 <= n <= pool_size:
    raise ValueError(f"N={n} is outside 1..{pool_size} (the pool size)")
  if n == pool_size:
    return np.broadcast_to(np.arange(n), (1, num_problems, n)).copy()
  rng = np.random.default_rng(seed + 7919 * n)
  keys = rng.random((num_subsets, num_problems, pool_size))
  return np.argsort(keys, axis=-1)[..., :n]


def accuracy_curves(pool: Pool, ns: Sequence[int], *, num_subsets: int = 32, seed: int = 0,
             methods: Sequence[str] | None = None) -> dict[str, list[dict]]:
  """Accuracy and compute of every method at every N (one row per N).

  Each row: n, accuracy (mean over problems and subsets), per-problem accuracy,
  and the mean per-problem counters `policy_tokens`, `prefill_tokens`,
  `verifier_tokens` (the full response and prompt of every scored sample, for
  one verifier; 0 for pass and majority).
  """
  p, m = pool.correct.shape
  methods = list(methods) if methods is not None else methods_for(pool)
  out: dict[str, list[dict]] = {name: [] for name in methods}
  rows = np.arange(p)[None, :, None]
  for n in ns:
    idx = subsets(p, m, n, num_subsets, seed)
    correct = pool.correct[rows, idx]  # [S, P, n]
    answers = pool.answers[rows, idx]
    gen = pool.policy_tokens[rows, idx].sum(-1).mean(0)  # [P]
    scored = (pool.policy_tokens[rows, idx] + pool.prompt_tokens[None, :, None]).sum(-1).mean(0)
    for name in methods:
      rule, _, score = name.partition(":")
      if rule == "pass":
        hit = correct.any(-1)
      else:
        weights = pool.scores[score][rows, idx] if score else None
        pick = choose(rule, answers, weights)
        hit = np.take_along_axis(correct, pick[..., None], -1)[..., 0]
      per_problem = hit.mean(0)
      out[name].append({
          "n": int(n), "accuracy": float(per_problem.mean()),
          "per_problem": per_problem.tolist(),
          "policy_tokens": float(gen.mean()), "prefill_tokens": float(pool.prompt_tokens.mean()),
          "verifier_tokens": float(scored.mean()) if score else 0.0})
  return out
