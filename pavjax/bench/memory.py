"""Compiled memory of the train steps and the rollout prefill, LM-head chunking on and off.

  python -m pavjax.bench.memory                   # CPU: test model, vocab 32000, 4 x 1024
  python -m pavjax.bench.memory --vocab=262144 --batch=32 --seq_len=2048 --size=test

Nothing runs: each program is lowered and compiled for abstract inputs
(`jax.ShapeDtypeStruct`), and XLA's buffer assignment reports its memory
(`compiled.memory_analysis()`): temp (scratch live during the program),
argument and output bytes. So the shapes of a real run (a 256k vocabulary,
batch 32, 2048 tokens) can be asked for on a CPU with no memory to hold them;
a small `--size` keeps compilation quick, and the vocabulary, batch and length
are what the logits scale with.

Programs, each with the job's own step function (the state donated, as
`runtime.make_trainer` does):

  sft       `supervised.sft_train_step` (SFT and RFT), `logits_chunk` positions
            at a time vs the whole length (`train.logits_chunk=0`, the old path);
  rl        `jobs.rl.rl_train_step` (REINFORCE with the value baseline, the KL
            term and the entropy), the same two ways;
  verifier  `jobs.train_verifier.verifier_train_step`: it reads the value head
            only, so there is no LM head to chunk (a reference row);
  prefill   `sampling.sampler.prefill_sequences` of the rollouts job: logits at
            `prefixes` prefix ends per row vs every position (the old [B, W, V]
            return value).

Check: wherever the sequence is longer than the chunk and the logits outweigh
the hidden states (vocab >= 8 x embed_dim), chunking must save at least one
[B, T, V] float32 logits tensor of temp memory; the new prefill must return
less than the old one. A failed check raises (exit status 1). The
trunk's own activations (attention is [B, heads, T, T] per layer) are in every
row; the verifier row, which has no LM head, shows them alone.
"""

from __future__ import annotations

import functools
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from pavjax import config_lib
from pavjax import supervised
from pavjax import training
from pavjax.bench import harness
from pavjax.jobs import rl as rl_job
from pavjax.jobs.train_verifier import verifier_train_step
from pavjax.models import Transformer
from pavjax.sampling import TransformerLM
from pavjax.sampling import sampler as sampler_lib

GPU = {"size": ("125m",), "batch": (32,), "dtype": "bfloat16", "vocab": 152064,
       "seq_len": 2048, "logits_chunk": 256, "prefixes": 16, "new_tokens": 256}
CPU = {"size": ("test",), "batch": (4,), "dtype": "float32", "vocab": 32000,
       "seq_len": 1024, "logits_chunk": 128, "prefixes": 8, "new_tokens": 64}

WORKLOADS = ("sft", "rl", "verifier", "prefill")


def add_flags(p):
  p.add_argument("--seq_len", type=int, default=None, help="tokens per sequence (T, W)")
  p.add_argument("--logits_chunk", type=int, default=None,
                 help="positions per LM-head chunk (train.logits_chunk)")
  p.add_argument("--prefixes", type=int, default=None,
                 help="prefix ends per row whose logits the prefill returns")
  p.add_argument("--new_tokens", type=int, default=None,
                 help="cache slots after the prefilled sequences")
  p.add_argument("--workloads", default=",".join(WORKLOADS),
                 help=f"comma-separated subset of {WORKLOADS}")


def memory(fn, *args, donate: bool = False) -> dict:
  """Compiled temp / argument / output bytes of `jax.jit(fn)` at these (abstract) args."""
  jitted = jax.jit(fn, donate_argnums=(0,) if donate else ())
  stats = jitted.lower(*args).compile().memory_analysis()
  if stats is None:
    raise RuntimeError(f"backend {jax.default_backend()} reports no compiled memory")
  return {"temp": int(stats.temp_size_in_bytes), "argument": int(stats.argument_size_in_bytes),
          "output": int(stats.output_size_in_bytes)}


def abstract_state(model: Transformer, tx) -> training.TrainState:
  """The train state's shapes and dtypes (nothing allocated)."""

  def init():
    params = nn.unbox(model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32))["params"])
    return training.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                               opt_state=tx.init(params), rng=jax.random.PRNGKey(0))

  return jax.eval_shape(init)


def _spec(shape, dtype=jnp.float32):
  return jax.ShapeDtypeStruct(tuple(shape), jnp.dtype(dtype))


def sft_memory(model, tx, b: int, t: int, chunk: int) -> dict:
  batch = {"inputs": _spec((b, t), jnp.int32), "targets": _spec((b, t), jnp.int32),
           "mask": _spec((b, t))}
  step = functools.partial(supervised.sft_train_step, model=model, tx=tx, nonfinite="skip",
                           logits_chunk=chunk)
  return memory(step, abstract_state(model, tx), batch, donate=True)


def rl_memory(model, tx, b: int, t: int, chunk: int) -> dict:
  batch = {"tokens": _spec((b, t), jnp.int32), "mask": _spec((b, t)),
           "returns": _spec((b, t)), "outcome": _spec((b, 1)), "dense": _spec((b, 1)),
           "ref_logp": _spec((b, t))}
  step = functools.partial(rl_job.rl_train_step, model=model, tx=tx, nonfinite="skip",
                           estimator="reinforce_value", group_size=1, kl_coef=0.01,
                           value_coef=0.5, log_ratio_clamp=10.0, logits_chunk=chunk)
  return memory(step, abstract_state(model, tx), batch, donate=True)


