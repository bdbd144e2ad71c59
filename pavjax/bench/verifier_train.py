"""Verifier training throughput and model FLOP utilization (MFU).

  python -m pavjax.bench.verifier_train           # GPU: 125m and 350m, sequence 256
  python -m pavjax.bench.verifier_train --size=125m --batch=32,64,128

The step is the verifier job's own `verifier_train_step` (soft-label BCE at every
prefix end, balanced weights, AdamW with clipping, the non-finite guard), jitted
with the state donated as `runtime.make_trainer` does, on synthetic batches
of `batch` random sequences of `seq_len` tokens with `prefixes` prefix ends each.

FLOP convention (per trained token; forward + backward = 3 x forward):
  6 x N + 12 x L x T x (heads x head_dim)
with N the parameters the step multiplies by (every weight except the embedding:
the input embedding is a lookup and the verifier never computes the LM head), T
the sequence length (the attention term counts the full T x T score and value
products, as the implementation computes them, masked half included).
MFU = that x tokens/s over the datasheet peak (989 TFLOP/s bf16 dense on
H100 SXM / H200; n/a elsewhere) and over the matmul ceiling measured in this
run in the run's dtype.

Check first: on one fixed batch the loss must fall within `check_steps` steps
(and stay finite); the state is then re-initialized for timing.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from pavjax import config_lib
from pavjax import sharding as shd
from pavjax import training
from pavjax.bench import harness
from pavjax.jobs.train_verifier import verifier_train_step
from pavjax.models import Transformer

GPU = {"size": ("125m", "350m"), "batch": (64,), "dtype": "bfloat16", "vocab": 32000,
       "seq_len": 256, "prefixes": 8, "steps_per_run": 10}
CPU = {"size": ("test", "tiny"), "batch": (8,), "dtype": "float32", "vocab": 512,
       "seq_len": 64, "prefixes": 8, "steps_per_run": 3}


def add_flags(p):
  p.add_argument("--seq_len", type=int, default=None, help="tokens per sequence")
  p.add_argument("--prefixes", type=int, default=None, help="prefix ends per sequence")
  p.add_argument("--steps_per_run", type=int, default=None, help="train steps per timed run")
  p.add_argument("--check_steps", type=int, default=8, help="steps of the loss-decrease check")
  p.add_argument("--remat", action="store_true", help="rematerialize blocks (model.remat)")


def flops_per_token(cfg, seq_len: int) -> float:
  """Training FLOPs per token under the module docstring's convention."""
  n = cfg.num_params(include_embedding=False)
  return 6.0 * n + 12.0 * cfg.num_layers * seq_len * cfg.num_heads * cfg.head_dim


