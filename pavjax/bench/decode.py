"""Decode throughput against the bandwidth floor of the bytes read, and against transformers.

  python -m pavjax.bench.decode                      # GPU: 125m x batch 64,256 x cache 1024,2048
  python -m pavjax.bench.decode --size=small --batch=32 --cache=256

Per model size, batch and cache size C: random prompts that leave the cache half
empty on average over the decode (prompt P = fill x C - new/2), then `new_tokens`
greedy tokens (no stop token, every row decodes the full length).

  * check: the sampler's greedy tokens against the uncached model
    (`harness.check_greedy`, tie tolerance per dtype) before anything is timed;
  * decode tok/s, ms/step: `Sampler.decode` alone (the while loop) after a
    prefill into a cache of C slots, with length-aware attention (the model's
    `attn_block`, 128) and with every slot read (`attn_block=0`), same tokens;
  * bytes/step: what a step must read at least: every weight once, plus the KV
    slots attention reads (length-aware: the filled slots rounded up to a block,
    averaged over the steps; full: all C). floor = bytes / bandwidth (datasheet
    when the device is known, else the measured copy), % of floor = floor / step;
  * lowerings after warm-up: jit lowerings while timing (0 = no recompiles; the
    cache fills through several attention sizes, all in one program);
  * profile: where a step's time goes, by timing its parts alone at the mean
    fill: attention over every layer's cache, the LM head, and the rest
    (projections, MLP, norms, sampling, loop);
  * transformers (`--peer=1`, needs torch and transformers): `generate()` of a
    LlamaForCausalLM holding the same weights (`pavjax.bench.peer`), same
    prompts, batch and new tokens, both frameworks on the same device; on a CPU
    both get all cores unless `--torch_threads` says otherwise. Compared end to
    end (prefill + decode) with pavjax's `prefill` + `decode`.

Parameters are cast to the compute dtype once before timing (`--fp32_params`
keeps them float32 as the jobs hold them; each step then reads 4-byte weights).
"""

from __future__ import annotations

import dataclasses
import functools
import os

# jax would otherwise reserve most of the GPU's memory at start-up and leave
# torch too little; must be set before jax initializes its backend.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

from typing import Sequence  # pylint: disable=g-import-not-at-top,wrong-import-position

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax.numpy as jnp
import numpy as np

from pavjax.bench import harness, peer
from pavjax.models import KVCache, Transformer
from pavjax.models.transformer import attention_sizes, cached_attention, lm_head_logits
from pavjax.sampling import Greedy, Sampler, TransformerLM
from pavjax.sampling.sampler import init_state, row_keys_for

GPU = {"size": ("125m",), "batch": (64, 256), "cache": (1024, 2048), "dtype": "bfloat16",
       "vocab": 32000, "new_tokens": 128, "fill": 0.5, "peer": 1, "torch_threads": 0}
CPU = {"size": ("small",), "batch": (32,), "cache": (512,), "dtype": "float32", "vocab": 512,
       "new_tokens": 32, "fill": 0.5, "peer": 1, "torch_threads": 0}


def add_flags(p):
  p.add_argument("--cache", type=lambda s: tuple(int(x) for x in s.split(",")), default=None,
                 help="comma-separated cache sizes (slots per row)")
  p.add_argument("--new_tokens", type=int, default=None, help="generated tokens per row")
  p.add_argument("--fill", type=float, default=None,
                 help="mean fraction of the cache filled over the decode")
  p.add_argument("--peer", type=int, default=None,
                 help="1: also time transformers generate() on the same weights")
  p.add_argument("--torch_threads", type=int, default=None,
                 help="torch.set_num_threads on a CPU (0 = torch's default, all cores)")
  p.add_argument("--fp32_params", action="store_true",
                 help="feed float32 parameters to the sampler (as the jobs do)")
  p.add_argument("--skip_profile", action="store_true", help="skip the step profile")