def verifier_memory(model, tx, b: int, t: int, prefixes: int) -> dict:
  batch = {"tokens": _spec((b, t), jnp.int32), "positions": _spec((b, prefixes), jnp.int32),
           "mask": _spec((b, prefixes), bool), "targets": _spec((b, prefixes))}
  step = functools.partial(verifier_train_step, model=model, tx=tx, loss="bce", balance=True,
                           nonfinite="skip")
  return memory(step, abstract_state(model, tx), batch, donate=True)


def _full_prefill(lm, params, tokens, lengths, *, cache_size):
  """The old `prefill_sequences`: the LM head at every position, logits [B, W, V]."""
  b, w = tokens.shape
  cache = lm.init_cache(b, cache_size, w - lengths)
  logits, cache = lm(params, tokens, cache)
  return cache, logits.astype(jnp.float32)


def prefill_memory(model, b: int, t: int, prefixes: int, new_tokens: int, full: bool) -> dict:
  lm = TransformerLM(model)
  params = abstract_state(model, training.make_optimizer(
      config_lib.base_config("sft").optim, 10)).params
  tokens, lengths = _spec((b, t), jnp.int32), _spec((b,), jnp.int32)
  if full:
    fn = functools.partial(_full_prefill, lm, cache_size=t + new_tokens)
    return memory(fn, params, tokens, lengths)
  fn = functools.partial(sampler_lib.prefill_sequences, lm, cache_size=t + new_tokens)
  return memory(lambda p, x, n, at: fn(p, x, n, logits_at=at), params, tokens, lengths,
                _spec((b, prefixes), jnp.int32))


def bench_one(args, size: str, b: int, workload: str) -> list[dict]:
  """The rows of one workload: chunked (or new) and full-logits (old)."""
  t = args.seq_len
  cfg = harness.model_config(size, args.vocab, args.dtype, max_len=t + args.new_tokens)
  model = Transformer(cfg)
  tx = training.make_optimizer(config_lib.base_config("sft").optim, num_steps=1000)
  chunk = 0 if args.fault == "nochunk" else args.logits_chunk  # test hook: the check must fail
  base = {"workload": workload, "size": size, "vocab": args.vocab, "batch": b, "seq_len": t,
          "embed_dim": cfg.embed_dim, "logits_bytes": b * t * args.vocab * 4}
  if workload in ("sft", "rl"):
    fn = sft_memory if workload == "sft" else rl_memory
    return [{**base, "path": f"chunk {args.logits_chunk}", **fn(model, tx, b, t, chunk)},
            {**base, "path": "full logits", **fn(model, tx, b, t, 0)}]
  if workload == "verifier":
    return [{**base, "path": "no LM head", **verifier_memory(model, tx, b, t, args.prefixes)}]
  if workload == "prefill":
    full_new = args.fault == "nochunk"
    return [{**base, "path": f"logits at {args.prefixes} ends",
             **prefill_memory(model, b, t, args.prefixes, args.new_tokens, full_new)},
            {**base, "path": "full logits",
             **prefill_memory(model, b, t, args.prefixes, args.new_tokens, True)}]
  raise ValueError(f"--workloads: unknown workload {workload!r}; known: {WORKLOADS}")


def check(rows: list[dict], chunk: int) -> None:
  """Chunking saves at least one [B, T, V] float32 tensor of temp; the prefill returns less."""
  for new, old in zip(rows[::2], rows[1::2]):
    w = new["workload"]
    saved = old["temp"] - new["temp"]
    chunked = new["seq_len"] > chunk and new["vocab"] >= 8 * new["embed_dim"]
    if w in ("sft", "rl") and chunked and saved < new["logits_bytes"]:
      raise harness.CorrectnessError(
          f"{w} with logits_chunk={chunk}: temp {harness.fmt_si(new['temp'], 'B')} vs "
          f"{harness.fmt_si(old['temp'], 'B')} with full logits saves less than one [B, T, V] "
          f"float32 logits tensor ({harness.fmt_si(new['logits_bytes'], 'B')})")
    if w == "prefill" and new["output"] >= old["output"]:
      raise harness.CorrectnessError(
          f"prefill returns {harness.fmt_si(new['output'], 'B')}, no less than the full "
          f"logits path ({harness.fmt_si(old['output'], 'B')})")


def main(argv: Sequence[str] | None = None) -> list[dict]:
  args = harness.parse_flags(argv, description=__doc__, gpu=GPU, cpu=CPU, add_flags=add_flags)
  workloads = [w for w in args.workloads.split(",") if w]
  results = []
  for size in args.size:
    for b in args.batch:
      for w in workloads:
        pair = bench_one(args, size, b, w)
        if w != "verifier":
          check(pair, args.logits_chunk)
        results += pair
  gib = lambda n: f"{n / 2**30:.3g} GiB"
  rows = [[r["workload"], r["size"], r["vocab"], r["batch"], r["seq_len"], r["path"],
           gib(r["temp"]), gib(r["argument"]), gib(r["output"]), gib(r["temp"] + r["output"]),
           f"{r['temp'] / r['logits_bytes']:.2f}"] for r in results]
  harness.print_table(
      f"memory: {harness.device_info().describe()}, {args.dtype} compute, float32 params + "
      "AdamW, compiled (nothing run)",
      ["workload", "model", "vocab", "batch", "T", "path", "temp", "argument", "output",
       "temp + output", "temp / one [B,T,V] f32"], rows,
      notes=["temp: scratch XLA allocates while the program runs; argument: inputs (the "
             "train state, the batch); output: results (the donated state aliases its input)."
             " XLA may place scratch inside a large output's buffer (the old prefill's "
             "logits), so compare temp + output there. One [B, T, V] float32 logits tensor = "
             "batch x T x vocab x 4 bytes."])
  harness.write_json(args.json, {"bench": "memory", "results": results})
  return results


if __name__ == "__main__":
  harness.run_main(main)
