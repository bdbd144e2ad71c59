"""Rollouts: seed responses and Monte-Carlo Q of every step prefix.

ArXiv 2410.08146, Sec. 4.2, App. D.

Per problem, `n_cov` seed responses come from the base policy. For each seed and
each non-terminal prefix (the question alone, then after step 1, 2, ...), `n_mc`
completions come from the prover, and `Q_hat` is their mean outcome.

Prefix forking: every seed sequence is prefilled once with the prover; each of
its prefixes is then continued from that one cache (re-aligned by a gather, see
`KVCache.align_prefixes`) and forked `n_mc` ways. No prefix is prefilled twice.

Policies and provers (`config.policy.kind`, `config.prover.kind`):
  checkpoint  a transformer checkpoint (an SFT or RL workdir's checkpoints/)
  procedural  planted only: mu_gamma sampled on the host; as a prover its Q is
              exact (dynamic programming), so no completions are run
  policy      (prover only) the base policy itself, giving Q^pi; a Best-of-K
              prover is then the closed form bok_q(Q^pi, K), applied downstream

Output: `<workdir>/rollouts/<split>/`, a trajectory table (`pavjax.trajectories`) with
columns `q_hat`, `mc_success`, `mc_count` (per prefix) and `seed` (which of the
problem's `n_cov` seeds).
Shards are keyed by (seed, shard index), so a resumed job equals an
uninterrupted one.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from pavjax import artifacts
from pavjax import config_lib
from pavjax import metrics
from pavjax import sharding as shd
from pavjax import runtime
from pavjax import trajectories
from pavjax import evaluation
from pavjax.models import KVCache
from pavjax.sampling import (Sampler, Temperature, bucket_length, cached_lm, in_dtype,
                             left_pad)
from pavjax.sampling import sampler as sampler_lib
from pavjax.tasks import base


class _Policy:
  """A sampler of seed responses: a transformer or the planted procedural policy."""

  def __init__(self, env: runtime.JobEnv, cfg):
    self.kind = cfg.kind
    self.env = env
    self.loaded = None
    if cfg.kind == "checkpoint":
      self.loaded = runtime.load_model(env, cfg.checkpoint, "policy.checkpoint")
      self.params = self.loaded.params
      self.sampler = Sampler(cached_lm(self.loaded.model), pad_id=env.task.pad_id)
    elif cfg.kind == "procedural":
      _require_planted(env.task, "policy.kind")
      self.mu = env.task.prover(cfg.gamma)
    else:
      raise config_lib.ConfigError("policy.kind", f"{cfg.kind!r} is not checkpoint|procedural")

  def seeds(self, problems, n: int, rng: jax.Array, config) -> list[list[list[int]]]:
    """n response token lists per problem."""
    task = self.env.task
    if self.kind == "procedural":
      gen = np.random.default_rng(np.asarray(jax.random.key_data(rng)).ravel().tolist())
      out = []
      for _ in problems:
        raw = self.mu.sample(gen, n)
        out.append([task.to_ids(r) for r in raw])
      return out
    groups = evaluation.sample_responses(
        task, self.sampler, self.params, problems, rng=rng, mesh=self.env.mesh,
        method=Temperature(config.rollouts.temperature), max_new_tokens=task.max_response_len,
        batch_size=config.sample.batch_size, num_samples=n,
        **evaluation.sampling_options(config.sample))
    return [[r.tokens for r in g] for g in groups]

  def continuations(self, prompts, partials, n: int, rng: jax.Array, config,
                    width: int) -> list[list[list[int]]]:
    """n full responses per (prompt, partial response): the partial, then the policy's
    continuation, cut at max_response_len tokens (a seed's budget)."""
    task = self.env.task
    if self.kind == "procedural":
      gen = np.random.default_rng(np.asarray(jax.random.key_data(rng)).ravel().tolist())
      return [[task.to_ids(r) for r in self.mu.sample(gen, n, prefix=task.from_ids(done))]
              for done in partials]
    mesh = self.env.mesh
    seqs = [list(p) + list(d) for p, d in zip(prompts, partials)]
    rows = shd.round_to_data_parallel(len(seqs), mesh)
    tokens, lengths = left_pad(seqs + [seqs[0]] * (rows - len(seqs)), task.pad_id,
                               buckets=(width,))
    out = shd.to_host(evaluation.generate_in_one_call(
        self.sampler, self.params, jax.device_put(tokens, shd.batch_sharding(mesh, 2)),
        jax.device_put(lengths, shd.batch_sharding(mesh, 1)), rng,
        arena=evaluation.one_call_arena(rows * n, config.sample, mesh),
        num_samples=n, num_prompts=len(seqs), max_new_tokens=task.max_response_len,
        method=Temperature(config.rollouts.temperature), stop_tokens=(task.eos_id,)))
    return [[(list(done) + [int(t) for t in out.tokens[b * n + j, :int(out.lengths[b * n + j])]]
              )[:task.max_response_len] for j in range(n)] for b, done in enumerate(partials)]


POLICIES = ("checkpoint", "procedural")
SEEDINGS = ("random", "first_pit")
# Fields that only first-pit seeding reads: left out of a random run's identity, so
# rollouts written before first-pit existed keep their hash.
PIT_FIELDS = ("seeding", "pit_threshold", "pit_prefixes", "pit_samples")
PROVERS = ("policy", "checkpoint", "procedural")
# How forked completions are decoded: fixed batches of fork_batch x n_mc rows, each
# until its longest row stops, or one arena of that many rows refilled as rows stop
# (`Sampler.fork_continuous`). Both give the same completions, so the choice is not
# part of the data's identity.
BATCHINGS = ("static", "continuous")


def validate(config: ml_collections.ConfigDict, num_devices: int) -> None:
  """Every field this job reads, checked before any compute; errors name the field."""
  config_lib.validate(config, num_devices)
  policy, prover, cfg = config.policy, config.prover, config.rollouts
  config_lib.check_choice(policy.kind, POLICIES, "policy.kind")
  config_lib.check_choice(prover.kind, PROVERS, "prover.kind")
  for name, part in (("policy", policy), ("prover", prover)):
    if part.kind == "checkpoint":
      config_lib.check_set(part.checkpoint, f"{name}.checkpoint",
                           f"{name}.kind='checkpoint' needs a checkpoints dir")
    if part.kind == "procedural":
      config_lib.check(config.task.name == "planted", f"{name}.kind",
                       f"'procedural' needs the planted task, not {config.task.name!r}")
      config_lib.check_finite(part.gamma, f"{name}.gamma", minimum=0.0)
  config_lib.check(prover.kind != "policy" or policy.kind == "checkpoint", "prover.kind",
                   "'policy' needs policy.kind='checkpoint'")
  config_lib.check_choice(cfg.split, base.SPLITS, "rollouts.split")
  config_lib.check_choice(cfg.get("seeding", "random"), SEEDINGS, "rollouts.seeding")
  config_lib.check_choice(cfg.get("batching", "static"), BATCHINGS, "rollouts.batching")
  config_lib.check_choice(cfg.get("dtype", ""), ("", "float32", "bfloat16"), "rollouts.dtype")
  if cfg.get("seeding", "random") == "first_pit":
    config_lib.check_finite(cfg.pit_threshold, "rollouts.pit_threshold", minimum=0.0)
    config_lib.check(cfg.pit_threshold <= 1.0, "rollouts.pit_threshold", "must be <= 1")
    for field in ("pit_prefixes", "pit_samples"):
      config_lib.check(cfg[field] > 0, f"rollouts.{field}", f"{cfg[field]} must be > 0")
  for field in ("n_cov", "n_mc", "problems_per_shard", "seq_batch", "fork_batch"):
    config_lib.check(cfg[field] > 0, f"rollouts.{field}", f"{cfg[field]} must be > 0")
  config_lib.check(cfg.get("continuous_blocks", 1) > 0, "rollouts.continuous_blocks",
                   f"{cfg.get('continuous_blocks', 1)} must be > 0")
  config_lib.check(cfg.num_problems >= 0, "rollouts.num_problems", "must be >= 0 (0 = all)")
  config_lib.check_finite(cfg.temperature, "rollouts.temperature", minimum=1e-6)


def _require_planted(task, field):
  if not hasattr(task, "prover"):
    raise config_lib.ConfigError(field, f"'procedural' needs the planted task, not {task.name!r}")


class RolloutRunner:
  """Builds one shard: seeds, their segmentation, and Q_hat of every prefix."""

  def __init__(self, env: runtime.JobEnv, config: ml_collections.ConfigDict):
    self.env, self.config = env, config
    task = env.task
    self.policy = _Policy(env, config.policy)
    self.prover_kind = config.prover.kind
    self.prover = None  # the prover's LoadedModel (a transformer prover)
    if self.prover_kind == "procedural":
      _require_planted(task, "prover.kind")
      self.mu = task.prover(config.prover.gamma)
    elif self.prover_kind in ("policy", "checkpoint"):
      if self.prover_kind == "policy":
        if self.policy.kind != "checkpoint":
          raise config_lib.ConfigError("prover.kind", "'policy' needs policy.kind='checkpoint'")
        self.prover = self.policy.loaded
      else:  # another policy, possibly of another family or size than the seed policy
        self.prover = runtime.load_model(env, config.prover.checkpoint, "prover.checkpoint")
      # rollouts.dtype: the prover samples with bf16 weights and KV cache (cast once).
      prover_model, self.prover_params = in_dtype(self.prover.model, self.prover.params,
                                                   config.rollouts.get("dtype", ""))
      self.sampler = Sampler(cached_lm(prover_model), pad_id=task.pad_id)
    else:
      raise config_lib.ConfigError("prover.kind",
                                   f"{self.prover_kind!r} is not policy|checkpoint|procedural")
    self.max_steps = task.max_response_len
    self.width = bucket_length(task.max_prompt_len + task.max_response_len)
    self.seq_rows = shd.round_to_data_parallel(config.rollouts.seq_batch, env.mesh)
    self.fork_rows = shd.round_to_data_parallel(config.rollouts.fork_batch, env.mesh)
    self.budget = {"seed_tokens": 0, "mc_tokens": 0, "prefill_tokens": 0, "mc_rollouts": 0}

  def models(self) -> dict[str, dict[str, Any]]:
    """Which checkpoint each role ran, with its parameter count (for reports and FLOPs)."""
    out = {}
    for role, loaded in (("policy", self.policy.loaded), ("prover", self.prover)):
      if loaded is not None:
        out[role] = {"checkpoint": loaded.path, "params": loaded.num_params}
    return out

  def shard(self, problems: Sequence[base.Problem], first_index: int, rng: jax.Array
            ) -> trajectories.Trajectories:
    """The table of one shard: seeds of `problems` with Q_hat of every prefix."""
    cfg, task = self.config.rollouts, self.env.task
    responses = self.policy.seeds(problems, cfg.n_cov, jax.random.fold_in(rng, 0), self.config)
    prompts = [task.encode_prompt(p) for p in problems]
    rows = [(i, s, list(resp)) for i, group in enumerate(responses) for s, resp in enumerate(group)]
    self.budget["seed_tokens"] += sum(len(resp) for _, _, resp in rows)
    table = trajectories.from_responses(
        task, [prompts[i] for i, _, _ in rows], [resp for _, _, resp in rows],
        [problems[i] for i, _, _ in rows], [first_index + i for i, _, _ in rows],
        max_steps=self.max_steps, width=self.width,
        columns={"seed": np.array([s for _, s, _ in rows], np.int32)})
    n, h = len(table), self.max_steps
    success = np.zeros((n, h + 1), np.int32)
    count = np.zeros((n, h + 1), np.int32)
    q_hat = np.full((n, h + 1), np.nan, np.float32)
    # The terminal prefix: its value is the outcome itself.
    q_hat[np.arange(n), trajectories.num_steps(table)] = table.outcome
    if self.prover_kind == "procedural":
      self._exact_q(table, q_hat)
    else:
      local = [problems[i] for i, _, _ in rows]
      self._mc_q(table, local, success, count, q_hat, jax.random.fold_in(rng, 1))
    table = table.with_columns(mc_success=success, mc_count=count, q_hat=q_hat)
    if cfg.get("seeding", "random") != "first_pit":
      return table
    table = table.with_columns(pit_from=np.full(n, -1, np.int32))
    pits = self._first_pit(table, problems, prompts, first_index, jax.random.fold_in(rng, 2))
    return table if pits is None else trajectories.concatenate([table, pits])

  def _first_pit(self, table: trajectories.Trajectories, problems: Sequence[base.Problem],
                 prompts: Sequence[Sequence[int]], first_index: int, rng: jax.Array
                 ) -> trajectories.Trajectories | None:
    """First-pit seeding (arXiv 2410.08146, Sec. 4.2, App. D): rows added to a shard.

    1. Per problem, the `pit_prefixes` highest-valued prefixes (after at least one
       step, before the last) whose Q_hat >= `pit_threshold`.
    2. The policy continues each one `pit_samples` times; the first continuation that
       fails becomes a new row (none failed: the prefix adds nothing).
    3. That row's new prefixes get Q_hat like a seed's (n_mc prover completions, or
       exact values); the ones it shares with its origin keep the origin's labels.
    4. The row ends at its first pit, the first new prefix whose Q_hat is 0: it is
       cut there (an unfinished response, outcome 0 = that prefix's value) and later
       prefixes are dropped. A row without a pit stays whole.
    All prefixes are labelled at once before the cut, so the budget counts the
    completions of prefixes past a pit too. Column `pit_from` is the step the row
    branched after (-1 for random seeds); `seed` is its origin's.
    """
    cfg, task = self.config.rollouts, self.env.task
    steps = trajectories.num_steps(table)
    q = table["q_hat"]
    by_problem: dict[int, list[tuple[float, int, int]]] = {}
    for i in range(len(table)):
      for c in range(1, int(steps[i])):
        if q[i, c] >= cfg.pit_threshold:
          by_problem.setdefault(int(table.problem[i]), []).append((-float(q[i, c]), i, c))
    chosen = [(i, c) for cands in by_problem.values()
              for _, i, c in sorted(cands)[:cfg.pit_prefixes]]
    if not chosen:
      return None
    local = {int(table.problem[i]): problems[int(table.problem[i]) - first_index]
             for i, _ in chosen}
    partials = [list(table.tokens[i, table.prompt_len[i]:table.prefix_ends[i, c] + 1])
                for i, c in chosen]
    groups = self.policy.continuations([prompts[int(table.problem[i]) - first_index]
                                        for i, _ in chosen], partials, cfg.pit_samples,
                                       jax.random.fold_in(rng, 0), self.config, self.width)
    rows = []  # (origin row, branch column, failed response)
    for (i, c), done, group in zip(chosen, partials, groups):
      self.budget["pit_tokens"] = self.budget.get("pit_tokens", 0) + sum(
          len(full) - len(done) for full in group)
      failed = [full for full in group
                if task.is_correct(full, local[int(table.problem[i])]).reward == 0]
      if failed:
        rows.append((i, c, failed[0]))
    if not rows:
      return None
    origin = np.array([i for i, _, _ in rows])
    branch = np.array([c for _, c, _ in rows], np.int32)
    row_prompts = [prompts[int(table.problem[i]) - first_index] for i in origin]
    row_problems = [local[int(table.problem[i])] for i in origin]
    new = trajectories.from_responses(
        task, row_prompts, [full for _, _, full in rows], row_problems, table.problem[origin],
        max_steps=self.max_steps, width=self.width)
    n, h = len(new), self.max_steps
    success = np.zeros((n, h + 1), np.int32)
    count = np.zeros((n, h + 1), np.int32)
    q_hat = np.full((n, h + 1), np.nan, np.float32)
    new_steps = trajectories.num_steps(new)
    q_hat[np.arange(n), new_steps] = new.outcome
    for k, (i, c) in enumerate(zip(origin, branch)):  # the shared prefixes: the origin's labels
      success[k, :c + 1] = table["mc_success"][i, :c + 1]
      count[k, :c + 1] = table["mc_count"][i, :c + 1]
      q_hat[k, :c + 1] = q[i, :c + 1]
    if self.prover_kind == "procedural":
      self._exact_q(new, q_hat)
    else:
      self._mc_q(new, row_problems, success, count, q_hat, jax.random.fold_in(rng, 1),
                 from_col=branch + 1)
    # Cut each row at its first pit.
    cut = new_steps.copy()
    for k in range(n):
      zero = [col for col in range(branch[k] + 1, int(new_steps[k])) if q_hat[k, col] == 0]
      if zero:
        cut[k] = zero[0]
    responses = [list(new.tokens[k, new.prompt_len[k]:new.prefix_ends[k, cut[k]] + 1])
                 if cut[k] < new_steps[k] else list(new.response(k)) for k in range(n)]
    out = trajectories.from_responses(
        task, row_prompts, responses, row_problems, table.problem[origin],
        max_steps=self.max_steps, width=self.width)
    keep = np.arange(h + 1)[None, :] <= cut[:, None]
    return out.with_columns(
        seed=table["seed"][origin], mc_success=np.where(keep, success, 0),
        mc_count=np.where(keep, count, 0), q_hat=np.where(keep, q_hat, np.nan),
        pit_from=branch)

  def _exact_q(self, table: trajectories.Trajectories, q_hat: np.ndarray) -> None:
    task = self.env.task
    steps = trajectories.num_steps(table)
    for i in range(len(table)):
      values = self.mu.prefix_values(task.from_ids(table.response(i)))  # [T + 1]
      q_hat[i, :steps[i]] = values[:steps[i]]  # one token per step: column = tokens so far

  def _mc_q(self, table: trajectories.Trajectories, problems: Sequence[base.Problem],
            success: np.ndarray, count: np.ndarray, q_hat: np.ndarray, rng,
            from_col: np.ndarray | None = None) -> None:
    """Q_hat by forked completions; column 0 once per problem, then broadcast.

    `from_col` (per row): label only columns from there on (first-pit rows, whose
    earlier prefixes are their origin's).
    """
    cfg, task = self.config.rollouts, self.env.task
    steps = trajectories.num_steps(table)
    prefixes = []  # (row, column, prefix length in sequence tokens)
    first_of_problem = {}
    for i in range(len(table)):
      if from_col is None and table.problem[i] not in first_of_problem:
        first_of_problem[table.problem[i]] = i
        prefixes.append((i, 0, int(table.prompt_len[i])))
      for col in range(1 if from_col is None else max(1, int(from_col[i])), int(steps[i])):
        prefixes.append((i, col, int(table.prefix_ends[i, col]) + 1))
    outcomes: dict[tuple[int, int], list[float]] = {}
    continuous = cfg.get("batching", "static") == "continuous"
    group = max(1, int(cfg.get("continuous_blocks", 1))) if continuous else 1
    held = []  # continuous: prefilled blocks waiting for their one decode call
    call = 0
    starts = list(range(0, len(table), self.seq_rows))
    for b, start in enumerate(starts):
      block = list(range(start, min(start + self.seq_rows, len(table))))
      seqs = [table.tokens[i, :table.length[i]] for i in block]
      padded = seqs + [seqs[0]] * (self.seq_rows - len(seqs))  # fixed rows: one compile
      tokens = np.zeros((self.seq_rows, self.width), np.int32)
      lengths = np.array([len(s) for s in padded], np.int32)
      for j, s in enumerate(padded):
        tokens[j, self.width - len(s):] = s
      self.budget["prefill_tokens"] += int(sum(len(s) for s in seqs))
      local = {i: j for j, i in enumerate(block)}
      todo = [p for p in prefixes if p[0] in local]
      # The LM head runs only at the prefix ends forked below: [rows, a few, V]
      # logits, not [rows, width, V].
      todo_rows = [local[i] for i, _, _ in todo]
      todo_ends = [self.width - int(lengths[local[i]]) + plen - 1 for i, _, plen in todo]
      logits_at, picks = sampler_lib.prefix_logit_slots(
          todo_rows, todo_ends, num_rows=self.seq_rows, width=self.width)
      cache, logits = self.sampler.prefill_sequences(
          self.prover_params, jax.device_put(tokens, shd.batch_sharding(self.env.mesh, 2)),
          jax.device_put(lengths, shd.batch_sharding(self.env.mesh, 1)),
          cache_size=self.width + task.max_response_len,
          logits_at=jax.device_put(logits_at, shd.batch_sharding(self.env.mesh, 2)))
      if continuous:
        held.append(dict(todo=todo, rows=todo_rows, ends=todo_ends, picks=picks, cache=cache,
                         logits=logits, call=call))
        call += -(-len(todo) // self.fork_rows)
        if len(held) == group or b == len(starts) - 1:
          if any(h["todo"] for h in held):
            out = self._fork_continuous(held, rng)
            first = 0
            for h in held:
              self._score(table, problems, h["todo"], out, first, outcomes)
              first += len(h["todo"]) * cfg.n_mc
          held = []
        continue
      for f in range(0, len(todo), self.fork_rows):
        fill = list(range(f, min(f + self.fork_rows, len(todo))))
        chunk = [todo[k] for k in fill]
        fill += [f] * (self.fork_rows - len(fill))
        seq_rows = np.array([todo_rows[k] for k in fill], np.int32)
        ends = np.array([todo_ends[k] for k in fill], np.int32)
        out = self.sampler.fork_prefixes(
            self.prover_params, cache, logits, jnp.asarray(seq_rows), jnp.asarray(ends),
            jnp.asarray(picks[fill]), jax.random.fold_in(rng, call), width=self.width,
            max_new_tokens=task.max_response_len, method=Temperature(cfg.temperature),
            stop_tokens=(task.eos_id,), num_samples=cfg.n_mc)
        call += 1
        self._score(table, problems, chunk, shd.to_host(out), 0, outcomes)
    for (i, col), res in outcomes.items():
      targets = [i] if col else np.flatnonzero(table.problem == table.problem[i])
      for j in targets:
        success[j, col] = int(sum(res))
        count[j, col] = len(res)
        q_hat[j, col] = float(np.mean(res))

  def _score(self, table, problems, todo, out, first: int, outcomes) -> None:
    """Scores the completions of prefixes `todo`: row first + k * n_mc + m is prefix k's m-th."""
    cfg, task = self.config.rollouts, self.env.task
    for k, (i, col, plen) in enumerate(todo):
      done = [int(t) for t in table.tokens[i, table.prompt_len[i]:plen]]
      results = []
      for m in range(cfg.n_mc):
        row = first + k * cfg.n_mc + m
        cont = [int(t) for t in out.tokens[row, :int(out.lengths[row])]]
        self.budget["mc_tokens"] += len(cont)
        full = (done + cont)[:task.max_response_len + 1]
        results.append(task.is_correct(full, problems[i]).reward)
      self.budget["mc_rollouts"] += cfg.n_mc
      outcomes[(i, col)] = results

  def _fork_continuous(self, held: list[dict], rng):
    """The prefixes of up to `rollouts.continuous_blocks` prefilled blocks in one call.

    `rollouts.batching=continuous`. The blocks' caches are stacked into one source
    (always `continuous_blocks` blocks: a short group repeats its first, whose
    rows no item reads, so shapes stay fixed), and the decode arena has the
    static path's rows (fork_batch x n_mc). The arena drains once per group, not
    once per block. Item (prefix k, sample m) of a block draws with the key the
    static path's call for k's chunk gives that row, so both choices produce the
    same completions. The prefix list is padded to a power of two with its real
    length passed as an array: groups of any size share a few compilations.
    """
    cfg, task = self.config.rollouts, self.env.task
    n, group = cfg.n_mc, max(1, int(cfg.get("continuous_blocks", 1)))
    blocks = held + [held[0]] * (group - len(held))
    per_row = max(h["logits"].shape[1] for h in blocks)
    logits = jnp.concatenate([jnp.pad(h["logits"], ((0, 0), (0, per_row - h["logits"].shape[1]),
                                                    (0, 0))) for h in blocks])
    cache = KVCache.concatenate([h["cache"] for h in blocks])
    rows, ends, picks, calls, in_chunk = [], [], [], [], []
    for b, h in enumerate(held):
      k = np.arange(len(h["todo"]))
      rows.append(np.asarray(h["rows"], np.int32) + b * self.seq_rows)
      ends.append(np.asarray(h["ends"], np.int32))
      picks.append(np.asarray(h["picks"], np.int32))
      calls.append(np.repeat(h["call"] + k // self.fork_rows, n))
      in_chunk.append(((k % self.fork_rows)[:, None] * n + np.arange(n)[None, :]).ravel())
    count = sum(len(h["todo"]) for h in held)
    padded = 1 << max(0, (count - 1).bit_length())
    fill = list(range(count)) + [0] * (padded - count)
    calls = np.concatenate(calls + [np.zeros((padded - count) * n, np.int64)])
    in_chunk = np.concatenate(in_chunk + [np.zeros((padded - count) * n, np.int64)])
    keys = sampler_lib.call_row_keys(rng, calls, in_chunk)
    out = self.sampler.fork_continuous(
        self.prover_params, cache, logits, jnp.asarray(np.concatenate(rows)[fill]),
        jnp.asarray(np.concatenate(ends)[fill]), jnp.asarray(np.concatenate(picks)[fill]), rng,
        width=self.width, max_new_tokens=task.max_response_len,
        slots=self.fork_rows * n, method=Temperature(cfg.temperature),
        stop_tokens=(task.eos_id,), num_samples=n, num_prefixes=count, item_keys=keys)
    return shd.to_host(out)


def data_identity(config: ml_collections.ConfigDict) -> dict:
  """What determines the rollout data (halting early, batching and the other speed-only
  fields do not); the manifest records it and its hash."""
  cfg = config.rollouts
  rollout_cfg = {k: v for k, v in cfg.to_dict().items()
                 if k not in ("halt_after_shards", "batching", "continuous_blocks")
                 and (cfg.get("seeding", "random") != "random" or k not in PIT_FIELDS)
                 and (k != "dtype" or v)}  # '' (the prover's own) keeps old hashes
  identity = {"task": config.task.to_dict(), "rollouts": rollout_cfg,
              "policy": config.policy.to_dict(), "prover": config.prover.to_dict(),
              "model": config.model.to_dict(), "seed": config.seed}
  return config_lib.without_speed_only(identity)


def data_hash(config: ml_collections.ConfigDict) -> str:
  """The content hash of `data_identity`: rollouts made under another one are refused."""
  return artifacts.content_hash(data_identity(config))


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Writes (or completes) the rollout dataset of `config.rollouts.split`."""
  env = runtime.setup(config, workdir)
  cfg = config.rollouts
  out_dir = os.path.join(env.workdir, artifacts.rollouts_dir(cfg.split))
  identity = data_identity(config)
  digest = artifacts.content_hash(identity)
  manifest = trajectories.read_manifest(out_dir)
  if manifest is not None and manifest["config_hash"] != digest:
    raise config_lib.ConfigError(
        "rollouts", f"{out_dir} holds rollouts made with another config "
        f"(hash {manifest['config_hash']} != {digest}); use a new workdir")
  problems = list(env.task.split(cfg.split))
  if cfg.num_problems:
    problems = problems[:cfg.num_problems]
  shards = [problems[i:i + cfg.problems_per_shard]
            for i in range(0, len(problems), cfg.problems_per_shard)]
  if manifest is None:
    manifest = trajectories.new_manifest(digest, config=identity, num_shards=len(shards))
  done = set(manifest["shards_done"])
  if manifest.get("complete"):
    logging.info("rollouts: %s is complete; nothing to do", out_dir)
    return manifest
  runner = RolloutRunner(env, config)
  key = jax.random.PRNGKey(config.seed)
  bar = metrics.progress(len(shards), initial=len(done), desc=f"rollouts/{cfg.split}")
  written = 0
  with shd.activate(env.mesh, env.rules):
    for index, shard_problems in enumerate(shards):
      if index in done:
        continue
      table = runner.shard(shard_problems, index * cfg.problems_per_shard,
                           jax.random.fold_in(key, index))
      if metrics.is_lead_process():
        trajectories.write_shard(out_dir, index, table)
        manifest["shards_done"] = sorted(set(manifest["shards_done"]) | {index})
        for k, v in runner.budget.items():
          manifest["budget"][k] = manifest["budget"].get(k, 0) + v
        runner.budget = dict.fromkeys(runner.budget, 0)
        trajectories.write_manifest(out_dir, manifest)
      bar.update(1)
      written += 1
      if cfg.halt_after_shards and written >= cfg.halt_after_shards:
        logging.warning("rollouts: halting after %d shards (rollouts.halt_after_shards)",
                        written)
        break
  bar.close()
  manifest["models"] = runner.models()
  if {"policy", "prover"} <= set(manifest["models"]):
    manifest["flops"] = rollout_flops(manifest["budget"], manifest["models"])
  manifest["complete"] = len(manifest["shards_done"]) == len(shards)
  manifest["seconds"] = env.record.seconds()  # every attempt's, killed ones included
  if metrics.is_lead_process():
    trajectories.write_manifest(out_dir, manifest)
    if manifest["complete"]:
      manifest["stats"] = _stats(trajectories.load(out_dir))
      trajectories.write_manifest(out_dir, manifest)
  artifacts.write_json(os.path.join(env.workdir, artifacts.SUMMARY), manifest)
  return manifest


def rollout_flops(budget: dict[str, float], models: dict[str, dict[str, Any]]) -> float:
  """2 x params x tokens, each model at its own size: the policy for the seed and
  first-pit tokens it generated, the prover for the seeds it prefilled and the
  completions it wrote. The seed prompts' prefill is left out (small beside these)."""
  policy = budget.get("seed_tokens", 0) + budget.get("pit_tokens", 0)
  prover = budget.get("prefill_tokens", 0) + budget.get("mc_tokens", 0)
  return 2.0 * (models["policy"]["params"] * policy + models["prover"]["params"] * prover)


def _stats(table: trajectories.Trajectories) -> dict[str, Any]:
  """Dataset statistics for the manifest (accuracy of seeds, prefix counts)."""
  mask = trajectories.prefix_mask(table)
  q = table["q_hat"][mask]
  out = {"first_pit_rows": int((table["pit_from"] >= 0).sum())} if "pit_from" in table.columns else {}
  return {**out, "seeds": len(table),
          "seed_accuracy": float(np.mean(table.outcome)),
          "prefixes": int(mask.sum()),
          "mean_steps": float(np.mean(trajectories.num_steps(table))),
          "q_hat_mean": float(np.nanmean(q)) if q.size else float("nan"),
          "q_hat_high_fraction": float(np.mean(q >= 0.5)) if q.size else float("nan")}
