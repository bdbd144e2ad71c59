"""One PAV-RL iteration split into generation, scoring and update; recompiles after warm-up.

  python -m pavjax.bench.rl_step                  # GPU: 125m, 256 prompts x 4 samples
  python -m pavjax.bench.rl_step --prompts=64

There is no RL job in pavjax yet, so this bench assembles an iteration from the
existing pieces, as an RL job would:

  generation  parameters cast to the compute dtype once, then
              `Sampler.generate(num_samples=samples)` at temperature 1 (no stop
              token: every response is `new_tokens` long);
  scoring     `verifiers.score` of a prover verifier (a second random-init model
              of the same size) at the question and every step end (steps are
              `step_len` tokens), `rewards.step_advantages`, and the Eq. 5
              per-token returns `rewards.token_rewards` (outcome + alpha x the
              step's own advantage) minus the mean outcome of the prompt's group;
  update      REINFORCE: -sum(return x log pi(token)) / tokens through a full
              forward of the policy, gradients accumulated over micro-batches
              (`lax.scan`), then `training.apply_update` (AdamW, clipping, the
              non-finite guard), the state donated.

The outcome reward is a stand-in rule computed on device (the response's last
token is even): the bench has no task, and host-side answer checking is not
what it measures. Each phase is timed to completion (`block_until_ready`).

Checks first: the sampler's greedy tokens against the uncached model, and the
log-probabilities the sampler reports against those the update recomputes for
the same tokens (the update's alignment of tokens and logits). After warm-up,
the timed iterations must trigger zero jit lowerings (`harness.CompileCounter`).
The last column compares the generation phase with a decode-bench-style
`generate` (greedy, prompts x samples distinct prompts) on the same model.
"""

from __future__ import annotations

import time
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from pavjax import config_lib
from pavjax import rewards
from pavjax import sharding as shd
from pavjax import training
from pavjax import verifiers
from pavjax.bench import harness
from pavjax.models import Transformer
from pavjax.sampling import Greedy, Sampler, Temperature, TransformerLM

GPU = {"size": ("125m",), "dtype": "bfloat16", "vocab": 32000, "prompts": 256,
       "samples": 4, "prompt_len": 64, "new_tokens": 192, "step_len": 16, "micro_batch": 32}
CPU = {"size": ("test",), "dtype": "float32", "vocab": 512, "prompts": 4,
       "samples": 4, "prompt_len": 16, "new_tokens": 32, "step_len": 8, "micro_batch": 16}

# Largest mean |sampler log-prob - update log-prob| accepted.
LOGPROB_TOLERANCE = {"float32": 1e-3, "bfloat16": 0.05}


def add_flags(p):
  p.add_argument("--prompts", type=int, default=None, help="prompts per iteration")
  p.add_argument("--samples", type=int, default=None, help="samples per prompt")
  p.add_argument("--prompt_len", type=int, default=None, help="prompt tokens")
  p.add_argument("--new_tokens", type=int, default=None, help="response tokens")
  p.add_argument("--step_len", type=int, default=None, help="tokens per reasoning step")
  p.add_argument("--micro_batch", type=int, default=None,
                 help="sequences per gradient micro-batch in the update")
  p.add_argument("--alpha", type=float, default=3.0, help="weight of the prover advantage")


