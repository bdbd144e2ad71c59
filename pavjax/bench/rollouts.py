"""Prefix-forked Monte-Carlo rollouts against independent ones (one prefill per rollout).

  python -m pavjax.bench.rollouts               # GPU: 125m, 512 trajectories x 8 x 4
  python -m pavjax.bench.rollouts --trajectories=128 --size=25m

Workload: `trajectories` synthetic seed responses (random prompt, then 8 steps of
`step_len` tokens, each ending with a step delimiter), a random-init prover, and
`n_mc` continuations of each of the 8 non-terminal step prefixes (the question,
then after steps 1..7), up to `max_response_len` new tokens at temperature 1,
each continuation scored on the host by the task, as the rollouts job does.

  * forked: `pavjax.jobs.rollouts.RolloutRunner._mc_q`, the job's own code: one
    `prefill_sequences` per block of `seq_batch` trajectories, then
    `fork_prefixes` of `fork_batch` prefixes x `n_mc` rows per call;
  * independent: every rollout prefills its own prefix (`Sampler.generate` over
    `fork_batch` x `n_mc` left-padded prefixes, one sample each), same decode
    batch, same prefill width, same host scoring;
  * per-prefix: in between, one prefill per prefix forked `n_mc` ways
    (`generate(num_samples=n_mc)`);
  * continuous: the same job code with `rollouts.batching=continuous`: one
    `Sampler.fork_continuous` per `continuous_blocks` prefill blocks, an arena
    of `fork_batch` x `n_mc` rows where a stopped row takes the next pending
    (prefix, sample) at once.

Second table, sampling whole responses as RFT, RL's evaluations and search's pool do:
`n_mc` responses to each of `sampling_prompts` prompts (the seeds' prompts, cycled) through
`evaluation.sample_responses`, calls of `seq_batch` prompts x `n_mc`, with
`sample.batching` static (each call decodes until its longest response stops) and
continuous (`continuous_blocks` calls' prompts through one arena of a call's rows,
`Sampler.generate_continuous`); the same responses, checked.

Length skew (`--eos_hazard`, `--skew=0` for the old fixed workload): a random
prover never stops by itself, so the bench's LM sets P(EOS) to `eos_hazard` at
every token and to 1 once a continuation reaches the end of the seed response.
A prefix after step h then continues for at most (8 - h) steps, and stops
earlier at a geometric time, as MC rollouts of a trained policy end wherever
its answer is written. Useful slots = the decode row-steps that produced a
continuation token (the rollouts' tokens) / all row-steps run; a static batch
idles its stopped rows until the longest stops.

Check first (greedy, on the first prefixes): the continuations that
`prefill_sequences` + `fork_prefixes` give, and those of an independent
`generate`, against the uncached model (`harness.check_greedy`).
"""

from __future__ import annotations

import types
from typing import Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from pavjax import sharding as shd
from pavjax import trajectories
from pavjax.bench import harness
from pavjax.jobs import rollouts as rollouts_job
from pavjax.models import Transformer
from pavjax.sampling import Greedy, Sampler, Temperature, TransformerLM, bucket_length, left_pad
from pavjax.sampling import sampler as sampler_lib
from pavjax.tasks import base

GPU = {"size": ("125m",), "dtype": "bfloat16", "vocab": 32000,
       "trajectories": 512, "prompt_len": 64, "step_len": 16, "n_mc": 4,
       "seq_batch": 64, "fork_batch": 128, "eos_hazard": 0.02, "sampling_prompts": 2048}
CPU = {"size": ("test",), "dtype": "float32", "vocab": 512,
       "trajectories": 16, "prompt_len": 8, "step_len": 8, "n_mc": 4,
       "seq_batch": 8, "fork_batch": 16, "eos_hazard": 0.02, "sampling_prompts": 128}

NUM_STEPS = 8
PAD, EOS, DELIM = 0, 1, 2


