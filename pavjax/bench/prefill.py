"""Prefill of long prompts: attention in query chunks against one chunk, and transformers.

  python -m pavjax.bench.prefill                          # CPU: small, batch 32, 1008 tokens
  python -m pavjax.bench.prefill --query_chunks=0,128,256,512

For each `model.query_chunk` (0 = every query at once): `Sampler.prefill` of `batch`
random prompts of `prompt_len` tokens into a cache of `cache` slots, its compile time,
and the uncached forward (training and scoring's path) over the same tokens. A query
chunk [lo, hi) reads keys only up to hi (the mask is causal), so the chunks together
compute about half of the [T, T] scores.

Check before timing: every chunking's prefill logits and cache equal the first
chunking's (tolerance per dtype). With `--peer=1` (torch and transformers installed), a
`LlamaForCausalLM` with the same weights (`pavjax.bench.peer`) runs its forward over the
same prompts, both frameworks on the same cores; its last-token logits must match
pavjax's first.
"""

from __future__ import annotations

import dataclasses
import os

# jax would otherwise reserve most of the GPU's memory at start-up and leave
# torch too little; must be set before jax initializes its backend.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import time  # pylint: disable=g-import-not-at-top,wrong-import-position
from typing import Sequence  # pylint: disable=g-import-not-at-top,wrong-import-position

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax.numpy as jnp
import numpy as np

from pavjax.bench import harness, peer
from pavjax.models import Transformer
from pavjax.sampling import Sampler, TransformerLM

GPU = {"size": ("125m",), "batch": (64,), "dtype": "bfloat16", "vocab": 32000,
       "prompt_len": 2000, "cache": 2048, "query_chunks": (0, 256), "peer": 1,
       "torch_threads": 0}
CPU = {"size": ("small",), "batch": (32,), "dtype": "float32", "vocab": 512,
       "prompt_len": 1008, "cache": 2048, "query_chunks": (0, 256), "peer": 1,
       "torch_threads": 0}
# Largest difference accepted between chunkings (logits and cache): float rounding only.
TOLERANCE = {"float32": 1e-4, "bfloat16": 0.25}


def add_flags(p):
  p.add_argument("--prompt_len", type=int, default=None, help="prompt tokens per row")
  p.add_argument("--cache", type=int, default=None, help="cache slots")
  p.add_argument("--query_chunks", type=lambda s: tuple(int(x) for x in s.split(",")),
                 default=None, help="comma-separated model.query_chunk values (0 = one chunk)")
  p.add_argument("--peer", type=int, default=None, help="1: also time transformers")
  p.add_argument("--torch_threads", type=int, default=None,
                 help="torch.set_num_threads for CPU runs (0 = torch's default)")


def bench_one(args, size: str, batch: int, hf_libs) -> list[dict]:
  base = harness.model_config(size, args.vocab, args.dtype, max_len=args.cache)
  params = harness.init_params(Transformer(base))
  if hf_libs:
    params = peer.with_random_norms(params)  # every weight of the port is exercised
  if args.fault == "params":  # test hook: the chunked runs get other weights
    chunked_params = harness.perturbed(params)
  else:
    chunked_params = params
  prompts = jnp.asarray(harness.random_tokens(batch, (batch, args.prompt_len), args.vocab))
  lengths = jnp.full((batch,), args.prompt_len, jnp.int32)
  timing = dict(warmup=args.warmup, runs=args.runs)
  results, reference = [], None
  for chunk in args.query_chunks:
    model = Transformer(dataclasses.replace(base, query_chunk=chunk))
    sampler = Sampler(TransformerLM(model))
    p = params if chunk == args.query_chunks[0] else chunked_params
    t0 = time.perf_counter()
    sampler.prefill.lower(p, prompts, lengths, cache_size=args.cache).compile()
    compile_s = time.perf_counter() - t0
    run = lambda: sampler.prefill(p, prompts, lengths, cache_size=args.cache)
    cache, logits = run()
    if reference is None:
      reference = (np.asarray(logits), np.asarray(cache.k))
    else:
      err = max(float(np.max(np.abs(np.asarray(logits) - reference[0]))),
                float(np.max(np.abs(np.asarray(cache.k) - reference[1]))))
      if err > TOLERANCE[args.dtype]:
        raise harness.CorrectnessError(
            f"query_chunk={chunk}: prefill differs from query_chunk={args.query_chunks[0]} "
            f"by {err:.3g} (tolerance {TOLERANCE[args.dtype]})")
    forward = jax.jit(lambda pr, x, model=model: model.apply({"params": pr}, x).logits[:, -1])
    t_pre = harness.time_fn(run, **timing)
    t_fwd = harness.time_fn(lambda: forward(p, prompts), **timing)
    results.append({"size": size, "batch": batch, "query_chunk": chunk,
                    "compile_s": compile_s, "prefill_s": t_pre.median,
                    "forward_s": t_fwd.median, "spread": max(t_pre.spread, t_fwd.spread)})
  if hf_libs:
    torch, transformers = hf_libs
    device = peer.torch_device(torch)
    hf = peer.llama_from_pavjax(torch, transformers, base, params, args.dtype, device)
    ids = torch.from_numpy(np.asarray(prompts).astype(np.int64)).to(device)

    def hf_forward():
      with torch.inference_mode():
        out = hf(input_ids=ids, use_cache=True).logits[:, -1]
      if device.type == "cuda":
        torch.cuda.synchronize()
      return out

    err = float(np.max(np.abs(hf_forward().float().cpu().numpy() - reference[0])))
    if err > peer.LOGIT_TOLERANCE[args.dtype]:
      raise harness.CorrectnessError(
          f"transformers' last-token logits differ from pavjax's prefill by {err:.3g} "
          f"(tolerance {peer.LOGIT_TOLERANCE[args.dtype]})")
    t_hf = harness.time_fn(hf_forward, sync=lambda out: out, **timing)
    for r in results:
      r["hf_s"] = t_hf.median
  return results


def main(argv: Sequence[str] | None = None) -> list[dict]:
  args, _ = harness.start(argv, description=__doc__, gpu=GPU, cpu=CPU, add_flags=add_flags)
  hf_libs = peer.import_peer(args.torch_threads) if args.peer else None
  results = [r for size in args.size for batch in args.batch
             for r in bench_one(args, size, batch, hf_libs)]
  ratio = lambda r: (r["hf_s"] / r["prefill_s"]) if r.get("hf_s") else None
  rows = [[r["size"], r["batch"], f"{args.prompt_len} into {args.cache}", r["query_chunk"] or "one",
           f"{r['compile_s']:.1f}", f"{r['prefill_s']:.3g}", f"{r['forward_s']:.3g}",
           f"{r['hf_s']:.3g}" if r.get("hf_s") else "n/a", harness.fmt_ratio(ratio(r))]
          for r in results]
  harness.print_table(
      f"prefill: {harness.device_info().describe()}, {args.dtype}",
      ["model", "batch", "prompt tokens", "query chunk", "compile s", "prefill s",
       "uncached forward s", "transformers forward s", "pavjax / transformers"], rows,
      notes=["prefill = Sampler.prefill (logits of the last token, the cache written); "
             "uncached forward = the model without a cache (training and scoring's path); "
             "transformers = LlamaForCausalLM forward with the same weights and a cache, "
             "the same cores. Every chunking's prefill, and transformers' logits, matched the "
             "first chunking's before timing.",
             harness.spread_note(results)])
  harness.write_json(args.json, {"bench": "prefill", "results": results})
  return results


if __name__ == "__main__":
  harness.run_main(main)
