"""Decode throughput of the KV-cache sampler against the bandwidth floor and naive loops.

  python -m pavjax.bench.decode                      # GPU: 25m,125m,350m x batch 256,1024
  python -m pavjax.bench.decode --size=125m --batch=1024

Per model size and batch: random prompts of `prompt_len` tokens, `new_tokens`
greedy tokens (no stop token, so every row decodes the full length).

  * check: the sampler's greedy tokens against the uncached model
    (`harness.check_greedy`), before anything is timed; the two naive loops'
    tokens are checked the same way;
  * generate tok/s: `Sampler.generate` end to end (prefill + decode, one program);
  * decode tok/s, ms/step: `Sampler.decode` alone (the while loop), after a prefill;
  * floor: one decode step must read every cache slot of every row (the cache is
    not length-aware) and every weight once, so it takes at least
    (batch x KV bytes per sequence + weight bytes) / bandwidth; % of floor is
    floor / measured step time (bandwidth: datasheet when the device is known,
    else the measured copy bandwidth);
  * naive loops, end to end like `generate`, same full-length cache:
    python: a jitted one-token step called from a Python loop, no buffer donation
    (each step writes a fresh copy of the cache); fori: prefill and a
    `lax.fori_loop` over the same step in one jitted program.

Parameters are cast to the compute dtype once before timing (`--fp32_params`
keeps them float32 as the jobs hold them; each step then reads 4-byte weights).
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from pavjax.bench import harness
from pavjax.models import Transformer
from pavjax.sampling import Greedy, Sampler, TransformerLM
from pavjax.sampling.sampler import init_state, row_keys_for

GPU = {"size": ("25m", "125m", "350m"), "batch": (256, 1024), "dtype": "bfloat16",
       "vocab": 32000, "prompt_len": 64, "new_tokens": 192}
CPU = {"size": ("test", "tiny"), "batch": (8, 32), "dtype": "float32", "vocab": 512,
       "prompt_len": 16, "new_tokens": 48}


def add_flags(p):
  p.add_argument("--prompt_len", type=int, default=None, help="prompt tokens per row")
  p.add_argument("--new_tokens", type=int, default=None, help="generated tokens per row")
  p.add_argument("--fp32_params", action="store_true",
                 help="feed float32 parameters to the sampler (as the jobs do)")
  p.add_argument("--skip_naive", action="store_true", help="skip the naive baselines")


def naive_python_generate(lm: TransformerLM, prefill_fn, step_fn, params, prompts, num_new):
  """Greedy decoding, one jitted step per token from Python (no donation)."""
  b, p = prompts.shape
  cache, logits = prefill_fn(params, prompts, jnp.full((b,), p, jnp.int32),
                             cache_size=p + num_new)
  tok = jnp.argmax(logits, axis=-1).astype(jnp.int32)
  out = []
  for _ in range(num_new):
    out.append(tok)
    tok, cache = step_fn(params, cache, tok)
  return jnp.stack(out, axis=1)


def make_naive(lm: TransformerLM):
  """(python-loop generate, fori-loop generate), both greedy over a full-length cache."""

  @jax.jit
  def step(params, cache, tok):
    logits, cache = lm(params, tok[:, None], cache)
    return jnp.argmax(logits[:, -1], axis=-1).astype(jnp.int32), cache

  prefill_fn = jax.jit(functools.partial(_prefill, lm), static_argnames=("cache_size",))

  @functools.partial(jax.jit, static_argnames=("num_new",))
  def fori_generate(params, prompts, num_new):
    b, p = prompts.shape
    cache, logits = _prefill(lm, params, prompts, jnp.full((b,), p, jnp.int32),
                             cache_size=p + num_new)
    tok = jnp.argmax(logits, axis=-1).astype(jnp.int32)

    def body(t, carry):
      tok, cache, out = carry
      out = jax.lax.dynamic_update_slice(out, tok[:, None], (0, t))
      logits, cache = lm(params, tok[:, None], cache)
      return jnp.argmax(logits[:, -1], axis=-1).astype(jnp.int32), cache, out

    out = jnp.zeros((b, num_new), jnp.int32)
    return jax.lax.fori_loop(0, num_new, body, (tok, cache, out))[2]

  python_generate = functools.partial(naive_python_generate, lm, prefill_fn, step)
  return python_generate, fori_generate


def _prefill(lm, params, prompts, lengths, *, cache_size):
  b, p = prompts.shape
  cache = lm.init_cache(b, cache_size, p - lengths)
  logits, cache = lm(params, prompts, cache)
  return cache, logits[:, -1, :].astype(jnp.float32)


def bench_one(args, size: str, batch: int, ceilings: harness.Ceilings | None) -> dict:
  p, n = args.prompt_len, args.new_tokens
  cfg = harness.model_config(size, args.vocab, args.dtype, max_len=p + n)
  model = Transformer(cfg)
  params = harness.init_params(model)
  if not args.fp32_params:
    params = harness.cast_params(params, args.dtype)
  lm = TransformerLM(model)
  sampler = Sampler(lm)
  run_params = harness.perturbed(params) if args.fault == "params" else params
  prompts = jnp.asarray(harness.random_tokens(batch, (batch, p), args.vocab))
  lengths = jnp.full((batch,), p, jnp.int32)
  rng = jax.random.PRNGKey(0)
  method = Greedy()
  generate = lambda: sampler.generate(run_params, prompts, lengths, rng, max_new_tokens=n,
                                      method=method)

  # Correctness first: greedy tokens against the uncached model.
  k = min(args.check_rows, batch)
  ctx = np.asarray(prompts[:k])
  tokens = np.asarray(generate().tokens)
  print(harness.check_greedy(model, params, ctx, tokens[:k], dtype=args.dtype,
                            what=f"decode {size} b{batch}"), flush=True)
  naive = None
  if not args.skip_naive:
    python_generate, fori_generate = make_naive(lm)
    naive = {"python": lambda: python_generate(run_params, prompts, n),
             "fori": lambda: fori_generate(run_params, prompts, num_new=n)}
    for name, fn in naive.items():
      got = np.asarray(fn())
      print(harness.check_greedy(model, params, ctx, got[:k], dtype=args.dtype,
                                what=f"naive-{name} {size} b{batch}", literal_rows=0), flush=True)

  timing = dict(warmup=args.warmup, runs=args.runs)
  t_gen = harness.time_fn(generate, **timing)

  def setup():
    cache, logits = sampler.prefill(run_params, prompts, lengths, cache_size=p + n)
    return (init_state(cache, logits, row_keys_for(rng, batch), n),)

  t_dec = harness.time_fn(lambda state: sampler.decode(run_params, state, method=method,
                                                      stop_tokens=()), setup=setup, **timing)
  t_naive = {name: harness.time_fn(fn, **timing) for name, fn in (naive or {}).items()}

  weight_bytes = harness.tree_bytes(params)
  kv_seq = harness.kv_bytes_per_sequence(cfg, p + n)
  step_bytes = batch * kv_seq + weight_bytes
  bw = ceilings.bandwidth if ceilings else None
  step_s = t_dec.median / n
  floor_s = step_bytes / bw if bw else None
  # Mean live slots over the decode steps: what a length-aware attention would read.
  live_bytes = batch * harness.kv_bytes_per_sequence(cfg, p + (n + 1) // 2) + weight_bytes
  return {
      "size": size, "params": cfg.num_params(), "batch": batch, "prompt_len": p,
      "new_tokens": n, "dtype": args.dtype, "param_dtype": str(jax.tree.leaves(params)[0].dtype),
      "generate_tok_s": batch * n / t_gen.median, "decode_tok_s": batch * n / t_dec.median,
      "decode_step_ms": 1e3 * step_s, "step_bytes": step_bytes, "kv_bytes_per_seq": kv_seq,
      "weight_bytes": weight_bytes, "floor_ms": 1e3 * floor_s if floor_s else None,
      "floor_frac": floor_s / step_s if floor_s else None,
      "live_floor_frac": live_bytes / bw / step_s if bw else None,
      "naive_tok_s": {k: batch * n / t.median for k, t in t_naive.items()},
      "vs_naive": {k: t.median / t_gen.median for k, t in t_naive.items()},
      "spread": max([t_gen.spread, t_dec.spread] + [t.spread for t in t_naive.values()]),
  }


def main(argv: Sequence[str] | None = None) -> list[dict]:
  args, ceilings = harness.start(argv, description=__doc__, gpu=GPU, cpu=CPU, add_flags=add_flags)
  results = [bench_one(args, size, batch, ceilings) for size in args.size for batch in args.batch]
  rows = []
  for r in results:
    nv, vs = r["naive_tok_s"], r["vs_naive"]
    rows.append([
        r["size"], harness.fmt_si(r["params"]), r["batch"], f"{r['prompt_len']}+{r['new_tokens']}",
        harness.fmt_si(r["generate_tok_s"]), harness.fmt_si(r["decode_tok_s"]),
        f"{r['decode_step_ms']:.3g}", f"{r['floor_ms']:.3g}" if r["floor_ms"] else "n/a",
        harness.fmt_pct(r["floor_frac"]),
        harness.fmt_si(nv.get("python")), harness.fmt_ratio(vs.get("python")),
        harness.fmt_si(nv.get("fori")), harness.fmt_ratio(vs.get("fori"))])
  bw_note = ("n/a" if ceilings is None else
             f"{harness.fmt_si(ceilings.bandwidth, 'B/s')} "
             f"({'datasheet' if ceilings.device.peak_bandwidth else 'measured copy'})")
  harness.print_table(
      f"decode: {harness.device_info().describe()}, {args.dtype} compute, "
      f"{results[0]['param_dtype']} weights, greedy",
      ["model", "params", "batch", "prompt+new", "generate tok/s", "decode tok/s", "ms/step",
       "floor ms/step", "% of floor", "naive-python tok/s", "generate / naive-python",
       "naive-fori tok/s", "generate / naive-fori"], rows,
      notes=[f"floor = (batch x full-cache KV bytes per sequence + weight bytes) / {bw_note}; "
             "% of floor = floor / measured decode step. Naive loops are end to end, like "
             "generate. Correctness: greedy tokens checked against the uncached model first.",
             harness.spread_note(results)]
      + (["On a CPU these small caches and weights stay in the processor's caches, so the "
          "DRAM-copy floor is no bound there (% of floor can pass 100%); compare ratios."]
         if harness.on_cpu() else []))
  harness.write_json(args.json, {"bench": "decode", "ceilings": ceilings and ceilings.to_dict(),
                                "results": results})
  return results


if __name__ == "__main__":
  harness.run_main(main)