class SyntheticStepTask(base.Task):
  """Random prompts and responses of NUM_STEPS fixed-length steps (bench data only).

  A response is correct iff its last token before EOS equals the reference's: a
  cheap host-side rule standing in for answer checking.
  """

  name = "bench_steps"
  pad_id = PAD
  eos_id = EOS
  step_end_ids = (DELIM,)

  def __init__(self, num_problems: int, prompt_len: int, step_len: int, vocab: int, seed=0):
    self._vocab, self._prompt_len, self._step_len = vocab, prompt_len, step_len
    rng = np.random.default_rng(seed)
    self.problems = []
    for i in range(num_problems):
      prompt = tuple(int(t) for t in rng.integers(3, vocab, prompt_len))
      steps = []
      for h in range(NUM_STEPS):
        body = tuple(int(t) for t in rng.integers(3, vocab, step_len - 1))
        steps.append(body + ((EOS,) if h == NUM_STEPS - 1 else (DELIM,)))
      self.problems.append(base.Problem(uid=f"bench-{i}", prompt=prompt, steps=tuple(steps),
                                        answer=str(steps[-1][-2])))

  @property
  def vocab_size(self):
    return self._vocab

  @property
  def max_prompt_len(self):
    return self._prompt_len

  @property
  def max_response_len(self):
    return NUM_STEPS * self._step_len

  def split(self, name):
    return self.problems

  def encode_prompt(self, problem):
    return list(problem.prompt)

  def encode_solution(self, problem):
    return [t for s in problem.steps for t in s]

  def decode(self, tokens):
    return " ".join(map(str, tokens))

  def is_correct(self, response, problem):
    body, _ = base.response_until_eos(response, self.eos_id)
    ok = bool(body) and str(body[-1]) == problem.answer
    return base.Outcome(float(ok), base.CORRECT if ok else base.WRONG)


def add_flags(p):
  p.add_argument("--trajectories", type=int, default=None, help="seed responses")
  p.add_argument("--prompt_len", type=int, default=None, help="prompt tokens")
  p.add_argument("--step_len", type=int, default=None, help=f"tokens per step ({NUM_STEPS} steps)")
  p.add_argument("--n_mc", type=int, default=None, help="continuations per prefix")
  p.add_argument("--seq_batch", type=int, default=None, help="trajectories prefilled per call")
  p.add_argument("--fork_batch", type=int, default=None, help="prefixes continued per call")
  p.add_argument("--skip_per_prefix", action="store_true", help="skip the per-prefix variant")
  p.add_argument("--skip_independent", action="store_true", help="skip the independent variant")
  p.add_argument("--continuous_blocks", type=int, default=4,
                 help="prefill blocks (seq_batch each) decoded per continuous call")
  p.add_argument("--eos_hazard", type=float, default=None,
                 help="P(EOS) per token of the length-skewed workload")
  p.add_argument("--sampling_prompts", type=int, default=None,
                 help="prompts of the whole-response table (the trajectories' prompts, cycled)")
  p.add_argument("--skew", type=int, default=1,
                 help="1: length-skewed stops (EOS hazard, end of response); 0: none")


class SkewedStopLM(TransformerLM):
  """The transformer with EOS forced to probability `hazard`, and to ~1 at `end`.

  The EOS logit is replaced by logsumexp(other logits) + logit(hazard): exactly
  `hazard` of the mass, whatever the random weights say. `end` is the sequence
  position (the seed response's last) from which EOS is all but certain.
  `fixed` ({token: probability}) pins other tokens' probabilities the same way (a
  step delimiter's, for step-length skew); those of EOS and `fixed` sum below 1.
  """

  def __init__(self, model, *, eos: int, hazard: float, end: int,
               fixed: dict[int, float] | None = None):
    super().__init__(model)
    self.eos, self.end = eos, end
    self.fixed = {int(t): float(p) for t, p in (fixed or {}).items()}
    rest = 1.0 - hazard - sum(self.fixed.values())
    if rest <= 0 or eos in self.fixed:
      raise ValueError(f"EOS hazard {hazard} and fixed {self.fixed} leave no mass")
    self.log_odds = float(np.log(hazard / rest))
    self.fixed_odds = {t: float(np.log(p / rest)) for t, p in self.fixed.items()}

  def _skew(self, logits, positions):
    # logits [B, T, V] predict the token after positions [B, T].
    pinned = jnp.asarray([self.eos, *self.fixed], jnp.int32)
    others = jax.nn.logsumexp(logits.at[..., pinned].set(-jnp.inf), axis=-1)
    odds = jnp.where(positions + 1 >= self.end, 30.0, self.log_odds)
    logits = logits.at[..., self.eos].set(others + odds)
    for tok, tok_odds in self.fixed_odds.items():
      logits = logits.at[..., tok].set(others + tok_odds)
    return logits

  def __call__(self, params, tokens, cache):
    t = tokens.shape[1]
    slots = jnp.reshape(cache.index, (-1, 1)) + jnp.arange(t)[None, :]
    logits, new_cache = super().__call__(params, tokens, cache)
    return self._skew(logits, slots - cache.start[:, None]), new_cache

  def logits_at(self, params, tokens, cache, at):
    logits, new_cache = super().logits_at(params, tokens, cache, at)
    slots = jnp.reshape(cache.index, (-1, 1)) + at
    return self._skew(logits, slots - cache.start[:, None]), new_cache