def synthetic_batch(batch: int, seq_len: int, prefixes: int, vocab: int, seed: int = 0) -> dict:
  rng = np.random.default_rng(seed)
  tokens = rng.integers(1, vocab, (batch, seq_len), dtype=np.int32)
  # Prefix ends spread over the sequence (the question's end, then step ends).
  positions = np.linspace(seq_len // 4, seq_len - 1, prefixes).astype(np.int32)
  positions = np.broadcast_to(positions, (batch, prefixes)).copy()
  targets = rng.uniform(0.0, 1.0, (batch, prefixes)).astype(np.float32)
  return {"tokens": tokens, "positions": positions, "mask": np.ones((batch, prefixes), bool),
          "targets": targets}


def make_step(args, size: str):
  """(model config, fresh-state function, jitted donated step)."""
  cfg = harness.model_config(size, args.vocab, args.dtype, max_len=args.seq_len)
  if args.remat:
    cfg = dataclasses.replace(cfg, remat=True)
  model = Transformer(cfg)
  optim = config_lib.base_config("train_verifier").optim
  optim.warmup_steps = 0
  tx = training.make_optimizer(optim, num_steps=1000)
  if args.fault == "frozen":  # an optimizer that never moves the weights
    tx = optax.set_to_zero()
  mesh = shd.make_mesh({"data": -1}, devices=jax.devices()[:1])
  spec = training.train_state_spec(model, tx, 0, jnp.zeros((1, 8), jnp.int32), mesh,
                                   shd.DEFAULT_RULES)
  step = jax.jit(functools.partial(verifier_train_step, model=model, tx=tx, loss="bce",
                                   balance=True, nonfinite="skip"), donate_argnums=(0,))
  return cfg, spec.init, step


def bench_one(args, size: str, batch: int, ceilings: harness.Ceilings | None) -> dict:
  cfg, init, step = make_step(args, size)
  data = jax.device_put(synthetic_batch(batch, args.seq_len, args.prefixes, args.vocab))

  # Check: the loss falls on a fixed batch.
  state = init()
  losses = []
  for _ in range(args.check_steps):
    state, m = step(state, data)
    losses.append(float(m["train/loss"]))
  if not np.all(np.isfinite(losses)) or not losses[-1] < 0.99 * losses[0]:
    raise harness.CorrectnessError(
        f"verifier_train {size}: loss did not fall on a fixed batch over {args.check_steps} "
        f"steps ({losses[0]:.4f} -> {losses[-1]:.4f})")
  print(f"verifier_train {size} b{batch}: loss on a fixed batch {losses[0]:.4f} -> "
        f"{losses[-1]:.4f} in {args.check_steps} steps", flush=True)

  holder = {"state": init()}

  def run():
    s = holder["state"]
    for _ in range(args.steps_per_run):
      s, m = step(s, data)
    holder["state"] = s
    return s.step, m

  t = harness.time_fn(run, warmup=args.warmup, runs=args.runs)
  tokens = batch * args.seq_len * args.steps_per_run
  tok_s = tokens / t.median
  flops = flops_per_token(cfg, args.seq_len) * tok_s
  peak = harness.device_info().peak_flops
  return {"size": size, "params": cfg.num_params(),
          "matmul_params": cfg.num_params(include_embedding=False), "batch": batch,
          "seq_len": args.seq_len, "dtype": args.dtype,
          "step_ms": 1e3 * t.median / args.steps_per_run, "tokens_s": tok_s,
          "model_flops_s": flops, "mfu_datasheet": flops / peak if peak else None,
          "mfu_measured": flops / ceilings.matmul_flops if ceilings else None,
          "loss_check": [losses[0], losses[-1]], "spread": t.spread}


def main(argv: Sequence[str] | None = None) -> list[dict]:
  args, ceilings = harness.start(argv, description=__doc__, gpu=GPU, cpu=CPU, add_flags=add_flags)
  results = [bench_one(args, size, batch, ceilings) for size in args.size for batch in args.batch]
  rows = [[r["size"], harness.fmt_si(r["params"]), harness.fmt_si(r["matmul_params"]), r["batch"],
           r["seq_len"], f"{r['step_ms']:.3g}", harness.fmt_si(r["tokens_s"]),
           harness.fmt_si(r["model_flops_s"], "FLOP/s"), harness.fmt_pct(r["mfu_datasheet"]),
           harness.fmt_pct(r["mfu_measured"])] for r in results]
  ceiling_note = (f"{harness.fmt_si(ceilings.matmul_flops, 'FLOP/s')} measured {args.dtype} matmul"
                  if ceilings else "not measured")
  harness.print_table(
      f"verifier_train: {harness.device_info().describe()}, {args.dtype} compute, float32 "
      "params + AdamW",
      ["model", "params", "N (matmul params)", "batch", "seq", "ms/step", "tokens/s",
       "model FLOP/s", "MFU vs 989 TFLOP/s", "MFU vs measured ceiling"], rows,
      notes=["FLOPs per token = 6 x N + 12 x layers x seq x heads x head_dim (forward + "
             "backward; N excludes the embedding, which is a lookup here: the verifier reads "
             f"only the value head). Measured ceiling: {ceiling_note}. MFU vs 989 TFLOP/s "
             "is n/a off H100 SXM / H200.",
             harness.spread_note(results)])
  harness.write_json(args.json, {"bench": "verifier_train",
                                "ceilings": ceilings and ceilings.to_dict(), "results": results})
  return results


if __name__ == "__main__":
  harness.run_main(main)
