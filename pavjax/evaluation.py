"""Sampling responses to task problems and grading them on the host.

It sits above `pavjax.sampling`, which knows tokens and not tasks.

Prompts are padded to a fixed number of rows per call (`batch_size`) and to a
length bucket, so a whole evaluation compiles once.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Sequence

import jax
import numpy as np

from pavjax import metrics
from pavjax import sharding as shd
from pavjax.sampling import Sampler, left_pad
from pavjax.sampling.sampler import call_row_keys, row_keys_for
from pavjax.tasks.base import Outcome, Problem, Task


@dataclasses.dataclass
class Response:
  problem: Problem
  tokens: list[int]  # generated tokens, stop token included, padding removed
  logprobs: list[float]
  finished: bool
  outcome: Outcome


BATCHINGS = ("static", "continuous")


def sampling_options(sample_cfg) -> dict:
  """The `sample_responses` keywords a job's `config.sample` section sets (batching)."""
  return {"batching": sample_cfg.get("batching", "static"),
          "blocks": int(sample_cfg.get("continuous_blocks", 4))}


def one_call_arena(items: int, sample_cfg, mesh) -> int:
  """Decode rows for `items` (prompt, sample) items that a job samples in one call (RL's
  batch, first-pit continuations); 0 = static batching, which decodes all of them until
  the longest stops. `sample.batching=continuous` gives an arena of items /
  `sample.continuous_blocks` rows (a multiple of the data-parallel size) that a stopped
  row leaves for the next item at once."""
  options = sampling_options(sample_cfg)
  if options["batching"] != "continuous":
    return 0
  blocks = max(1, options["blocks"])
  return min(items, shd.round_to_data_parallel(-(-items // blocks), mesh))


def generate_in_one_call(sampler: Sampler, params, prompts, lengths, rng: jax.Array, *,
                         arena: int, num_samples: int, num_prompts: int | None = None, **kw):
  """`sampler.generate(rng)`, or with `arena` > 0 the same items by continuous batching:
  item b * num_samples + j keeps the key of generate's row, so both give the same tokens.
  Only the first `num_prompts` prompts' items run in the arena (the rest are padding)."""
  if not arena:
    return sampler.generate(params, prompts, lengths, rng, num_samples=num_samples, **kw)
  keys = row_keys_for(rng, prompts.shape[0] * num_samples)
  return sampler.generate_continuous(params, prompts, lengths, keys, slots=arena,
                                     num_samples=num_samples, num_prompts=num_prompts, **kw)


def sample_responses(task: Task, sampler: Sampler, params, problems: Sequence[Problem], *,
                     rng: jax.Array, mesh, method, max_new_tokens: int, batch_size: int,
                     num_samples: int = 1, stop_tokens: Sequence[int] | None = None,
                     progress: bool = False, batching: str = "static",
                     blocks: int = 4) -> list[list[Response]]:
  """`num_samples` scored responses per problem (outer list follows `problems`).

  Problems go in calls of `batch_size // num_samples` prompts (call c draws with
  `fold_in(rng, c)`). `batching='continuous'` decodes `blocks` calls' prompts
  through one arena of the static call's rows (`Sampler.generate_continuous`): a
  response that stops frees its row for the next (prompt, sample) at once, instead of
  idling until the call's longest response ends. Every (prompt, sample) keeps the key
  the static call gives it, so both give the same responses. Its prefill holds `blocks`
  calls' prompts at once, beside the arena's rows.
  """
  if batching not in BATCHINGS:
    raise ValueError(f"batching {batching!r} is not one of {BATCHINGS}")
  stop = tuple(stop_tokens) if stop_tokens is not None else (task.eos_id,)
  prompts = [task.encode_prompt(p) for p in problems]
  width = left_pad(prompts, task.pad_id)[0].shape[1] if prompts else 1
  rows_per_call = max(batch_size // num_samples, 1)
  rows_per_call = shd.round_to_data_parallel(rows_per_call, mesh)
  per_group = rows_per_call * (max(int(blocks), 1) if batching == "continuous" else 1)
  out: list[list[Response]] = []
  starts = range(0, len(problems), per_group)
  bar = metrics.progress(len(problems), desc="sampling") if progress else None
  for group_start in starts:
    chunk = prompts[group_start:group_start + per_group]
    padded = chunk + [chunk[0]] * (per_group - len(chunk))  # fixed rows: one compile
    tokens, lengths = left_pad(padded, task.pad_id, buckets=(width,))
    tokens = jax.device_put(tokens, shd.batch_sharding(mesh, 2))
    lengths = jax.device_put(lengths, shd.batch_sharding(mesh, 1))
    call = group_start // rows_per_call
    if batching == "continuous":
      # Prompt i of this group is row i % rows_per_call of static call call + i // rows.
      i = np.repeat(np.arange(per_group), num_samples)
      in_call = (i % rows_per_call) * num_samples + np.tile(np.arange(num_samples), per_group)
      keys = call_row_keys(rng, call + i // rows_per_call, in_call)
      res = sampler.generate_continuous(
          params, tokens, lengths, keys, max_new_tokens=max_new_tokens, method=method,
          stop_tokens=stop, num_samples=num_samples, slots=rows_per_call * num_samples,
          num_prompts=len(chunk))
    else:
      res = sampler.generate(params, tokens, lengths, jax.random.fold_in(rng, call),
                             max_new_tokens=max_new_tokens, method=method, stop_tokens=stop,
                             num_samples=num_samples)
    res = shd.to_host(res)
    for i in range(len(chunk)):
      problem = problems[group_start + i]
      group = []
      for j in range(num_samples):
        r = i * num_samples + j
        n = int(res.lengths[r])
        toks = [int(t) for t in res.tokens[r, :n]]
        group.append(Response(problem, toks, [float(x) for x in res.logprobs[r, :n]],
                              bool(res.finished[r]), task.is_correct(toks, problem)))
      out.append(group)
    if bar is not None:
      bar.update(len(chunk))
  if bar is not None:
    bar.close()
  return out


def summarize(responses: Sequence[Sequence[Response]]) -> dict[str, float]:
  """Mean reward (accuracy over all samples), pass@n, and reason counts."""
  flat = [r for group in responses for r in group]
  if not flat:
    return {"accuracy": 0.0}
  reasons = collections.Counter(r.outcome.reason for r in flat)
  summary = {
      "accuracy": float(np.mean([r.outcome.reward for r in flat])),
      "pass_at_n": float(np.mean([max(r.outcome.reward for r in g) for g in responses])),
      "mean_length": float(np.mean([len(r.tokens) for r in flat])),
  }
  summary.update({f"reason/{k}": float(v) for k, v in sorted(reasons.items())})
  return summary


def per_problem_outcomes(responses: Sequence[Sequence[Response]]) -> dict[str, list]:
  """Each problem's uid and mean reward, in the order of `responses`.

  What a paired comparison of two policies on the same problems needs
  (`pavjax.stats.paired_difference`); a job merges it into the evaluation it keeps
  in summary.json. Apart from `summarize`, whose values are the scalars the
  metric writers log.
  """
  groups = [g for g in responses if g]
  return {"problem_uids": [str(g[0].problem.uid) for g in groups],
          "per_problem": [float(np.mean([r.outcome.reward for r in g])) for g in groups]}


def sample_table(task: Task, responses: Sequence[Sequence[Response]], limit: int = 16) -> str:
  """A markdown table of prompts, sampled responses and their rewards."""
  esc = lambda s: s.replace("|", "\\|").replace("\n", "⏎ ")
  lines = ["| problem | prompt | response | reward | reason |", "|---|---|---|---|---|"]
  for group in list(responses)[:limit]:
    for r in group:
      lines.append(f"| {r.problem.uid} | {esc(task.decode(task.encode_prompt(r.problem)))} | "
                   f"{esc(task.decode(r.tokens))} | {r.outcome.reward:g} | {r.outcome.reason} |")
  return "\n".join(lines) + "\n"