class CountingSampler(Sampler):
  """The job's sampler, also counting the decode row-steps each sampling call ran."""

  def __init__(self, lm, *, pad_id: int = 0):
    super().__init__(lm, pad_id=pad_id)
    self.row_steps = 0

  def _static(self, out):
    lengths = np.asarray(out.lengths)  # the loop ran until its longest row stopped
    self.row_steps += int(lengths.max(initial=0)) * len(lengths)
    return out

  def _arena(self, out, slots: int):
    self.row_steps += int(out.steps) * slots  # every step ran every arena row
    return out

  def fork_prefixes(self, *args, **kw):
    return self._static(super().fork_prefixes(*args, **kw))

  def generate(self, *args, **kw):
    return self._static(super().generate(*args, **kw))

  def fork_continuous(self, *args, **kw):
    return self._arena(super().fork_continuous(*args, **kw), kw["slots"])

  def generate_continuous(self, *args, **kw):
    return self._arena(super().generate_continuous(*args, **kw), kw["slots"])


def make_runner(task, model, params, args, lm=None) -> rollouts_job.RolloutRunner:
  """The job's RolloutRunner around bench data (its __init__ wants checkpoints and a config)."""
  mesh = shd.make_mesh({"data": -1}, devices=jax.devices()[:1])
  runner = object.__new__(rollouts_job.RolloutRunner)
  runner.env = types.SimpleNamespace(task=task, mesh=mesh, rules=shd.DEFAULT_RULES)
  runner.config = types.SimpleNamespace(rollouts=ml_collections.ConfigDict(
      {"n_mc": args.n_mc, "temperature": 1.0, "batching": "static",
       "continuous_blocks": args.continuous_blocks}))
  runner.policy = None
  runner.prover_kind = "checkpoint"
  runner.prover_params = params
  runner.sampler = CountingSampler(lm or TransformerLM(model), pad_id=task.pad_id)
  runner.max_steps = task.max_response_len
  runner.width = bucket_length(task.max_prompt_len + task.max_response_len)
  runner.seq_rows = shd.round_to_data_parallel(args.seq_batch, mesh)
  runner.fork_rows = shd.round_to_data_parallel(args.fork_batch, mesh)
  runner.budget = {"seed_tokens": 0, "mc_tokens": 0, "prefill_tokens": 0, "mc_rollouts": 0}
  return runner


def seed_table(task: SyntheticStepTask) -> tuple[trajectories.Trajectories, list]:
  """The reference solutions as seeds, segmented as `RolloutRunner.shard` does."""
  prompts = [task.encode_prompt(p) for p in task.problems]
  table = trajectories.from_responses(
      task, prompts, [task.encode_solution(p) for p in task.problems], task.problems,
      range(len(task.problems)), max_steps=task.max_response_len)
  return table, list(task.problems)


def seed_rows(table: trajectories.Trajectories, problems) -> list[dict]:
  """Row dicts of a table for the baselines: prompt, response, step ends, problem."""
  steps = trajectories.num_steps(table)
  return [dict(problem=int(table.problem[i]), prompt=table.prompt(i),
               response=table.response(i),
               ends=[int(e) for e in table.prefix_ends[i, 1:steps[i] + 1]],
               problem_obj=problems[i]) for i in range(len(table))]


def prefix_list(rows) -> list[tuple[int, int, int]]:
  """(row, column, prefix length) of every non-terminal prefix, in `_mc_q`'s order."""
  out, seen = [], set()
  for i, r in enumerate(rows):
    if r["problem"] not in seen:
      seen.add(r["problem"])
      out.append((i, 0, len(r["prompt"])))
    for col in range(1, len(r["ends"])):
      out.append((i, col, r["ends"][col - 1] + 1))
  return out