class Iteration:
  """The three phases of one RL iteration, each a jitted program (see module docstring)."""

  def __init__(self, args, model: Transformer, verifier: Transformer, tx):
    self.args, self.model, self.verifier, self.tx = args, model, verifier, tx
    self.sampler = Sampler(TransformerLM(model))
    self.num_steps = args.new_tokens // args.step_len
    self.cast = jax.jit(lambda params: jax.tree.map(
        lambda x: x.astype(model.cfg.compute_dtype), params))
    self.score = jax.jit(self._score)
    self.update = jax.jit(self._update, donate_argnums=(0,))
    self.logprobs = jax.jit(self._logprobs)

  def generate(self, params, prompts, rng, method=Temperature(1.0)):
    a = self.args
    lengths = jnp.full((prompts.shape[0],), a.prompt_len, jnp.int32)
    return self.sampler.generate(self.cast(params), prompts, lengths, rng,
                                 max_new_tokens=a.new_tokens, method=method,
                                 num_samples=a.samples)

  def _score(self, vparams, prompts, tokens, lengths):
    a = self.args
    p, n, s = a.prompt_len, a.new_tokens, a.step_len
    seqs = jnp.concatenate([jnp.repeat(prompts, a.samples, axis=0), tokens], axis=1)
    b = seqs.shape[0]
    # Column 0: the question's last token; column h: the last token of step h.
    ends = jnp.concatenate([jnp.array([p - 1]), p + s * jnp.arange(1, self.num_steps + 1) - 1])
    ends = jnp.broadcast_to(ends, (b, self.num_steps + 1))
    exists = ends < (p + lengths)[:, None]
    q = verifiers.score(self.verifier, vparams, seqs, jnp.where(exists, ends, -1))
    adv = rewards.step_advantages(q[:, 1:], q[:, 0], exists[:, 1:])
    last = jnp.take_along_axis(tokens, jnp.maximum(lengths - 1, 0)[:, None], axis=1)[:, 0]
    outcome = (last % 2 == 0).astype(jnp.float32)  # stand-in outcome rule
    t = jnp.arange(n)[None, :]
    live = t < lengths[:, None]
    step_ids = jnp.where(live, t // s, -1)
    returns = rewards.token_rewards(outcome, adv, step_ids, a.alpha)
    baseline = jnp.repeat(outcome.reshape(-1, a.samples).mean(axis=1), a.samples)
    weights = jnp.where(live, returns - baseline[:, None], 0.0)
    return seqs, weights, live.astype(jnp.float32)

  def _token_logprobs(self, params, seqs):
    """log pi(response token) [B, N] from one uncached forward over prompt + response."""
    p = self.args.prompt_len
    logits = self.model.apply({"params": params}, seqs[:, :-1]).logits[:, p - 1:]
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return jnp.take_along_axis(logp, seqs[:, p:, None], axis=-1)[..., 0]

  def _logprobs(self, params, seqs):
    return self._token_logprobs(params, seqs)

  def _update(self, state, seqs, weights, live):
    mb = min(self.args.micro_batch, seqs.shape[0])
    chunks = seqs.shape[0] // mb
    total = jnp.maximum(live.sum(), 1.0)
    split = lambda x: x.reshape((chunks, mb) + x.shape[1:])

    def loss_fn(params, batch):
      s, w, m = batch
      return -(w * m * self._token_logprobs(params, s)).sum() / total

    def accumulate(carry, batch):
      loss, grads = carry
      l, g = jax.value_and_grad(loss_fn)(state.params, batch)
      return (loss + l, jax.tree.map(jnp.add, grads, g)), None

    zeros = jax.tree.map(jnp.zeros_like, state.params)
    (loss, grads), _ = jax.lax.scan(accumulate, (jnp.zeros(()), zeros),
                                    (split(seqs), split(weights), split(live)))
    new_state, grad_norm = training.apply_update(state, grads, self.tx, loss=loss,
                                                 nonfinite="skip")
    return new_state, {"loss": loss, "grad_norm": grad_norm}


def bench_one(args, size: str) -> dict:
  a = args
  if (a.prompts * a.samples) % min(a.micro_batch, a.prompts * a.samples):
    raise ValueError(f"--micro_batch={a.micro_batch} must divide prompts x samples")
  cfg = harness.model_config(size, a.vocab, a.dtype, max_len=a.prompt_len + a.new_tokens)
  model = Transformer(cfg)
  verifier = Transformer(cfg)
  optim = config_lib.base_config("rl").optim
  optim.lr = 1e-5
  tx = training.make_optimizer(optim, num_steps=1000)
  mesh = shd.make_mesh({"data": -1}, devices=jax.devices()[:1])
  spec = training.train_state_spec(model, tx, 0, jnp.zeros((1, 8), jnp.int32), mesh,
                                   shd.DEFAULT_RULES)
  state = spec.init()
  vparams = harness.init_params(verifier, seed=7)
  vparams = dict(vparams, value_w=jax.random.normal(jax.random.PRNGKey(8), (cfg.embed_dim,)))
  vparams = harness.cast_params(vparams, a.dtype)
  it = Iteration(a, model, verifier, tx)
  prompts = jnp.asarray(harness.random_tokens(0, (a.prompts, a.prompt_len), a.vocab))
  batch = a.prompts * a.samples

  # Check 1: greedy generation of the (cast) policy against the uncached model.
  gen_params = it.cast(state.params)
  if a.fault == "params":
    gen_params = harness.perturbed(gen_params)
  greedy = it.sampler.generate(gen_params, prompts,
                               jnp.full((a.prompts,), a.prompt_len, jnp.int32),
                               jax.random.PRNGKey(0), max_new_tokens=a.new_tokens,
                               method=Greedy())
  k = min(a.check_rows, a.prompts)
  print(harness.check_greedy(model, it.cast(state.params), np.asarray(prompts[:k]),
                            np.asarray(greedy.tokens[:k]), dtype=a.dtype,
                            what=f"rl_step policy {size}"), flush=True)
  # Check 2: sampler log-probs vs the update's recomputed log-probs, same tokens.
  out = it.generate(state.params, prompts, jax.random.PRNGKey(1))
  seqs, _, live = it.score(vparams, prompts, out.tokens, out.lengths)
  if a.fault == "shift":  # tokens one slot off from their logits
    seqs = jnp.roll(seqs, 1, axis=1)
  recomputed = it.logprobs(state.params, seqs)
  diff = np.abs(np.asarray(recomputed) - np.asarray(out.logprobs))[np.asarray(live) > 0]
  if not diff.mean() <= LOGPROB_TOLERANCE[a.dtype]:
    raise harness.CorrectnessError(
        f"rl_step {size}: log-probs recomputed for the update differ from the sampler's by "
        f"{diff.mean():.3g} on average (max {diff.max():.3g}; tolerance "
        f"{LOGPROB_TOLERANCE[a.dtype]})")
  print(f"rl_step {size}: sampler vs update log-probs: mean |diff| {diff.mean():.2g}, "
        f"max {diff.max():.2g} over {diff.size} tokens", flush=True)

  def iteration(state, i):
    rng = jax.random.PRNGKey(10 + i)
    t0 = time.perf_counter()
    out = it.generate(state.params, prompts, rng)
    if a.fault == "recompile" and i >= a.warmup:  # a batch shape warm-up never saw
      jax.block_until_ready(it.generate(state.params, prompts[:-1], rng))
    jax.block_until_ready(out)
    t1 = time.perf_counter()
    scored = it.score(vparams, prompts, out.tokens, out.lengths)
    jax.block_until_ready(scored)
    t2 = time.perf_counter()
    state, m = it.update(state, *scored)
    jax.block_until_ready((state, m))
    t3 = time.perf_counter()
    return state, m, (t1 - t0, t2 - t1, t3 - t2)

  for i in range(a.warmup):
    state, m, _ = iteration(state, i)
  times = []
  with harness.CompileCounter() as counter:
    for i in range(a.warmup, a.warmup + a.runs):
      state, m, t = iteration(state, i)
      times.append(t)
  if not np.isfinite(float(m["loss"])):
    raise harness.CorrectnessError(f"rl_step {size}: non-finite loss {float(m['loss'])}")
  if counter.lowerings:
    raise harness.CorrectnessError(
        f"rl_step {size}: {counter.lowerings} jit lowerings ({counter.compiles} XLA compiles) "
        f"during the {a.runs} timed iterations after warm-up; expected 0")
  gen_s, score_s, update_s = (float(np.median(x)) for x in zip(*times))
  total_s = float(np.median([sum(t) for t in times]))

  # The decode bench's workload on the same model and batch: greedy, distinct prompts.
  flat = jnp.asarray(harness.random_tokens(1, (batch, a.prompt_len), a.vocab))
  cast = it.cast(state.params)
  t_dec = harness.time_fn(lambda: it.sampler.generate(
      cast, flat, jnp.full((batch,), a.prompt_len, jnp.int32), jax.random.PRNGKey(0),
      max_new_tokens=a.new_tokens, method=Greedy()), warmup=a.warmup, runs=a.runs)
  tokens = batch * a.new_tokens
  return {"size": size, "params": cfg.num_params(), "prompts": a.prompts, "samples": a.samples,
          "prompt_len": a.prompt_len, "new_tokens": a.new_tokens, "dtype": a.dtype,
          "generation_s": gen_s, "scoring_s": score_s, "update_s": update_s,
          "iteration_s": total_s, "generation_tok_s": tokens / gen_s,
          "decode_bench_tok_s": tokens / t_dec.median,
          "gen_vs_decode": (tokens / gen_s) / (tokens / t_dec.median),
          "lowerings_after_warmup": counter.lowerings, "compiles_after_warmup": counter.compiles,
          "loss": float(m["loss"])}


def main(argv: Sequence[str] | None = None) -> list[dict]:
  args, ceilings = harness.start(argv, description=__doc__, gpu=GPU, cpu=CPU, add_flags=add_flags)
  results = [bench_one(args, size) for size in args.size]
  pct = lambda r, k: f"{r[k]:.3g} s ({r[k] / r['iteration_s']:.0%})"
  rows = [[r["size"], harness.fmt_si(r["params"]), f"{r['prompts']} x {r['samples']}",
           f"{r['prompt_len']}+{r['new_tokens']}", f"{r['iteration_s']:.3g} s",
           pct(r, "generation_s"), pct(r, "scoring_s"), pct(r, "update_s"),
           r["lowerings_after_warmup"], harness.fmt_si(r["generation_tok_s"]),
           harness.fmt_si(r["decode_bench_tok_s"]), harness.fmt_pct(r["gen_vs_decode"])]
          for r in results]
  harness.print_table(
      f"rl_step: {harness.device_info().describe()}, {args.dtype} compute, float32 params + AdamW",
      ["model", "params", "prompts x samples", "prompt+new", "iteration", "generation",
       "scoring", "update", "recompiles after warm-up", "generation tok/s",
       "decode-bench tok/s", "generation / decode-bench"], rows,
      notes=["Medians over the timed iterations; each phase is timed to completion. "
             "Recompiles = jit lowerings counted by jax.monitoring during the timed iterations. "
             "decode-bench = greedy Sampler.generate of prompts x samples distinct prompts, same "
             "model and lengths."])
  harness.write_json(args.json, {"bench": "rl_step", "ceilings": ceilings and ceilings.to_dict(),
                                "results": results})
  return results


if __name__ == "__main__":
  harness.run_main(main)