def read_slots(cfg, prompt_len: int, new_tokens: int, cache: int) -> float:
  """Mean KV slots a decode step's attention reads (the filled ones, rounded up to a size)."""
  sizes = attention_sizes(cache, cfg.attn_block)
  reads = [next(s for s in sizes if s >= prompt_len + i + 1) for i in range(new_tokens)]
  return float(np.mean(reads))


def step_profile(cfg, params, batch: int, cache: int, fill: int, timing) -> dict:
  """Seconds of a step's parts alone at `fill` filled slots: attention (all layers), LM head."""
  dt = cfg.compute_dtype
  rng = np.random.default_rng(0)
  kv = KVCache.create(num_layers=cfg.num_layers, batch=batch, size=cache,
                      num_kv_heads=cfg.num_kv_heads, head_dim=cfg.head_dim,
                      start=jnp.zeros((batch,), jnp.int32), dtype=dt)
  kv = kv.replace(k=jnp.asarray(rng.normal(size=kv.k.shape), dt),
                  v=jnp.asarray(rng.normal(size=kv.v.shape), dt))
  q = jnp.asarray(rng.normal(size=(batch, 1, cfg.num_kv_heads,
                                   cfg.num_heads // cfg.num_kv_heads, cfg.head_dim)), dt)
  mask = (jnp.arange(cache) < fill)[None, None, :] & jnp.ones((batch, 1, 1), bool)

  @jax.jit
  def attention(q, k, v, mask, filled):
    def layer(carry, i):
      return carry + cached_attention(cfg, q, k, v, mask, i, filled).sum(), None
    return jax.lax.scan(layer, jnp.zeros((), dt), jnp.arange(cfg.num_layers))[0]

  x = jnp.asarray(rng.normal(size=(batch, 1, cfg.embed_dim)), dt)

  @jax.jit
  def head(x, weight):
    return jnp.argmax(lm_head_logits(cfg, x, weight), axis=-1)

  filled = jnp.asarray(fill, jnp.int32)
  t_attn = harness.time_fn(lambda: attention(q, kv.k, kv.v, mask, filled), **timing)
  t_head = harness.time_fn(lambda: head(x, params["embedding"]), **timing)
  return {"attention_s": t_attn.median, "head_s": t_head.median}


def bench_one(args, size: str, batch: int, cache: int, ceilings, hf_libs) -> dict:
  n = args.new_tokens
  p = int(round(args.fill * cache - n / 2))
  if p < 1 or p + n > cache:
    raise ValueError(f"cache {cache}: fill {args.fill} with {n} new tokens leaves a prompt of {p}")
  cfg = harness.model_config(size, args.vocab, args.dtype, max_len=cache)
  full_cfg = dataclasses.replace(cfg, attn_block=0)
  model, full_model = Transformer(cfg), Transformer(full_cfg)
  params = harness.init_params(model)
  if hf_libs:
    params = peer.with_random_norms(params)  # every weight of the port is exercised
    torch, transformers = hf_libs
    device = peer.torch_device(torch)
    hf = peer.llama_from_pavjax(torch, transformers, cfg, params, args.dtype, device)
  if not args.fp32_params:
    params = harness.cast_params(params, args.dtype)
  run_params = harness.perturbed(params) if args.fault == "params" else params
  prompts_np = harness.random_tokens(batch, (batch, p), args.vocab)
  prompts = jnp.asarray(prompts_np)
  lengths = jnp.full((batch,), p, jnp.int32)
  rng = jax.random.PRNGKey(0)
  method = Greedy()
  samplers = {"aware": Sampler(TransformerLM(model)), "full": Sampler(TransformerLM(full_model))}

  def setup(sampler):
    c, logits = sampler.prefill(run_params, prompts, lengths, cache_size=cache)
    return (init_state(c, logits, row_keys_for(rng, batch), n),)

  def decode(sampler, state):
    return sampler.decode(run_params, state, method=method, stop_tokens=())

  def end_to_end(sampler):
    return decode(sampler, *setup(sampler)).tokens

  # Correctness first: greedy tokens against the uncached model, both attention paths.
  k = min(args.check_rows, batch)
  ctx = prompts_np[:k]
  tokens = {}
  for name, sampler in samplers.items():
    tokens[name] = np.asarray(end_to_end(sampler))
    print(harness.check_greedy(model, params, ctx, tokens[name][:k], dtype=args.dtype,
                              what=f"decode {name} {size} b{batch} c{cache}",
                              literal_rows=2 if name == "aware" else 0), flush=True)
  same_paths = float(np.mean(np.all(tokens["aware"] == tokens["full"], axis=1)))
  if hf_libs:
    ids = torch.from_numpy(prompts_np.astype(np.int64)).to(device)
    mask = torch.ones_like(ids)

    def hf_generate():
      with torch.inference_mode():
        return hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n,
                           min_new_tokens=n, do_sample=False, num_beams=1, use_cache=True)

    def hf_sync(out):
      if device.type == "cuda":
        torch.cuda.synchronize()
      return out

    hf_tokens = hf_generate()[:, p:].cpu().numpy().astype(np.int32)
    print(harness.check_greedy(model, params, ctx, hf_tokens[:k], dtype=args.dtype,
                              what=f"transformers {size} b{batch} c{cache}", literal_rows=0),
          flush=True)

  timing = dict(warmup=args.warmup, runs=args.runs)
  t_dec, lowerings = {}, 0
  for name, sampler in samplers.items():
    decode(sampler, *setup(sampler))  # warm-up: compile outside the counted block
    with harness.CompileCounter() as compiles:
      t_dec[name] = harness.time_fn(functools.partial(decode, sampler),
                                    setup=functools.partial(setup, sampler), **timing)
    lowerings += compiles.lowerings
  t_e2e = harness.time_fn(lambda: end_to_end(samplers["aware"]), **timing)
  t_hf = harness.time_fn(hf_generate, sync=hf_sync, **timing) if hf_libs else None

  weight_bytes = harness.tree_bytes(params)
  slot_bytes = harness.kv_bytes_per_sequence(cfg, 1)
  slots_aware = read_slots(cfg, p, n, cache)
  bytes_aware = weight_bytes + batch * slot_bytes * slots_aware
  bytes_full = weight_bytes + batch * slot_bytes * cache
  bw = ceilings.bandwidth if ceilings else None
  step = {name: t.median / n for name, t in t_dec.items()}
  prof = None
  if not args.skip_profile:
    prof = step_profile(cfg, params, batch, cache, p + n // 2, timing)
    prof = {"attention": prof["attention_s"] / step["aware"],
            "head": prof["head_s"] / step["aware"]}
  return {
      "size": size, "params": cfg.num_params(), "batch": batch, "cache": cache,
      "prompt_len": p, "new_tokens": n, "dtype": args.dtype,
      "param_dtype": str(jax.tree.leaves(params)[0].dtype),
      "decode_tok_s": batch * n / t_dec["aware"].median,
      "full_decode_tok_s": batch * n / t_dec["full"].median,
      "aware_gain": t_dec["full"].median / t_dec["aware"].median,
      "decode_step_ms": 1e3 * step["aware"], "full_step_ms": 1e3 * step["full"],
      "slots_read": slots_aware, "step_bytes": bytes_aware, "full_step_bytes": bytes_full,
      "weight_bytes": weight_bytes,
      "floor_ms": 1e3 * bytes_aware / bw if bw else None,
      "floor_frac": bytes_aware / bw / step["aware"] if bw else None,
      "full_floor_frac": bytes_full / bw / step["full"] if bw else None,
      "same_rows_paths": same_paths, "lowerings_after_warmup": lowerings,
      "pavjax_e2e_tok_s": batch * n / t_e2e.median,
      "hf_tok_s": batch * n / t_hf.median if t_hf else None,
      "vs_hf": t_hf.median / t_e2e.median if t_hf else None,
      "profile": prof,
      "spread": max([t.spread for t in t_dec.values()] + [t_e2e.spread]
                    + ([t_hf.spread] if t_hf else [])),
  }


def main(argv: Sequence[str] | None = None) -> list[dict]:
  args = harness.parse_flags(argv, description=__doc__, gpu=GPU, cpu=CPU, add_flags=add_flags)
  hf_libs = peer.import_peer(args.torch_threads) if args.peer else None
  ceilings = None if args.skip_ceilings else harness.measure_ceilings(args.dtype)
  if ceilings:
    harness.print_ceilings(ceilings)
  results = [bench_one(args, size, batch, cache, ceilings, hf_libs)
             for size in args.size for batch in args.batch for cache in args.cache]
  rows = []
  for r in results:
    prof = r["profile"]
    rows.append([
        r["size"], harness.fmt_si(r["params"]), r["batch"],
        f"{r['cache']} ({r['prompt_len']}+{r['new_tokens']})",
        harness.fmt_si(r["decode_tok_s"]), f"{r['decode_step_ms']:.3g}",
        f"{r['slots_read']:.0f}", harness.fmt_si(r["step_bytes"], "B"),
        f"{r['floor_ms']:.3g}" if r["floor_ms"] else "n/a", harness.fmt_pct(r["floor_frac"]),
        harness.fmt_si(r["full_decode_tok_s"]), harness.fmt_pct(r["full_floor_frac"]),
        harness.fmt_ratio(r["aware_gain"]), r["lowerings_after_warmup"],
        harness.fmt_pct(prof and prof["attention"]), harness.fmt_pct(prof and prof["head"]),
        harness.fmt_si(r["pavjax_e2e_tok_s"]), harness.fmt_si(r["hf_tok_s"]),
        harness.fmt_ratio(r["vs_hf"])])
  bw_note = ("n/a" if ceilings is None else
             f"{harness.fmt_si(ceilings.bandwidth, 'B/s')} "
             f"({'datasheet' if ceilings.device.peak_bandwidth else 'measured copy'})")
  peer_note = "transformers not run (--peer=0)"
  if hf_libs:
    torch, transformers = hf_libs
    peer_note = (f"transformers {transformers.__version__} generate() on torch "
                 f"{torch.__version__} ({torch.get_num_threads()} threads on a CPU), same "
                 "weights, prompts, batch and new tokens; its tokens passed the same check")
  harness.print_table(
      f"decode: {harness.device_info().describe()}, {args.dtype} compute, "
      f"{results[0]['param_dtype']} weights, greedy, caches {args.fill:.0%} full on average",
      ["model", "params", "batch", "cache (prompt+new)", "decode tok/s", "ms/step",
       "KV slots read", "bytes/step", "floor ms/step", "% of floor",
       "full-read tok/s", "full-read % of floor", "length-aware / full", "lowerings after warm-up",
       "attention % of step", "LM head % of step", "pavjax e2e tok/s", "transformers tok/s",
       "pavjax / transformers"], rows,
      notes=[f"floor = (weight bytes + batch x KV bytes of the slots read) / {bw_note}; "
             "length-aware attention reads the filled slots rounded up to 128 (mean over the "
             "steps shown), full-read (attn_block=0) every slot. Both paths' greedy tokens "
             "were checked against the uncached model first.",
             f"e2e = prefill + decode of the same prompts; {peer_note}.",
             harness.spread_note(results)]
      + (["On a CPU small caches and weights stay in the processor's caches, so the "
          "DRAM-copy floor is no bound there (% of floor can pass 100%); compare ratios."]
         if harness.on_cpu() else []))
  harness.write_json(args.json, {"bench": "decode", "ceilings": ceilings and ceilings.to_dict(),
                                "results": results})
  return results


if __name__ == "__main__":
  harness.run_main(main)