def forked(runner, table, problems, rng, batching="static"):
  """The job's Monte-Carlo Q: returns (successes, counts, q_hat) per prefix column."""
  runner.config.rollouts.batching = batching
  n, h = len(table), runner.max_steps
  success, count = np.zeros((n, h + 1), np.int32), np.zeros((n, h + 1), np.int32)
  q_hat = np.full((n, h + 1), np.nan, np.float32)
  with shd.activate(runner.env.mesh, runner.env.rules):
    runner._mc_q(table, problems, success, count, q_hat, rng)  # pylint: disable=protected-access
  return success, count, q_hat


def independent(runner, rows, rng, *, per_prefix: bool):
  """Rollouts without forking: every rollout (or every prefix) prefills on its own."""
  task, n_mc = runner.env.task, runner.config.rollouts.n_mc
  temp = Temperature(runner.config.rollouts.temperature)
  n, h = len(rows), runner.max_steps
  success, count = np.zeros((n, h + 1), np.int32), np.zeros((n, h + 1), np.int32)
  todo = prefix_list(rows)
  for call, f in enumerate(range(0, len(todo), runner.fork_rows)):
    chunk = todo[f:f + runner.fork_rows]
    fill = chunk + [chunk[0]] * (runner.fork_rows - len(chunk))
    ctx = [rows[i]["prompt"] + rows[i]["response"][:plen - len(rows[i]["prompt"])]
           for i, _, plen in fill]
    prompts = ctx if per_prefix else [c for c in ctx for _ in range(n_mc)]
    tokens, lengths = left_pad(prompts, task.pad_id, buckets=(runner.width,))
    out = runner.sampler.generate(
        runner.prover_params, jnp.asarray(tokens), jnp.asarray(lengths),
        jax.random.fold_in(rng, call), max_new_tokens=task.max_response_len, method=temp,
        stop_tokens=(task.eos_id,), num_samples=n_mc if per_prefix else 1)
    out = jax.device_get(out)
    for k, (i, col, plen) in enumerate(chunk):
      r = rows[i]
      done = r["response"][:plen - len(r["prompt"])]
      wins = 0
      for m in range(n_mc):
        row = k * n_mc + m
        cont = [int(t) for t in out.tokens[row, :int(out.lengths[row])]]
        wins += task.is_correct((done + cont)[:task.max_response_len + 1],
                                r["problem_obj"]).reward
      success[i, col], count[i, col] = int(wins), n_mc
  return success, count


def check(runner, rows, model, params, args, size):
  """Greedy continuations of the first prefixes, forked and independent, vs the reference."""
  task = runner.env.task
  sampler = runner.sampler
  block = list(range(min(runner.seq_rows, len(rows))))
  seqs = [rows[i]["prompt"] + rows[i]["response"] for i in block]
  tokens, lengths = left_pad(seqs, task.pad_id, buckets=(runner.width,))
  todo = [p for p in prefix_list(rows) if p[0] in block][:min(args.check_rows, runner.fork_rows)]
  seq_rows = np.array([i for i, _, _ in todo], np.int32)
  ends = np.array([runner.width - lengths[i] + plen - 1 for i, _, plen in todo], np.int32)
  logits_at, picks = sampler_lib.prefix_logit_slots(seq_rows, ends, num_rows=len(block),
                                                    width=runner.width)
  cache, logits = sampler.prefill_sequences(runner.prover_params, jnp.asarray(tokens),
                                            jnp.asarray(lengths),
                                            cache_size=runner.width + task.max_response_len,
                                            logits_at=jnp.asarray(logits_at))
  out = sampler.fork_prefixes(runner.prover_params, cache, logits, jnp.asarray(seq_rows),
                              jnp.asarray(ends), jnp.asarray(picks), jax.random.PRNGKey(0),
                              width=runner.width, max_new_tokens=task.max_response_len,
                              method=Greedy(), stop_tokens=(task.eos_id,))
  ctx = [rows[i]["prompt"] + rows[i]["response"][:plen - len(rows[i]["prompt"])]
         for i, _, plen in todo]
  msgs = [harness.check_greedy(model, params, ctx, np.asarray(out.tokens), dtype=args.dtype,
                              gen_len=np.asarray(out.lengths), what=f"forked {size}")]
  ptoks, plens = left_pad(ctx, task.pad_id, buckets=(runner.width,))
  ind = sampler.generate(runner.prover_params, jnp.asarray(ptoks), jnp.asarray(plens),
                         jax.random.PRNGKey(0), max_new_tokens=task.max_response_len,
                         method=Greedy(), stop_tokens=(task.eos_id,))
  msgs.append(harness.check_greedy(model, params, ctx, np.asarray(ind.tokens), dtype=args.dtype,
                                  gen_len=np.asarray(ind.lengths), what=f"independent {size}",
                                  literal_rows=0))
  return msgs


def bench_one(args, size: str) -> dict:
  task = SyntheticStepTask(args.trajectories, args.prompt_len, args.step_len, args.vocab)
  cfg = harness.model_config(size, args.vocab, args.dtype,
                            max_len=bucket_length(args.prompt_len + NUM_STEPS * args.step_len)
                            + NUM_STEPS * args.step_len)
  model = Transformer(cfg)
  params = harness.cast_params(harness.init_params(model), args.dtype)
  run_params = harness.perturbed(params) if args.fault == "params" else params
  plain = make_runner(task, model, run_params, args)
  table, problems = seed_table(task)
  rows = seed_rows(table, problems)
  for msg in check(plain, rows, model, params, args, size):
    print(msg, flush=True)
  runner = plain
  if args.skew:
    lm = SkewedStopLM(model, eos=task.eos_id, hazard=args.eos_hazard,
                      end=args.prompt_len + task.max_response_len - 1)
    runner = make_runner(task, model, run_params, args, lm=lm)

  rng = jax.random.PRNGKey(1)
  timing = dict(warmup=args.warmup, runs=args.runs)
  results = {}
  for batching in ("static", "continuous"):
    # (--fault=keys: the continuous run draws other keys, which the check must catch.)
    key = jax.random.fold_in(rng, 1) if batching == "continuous" and args.fault == "keys" else rng
    results[batching] = forked(runner, table, problems, key, batching)  # also the warm-up
  # Continuous batching must give the static path's completions (same per-item keys): the
  # same counts, and the same successes but for rare rounding flips (`check_agreement`).
  (succ_a, count_a, q_a), (succ_b, count_b, q_b) = results["static"], results["continuous"]
  if not np.array_equal(count_a, count_b):
    raise harness.CorrectnessError("continuous batching: MC counts differ from static "
                                  f"batching's at {int(np.sum(count_a != count_b))} columns")
  differ = ~np.isclose(succ_a, succ_b, equal_nan=True) | ~np.isclose(q_a, q_b, equal_nan=True)
  differ_share = harness.check_agreement("continuous batching: MC prefix columns",
                                         int(differ.sum()), differ.size, args.dtype)
  num_prefixes = len(prefix_list(rows))
  total = num_prefixes * args.n_mc
  count = results["static"][1]
  if int(count.sum()) != total:
    raise harness.CorrectnessError(f"forked rollouts: {int(count.sum())} continuations "
                                  f"counted, expected {total}")

  def timed(batching):
    """Time, useful-slot fraction and lowerings after warm-up of one batching."""
    runner.budget["mc_tokens"], runner.sampler.row_steps = 0, 0
    with harness.CompileCounter() as compiles:
      t = harness.time_fn(lambda: forked(runner, table, problems, rng, batching),
                          warmup=0, runs=args.runs)
    useful = runner.budget["mc_tokens"] / max(runner.sampler.row_steps, 1)
    return t, useful, compiles.lowerings, runner.budget["mc_tokens"] // args.runs

  sampling = sampling_compare(runner, task, problems, run_params, args, rng)
  t_fork, useful_static, low_static, tokens = timed("static")
  t_cont, useful_cont, low_cont, _ = timed("continuous")
  t_ind = None if args.skip_independent else harness.time_fn(
      lambda: independent(runner, rows, rng, per_prefix=False), **timing)
  t_pp = None if args.skip_per_prefix else harness.time_fn(
      lambda: independent(runner, rows, rng, per_prefix=True), **timing)
  rate = lambda t: total / t.median if t else None
  # Memory of the decode rows' caches (both batchings hold fork_batch x n_mc dense rows of
  # width + response slots). Each row holds its own copy of its prefix; cache blocks shared
  # by a prefix's n_mc samples (a paged cache, not built) would store each prefix once.
  slot = harness.kv_bytes_per_sequence(cfg, 1)
  rows_kv = runner.fork_rows * args.n_mc
  mean_prefix = float(np.mean([plen for _, _, plen in prefix_list(rows)]))
  arena_bytes = rows_kv * (runner.width + task.max_response_len) * slot
  copy_bytes = rows_kv * mean_prefix * slot
  return {"size": size, "params": cfg.num_params(), "trajectories": len(rows),
          "prefixes": num_prefixes, "n_mc": args.n_mc, "rollouts": total,
          "prompt_len": args.prompt_len, "response_len": task.max_response_len,
          "skew": bool(args.skew), "eos_hazard": args.eos_hazard if args.skew else 0.0,
          "mc_tokens": tokens, "mean_continuation": tokens / total,
          "prefill_width": runner.width, "forked_rollouts_s": rate(t_fork),
          "forked_tok_s": tokens / t_fork.median,
          "continuous_rollouts_s": rate(t_cont), "continuous_tok_s": tokens / t_cont.median,
          "useful_static": useful_static, "useful_continuous": useful_cont,
          "continuous_ratio": t_fork.median / t_cont.median,
          "lowerings_after_warmup": low_static + low_cont,
          "arena_kv_bytes": arena_bytes, "prefix_copy_bytes": copy_bytes,
          "shared_prefix_saving": copy_bytes * (args.n_mc - 1) / args.n_mc / arena_bytes,
          "independent_rollouts_s": rate(t_ind), "per_prefix_rollouts_s": rate(t_pp),
          "ratio": t_ind.median / t_fork.median if t_ind else None,
          "ratio_per_prefix": t_pp.median / t_fork.median if t_pp else None,
          "spread": max(t.spread for t in (t_fork, t_cont, t_ind, t_pp) if t),
          "continuous_differ_share": differ_share, **sampling}


def sampling_compare(runner, task, problems, params, args, rng) -> dict:
  """Whole responses (RFT, evaluations, search pools) by static and continuous batching."""
  from pavjax import evaluation  # pylint: disable=g-import-not-at-top
  problems = [problems[i % len(problems)] for i in range(args.sampling_prompts)]

  def sample(batching):
    return evaluation.sample_responses(
        task, runner.sampler, params, problems, rng=rng, mesh=runner.env.mesh,
        method=Temperature(1.0), max_new_tokens=task.max_response_len,
        batch_size=args.seq_batch * args.n_mc, num_samples=args.n_mc, batching=batching,
        blocks=args.continuous_blocks)

  out = {}
  tokens = {b: [[r.tokens for r in g] for g in sample(b)] for b in ("static", "continuous")}
  # (also the warm-up of both)
  pairs = [(a, b) for ga, gb in zip(tokens["static"], tokens["continuous"])
           for a, b in zip(ga, gb)]
  out["sampling_differ_share"] = harness.check_agreement(
      "continuous batching: sampled responses", sum(a != b for a, b in pairs), len(pairs),
      args.dtype)
  count = sum(len(t) for g in tokens["static"] for t in g)
  for batching in ("static", "continuous"):
    runner.sampler.row_steps = 0
    with harness.CompileCounter() as compiles:
      t = harness.time_fn(lambda: sample(batching), warmup=0, runs=args.runs)
    out[f"sampling_{batching}_tok_s"] = count / t.median
    out[f"sampling_useful_{batching}"] = count * args.runs / max(runner.sampler.row_steps, 1)
    out[f"sampling_{batching}_lowerings"] = compiles.lowerings
    out[f"sampling_{batching}_s"] = t.median
  out["sampling_tokens"], out["sampling_prompts"] = count, len(problems)
  out["sampling_ratio"] = out["sampling_static_s"] / out["sampling_continuous_s"]
  return out


def main(argv: Sequence[str] | None = None) -> list[dict]:
  args, ceilings = harness.start(argv, description=__doc__, gpu=GPU, cpu=CPU, add_flags=add_flags)
  results = [bench_one(args, size) for size in args.size]
  rows = [[r["size"], harness.fmt_si(r["params"]),
           f"{r['trajectories']} x {r['prefixes'] // r['trajectories']} x {r['n_mc']}",
           f"{r['prompt_len']}+{r['response_len']}", f"{r['mean_continuation']:.1f}",
           harness.fmt_si(r["forked_tok_s"]), harness.fmt_pct(r["useful_static"]),
           harness.fmt_si(r["continuous_tok_s"]), harness.fmt_pct(r["useful_continuous"]),
           harness.fmt_ratio(r["continuous_ratio"]), r["lowerings_after_warmup"],
           harness.fmt_si(r["forked_rollouts_s"]), harness.fmt_si(r["independent_rollouts_s"]),
           harness.fmt_ratio(r["ratio"]), harness.fmt_si(r["per_prefix_rollouts_s"]),
           harness.fmt_ratio(r["ratio_per_prefix"])]
          for r in results]
  skew = (f"EOS hazard {args.eos_hazard} per token, certain at the seed response's end"
          if args.skew else "no length skew (continuations run to the budget)")
  harness.print_table(
      f"rollouts: {harness.device_info().describe()}, {args.dtype}, temperature 1, {skew}",
      ["model", "params", "trajectories x prefixes x samples", "prompt+response",
       "mean tokens/rollout", "static tok/s", "static useful slots", "continuous tok/s",
       "continuous useful slots", "continuous / static", "lowerings after warm-up",
       "forked rollouts/s", "independent rollouts/s", "forked / independent",
       "per-prefix rollouts/s", "forked / per-prefix"], rows,
      notes=[f"static (= forked) and continuous = the rollouts job's RolloutRunner._mc_q with "
             f"rollouts.batching static / continuous (seq_batch {args.seq_batch}, fork_batch "
             f"{args.fork_batch}, continuous_blocks {args.continuous_blocks}, decode rows "
             "fork_batch x n_mc in both; the same completions, "
             "checked); independent = one prefill per rollout; per-prefix = one prefill per "
             "prefix, forked n_mc ways. Same prefill width, continuation budget and host-side "
             "scoring in all. Useful slots = continuation tokens / decode row-steps run.",
             *[f"{r['size']}: decode rows' KV cache {harness.fmt_si(r['arena_kv_bytes'], 'B')}"
               f", of which prefix copies {harness.fmt_si(r['prefix_copy_bytes'], 'B')} (mean "
               "prefix; a row copies its prefix from the prefill, a gather, no forward pass); "
               "prefix blocks shared by a prefix's samples would save "
               f"{harness.fmt_pct(r['shared_prefix_saving'])} of it" for r in results],
             harness.spread_note(results)])
  harness.print_table(
      f"sampling whole responses: {harness.device_info().describe()}, {args.dtype}, "
      f"temperature 1, {skew}",
      ["model", "prompts x samples", "mean tokens/response", "static tok/s",
       "static useful slots", "continuous tok/s", "continuous useful slots",
       "continuous / static", "lowerings after warm-up"],
      [[r["size"], f"{r['sampling_prompts']} x {r['n_mc']}",
        f"{r['sampling_tokens'] / (r['sampling_prompts'] * r['n_mc']):.1f}",
        harness.fmt_si(r["sampling_static_tok_s"]), harness.fmt_pct(r["sampling_useful_static"]),
        harness.fmt_si(r["sampling_continuous_tok_s"]),
        harness.fmt_pct(r["sampling_useful_continuous"]), harness.fmt_ratio(r["sampling_ratio"]),
        r["sampling_static_lowerings"] + r["sampling_continuous_lowerings"]] for r in results],
      notes=[f"evaluation.sample_responses with sample.batching static / continuous: calls "
             f"of seq_batch {args.seq_batch} prompts x n_mc samples; continuous decodes "
             f"continuous_blocks {args.continuous_blocks} calls' prompts through one arena of "
             "a call's rows. The same responses (checked). Useful slots = response tokens / "
             "decode row-steps run."])
  harness.write_json(args.json, {"bench": "rollouts", "ceilings": ceilings and ceilings.to_dict(),
                                "results": results})
  return results


if __name__ == "__main__":
  harness.run_main(main)
