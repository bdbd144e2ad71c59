"""pavjax's sampler against HF transformers `generate()` on the same model and device.

  python -m pavjax.bench.peer                 # GPU: 125m, batch 256, 64 + 192 tokens
  python -m pavjax.bench.peer --size=25m,125m --batch=256,1024

Needs `torch` and `transformers` (not pavjax dependencies); without them it
prints what to install and exits with status 2.

The peer is a `LlamaForCausalLM` with the same shapes and weights: RMSNorm (same
eps), RoPE with the same base and half-split rotation (pavjax's `apply_rope`
pairs dimension i with i + H/2, as Llama's `rotate_half` does), SwiGLU, grouped-
query attention with query head n reading kv head n // (N / K) in both. pavjax
scales the looked-up embedding by sqrt(D) and ties it to the LM head; the port
stores sqrt(D) x embedding as Llama's input embedding and the unscaled matrix
as its (untied) LM head. Norm scales are drawn away from 1 before porting, so
every weight of the port is exercised by the checks.

Checks before timing: the two models' logits on the prompts agree, and both
frameworks' greedy tokens pass `harness.check_greedy` against pavjax's uncached
forward. Then both generate greedily (no stop token, full length) with the same
batch and lengths; the table gives tokens/s and the ratio pavjax / transformers.
"""

from __future__ import annotations

import os

# jax would otherwise reserve most of the GPU's memory at start-up and leave
# torch too little; must be set before jax initializes its backend.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

from typing import Sequence  # pylint: disable=g-import-not-at-top,wrong-import-position

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax.numpy as jnp
import numpy as np

from pavjax.bench import harness
from pavjax.models import Transformer
from pavjax.sampling import Greedy, Sampler, TransformerLM

GPU = {"size": ("125m",), "batch": (256,), "dtype": "bfloat16", "vocab": 32000,
       "prompt_len": 64, "new_tokens": 192, "torch_threads": 0}
# On a 2-core CPU shared with other work, torch's two OpenMP threads stall at
# every barrier (small matmuls measured ~13x slower than with one thread), so the
# CPU default gives torch one thread; jax keeps its default.
CPU = {"size": ("test", "tiny"), "batch": (8,), "dtype": "float32", "vocab": 512,
       "prompt_len": 16, "new_tokens": 48, "torch_threads": 1}

# Largest |pavjax logit - transformers logit| accepted on the prompts.
LOGIT_TOLERANCE = {"float32": 2e-3, "bfloat16": 0.25}

INSTALL_HINT = (
    "pavjax.bench.peer needs PyTorch and HF transformers, which pavjax does not depend on.\n"
    "Install them in this environment (on a GPU machine pick the torch wheel that matches\n"
    "its CUDA), e.g.:  pip install torch transformers\n")


def add_flags(p):
  p.add_argument("--prompt_len", type=int, default=None, help="prompt tokens per row")
  p.add_argument("--new_tokens", type=int, default=None, help="generated tokens per row")
  p.add_argument("--torch_threads", type=int, default=None,
                 help="torch.set_num_threads for CPU runs (0 = torch's default)")


def import_peer(torch_threads: int = 0):
  """(torch, transformers) or MissingDependency with what to install; `torch_threads` > 0
  sets torch's CPU threads (0 keeps torch's default)."""
  try:
    import torch  # pylint: disable=g-import-not-at-top
    import transformers  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise harness.MissingDependency(f"{INSTALL_HINT}(import failed: {e})") from None
  if torch_threads:
    torch.set_num_threads(torch_threads)
  return torch, transformers


def torch_device(torch):
  """The torch device matching jax's default backend (same device for both)."""
  if harness.on_cpu():
    return torch.device("cpu")
  if not torch.cuda.is_available():
    raise harness.MissingDependency(
        f"jax runs on {jax.default_backend()} but this torch build has no CUDA: install a "
        "CUDA torch wheel so both frameworks use the same device")
  return torch.device("cuda")


def with_random_norms(params, seed: int = 3):
  """Norm scales of 1 +- 0.2 instead of exactly 1."""
  rng = np.random.default_rng(seed)

  def fix(path, x):
    if any(getattr(k, "key", None) == "scale" for k in path):
      return x * jnp.asarray(1.0 + 0.2 * rng.standard_normal(x.shape), x.dtype)
    return x

  return jax.tree_util.tree_map_with_path(fix, params)


def llama_from_pavjax(torch, transformers, cfg, params, dtype: str, device):
  """A LlamaForCausalLM holding pavjax `params` (see the module docstring)."""
  hf_cfg = transformers.LlamaConfig(
      vocab_size=cfg.vocab_size, hidden_size=cfg.embed_dim, intermediate_size=cfg.mlp_dim,
      num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
      num_key_value_heads=cfg.num_kv_heads, head_dim=cfg.head_dim,
      max_position_embeddings=cfg.max_len, rms_norm_eps=cfg.norm_eps,
      rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_base},
      tie_word_embeddings=False, attention_bias=False, mlp_bias=False, hidden_act="silu",
      bos_token_id=None, eos_token_id=None, pad_token_id=0)
  model = transformers.LlamaForCausalLM(hf_cfg)
  p = jax.tree.map(lambda x: np.asarray(x, np.float32), params)
  d, n, k, h = cfg.embed_dim, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
  lay = p["layers"]
  t = lambda a: torch.from_numpy(np.array(a, np.float32, order="C", copy=True))
  state = {"model.embed_tokens.weight": t(p["embedding"] * np.float32(d**0.5)),
           "lm_head.weight": t(p["embedding"]),
           "model.norm.weight": t(p["final_norm"]["scale"])}
  for i in range(cfg.num_layers):
    pre = f"model.layers.{i}."
    state.update({
        pre + "self_attn.q_proj.weight": t(lay["attn"]["wq"][i].reshape(d, n * h).T),
        pre + "self_attn.k_proj.weight": t(lay["attn"]["wk"][i].reshape(d, k * h).T),
        pre + "self_attn.v_proj.weight": t(lay["attn"]["wv"][i].reshape(d, k * h).T),
        pre + "self_attn.o_proj.weight": t(lay["attn"]["wo"][i].reshape(n * h, d).T),
        pre + "mlp.gate_proj.weight": t(lay["mlp"]["w_gate"][i].T),
        pre + "mlp.up_proj.weight": t(lay["mlp"]["w_up"][i].T),
        pre + "mlp.down_proj.weight": t(lay["mlp"]["w_down"][i].T),
        pre + "input_layernorm.weight": t(lay["attn_norm"]["scale"][i]),
        pre + "post_attention_layernorm.weight": t(lay["mlp_norm"]["scale"][i]),
    })
  missing, unexpected = model.load_state_dict(state, strict=False)
  missing = [m for m in missing if "rotary" not in m]
  if missing or unexpected:
    raise harness.CorrectnessError(f"weight port: missing {missing}, unexpected {unexpected}")
  torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
  model = model.to(device=device, dtype=torch_dtype).eval()
  model.generation_config.eos_token_id = None
  model.generation_config.bos_token_id = None
  model.generation_config.pad_token_id = 0
  return model


def bench_one(args, torch, transformers, size: str, batch: int) -> dict:
  p, n = args.prompt_len, args.new_tokens
  cfg = harness.model_config(size, args.vocab, args.dtype, max_len=p + n)
  model = Transformer(cfg)
  params = with_random_norms(harness.init_params(model))
  device = torch_device(torch)
  hf = llama_from_pavjax(torch, transformers, cfg, params, args.dtype, device)
  params = harness.cast_params(params, args.dtype)
  if args.fault == "params":  # the port gets weights the jax side does not use
    params = harness.perturbed(params)
  sampler = Sampler(TransformerLM(model))
  prompts_np = harness.random_tokens(batch, (batch, p), args.vocab)
  prompts = jnp.asarray(prompts_np)
  lengths = jnp.full((batch,), p, jnp.int32)
  ids = torch.from_numpy(prompts_np.astype(np.int64)).to(device)
  mask = torch.ones_like(ids)

  def sync(out):
    if device.type == "cuda":
      torch.cuda.synchronize()
    return jax.block_until_ready(out) if not isinstance(out, torch.Tensor) else out

  def hf_generate():
    with torch.inference_mode():
      return hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n,
                         do_sample=False, num_beams=1, use_cache=True)

  jax_generate = lambda: sampler.generate(params, prompts, lengths, jax.random.PRNGKey(0),
                                          max_new_tokens=n, method=Greedy())

  # Checks: logits on the prompts, then both frameworks' greedy tokens.
  k = min(args.check_rows, batch)
  ref = np.asarray(model.apply({"params": params}, prompts[:k]).logits, np.float32)
  with torch.inference_mode():
    got = hf(input_ids=ids[:k], attention_mask=mask[:k]).logits.float().cpu().numpy()
  logit_err = float(np.abs(ref - got).max())
  if logit_err > LOGIT_TOLERANCE[args.dtype]:
    raise harness.CorrectnessError(
        f"peer {size}: transformers logits differ from pavjax's by up to {logit_err:.3g} "
        f"(tolerance {LOGIT_TOLERANCE[args.dtype]} for {args.dtype}): the port is wrong")
  jax_tokens = np.asarray(jax_generate().tokens)
  hf_tokens = hf_generate()[:, p:].cpu().numpy().astype(np.int32)
  if hf_tokens.shape != (batch, n):
    raise harness.CorrectnessError(f"peer {size}: generate() returned {hf_tokens.shape[1]} "
                                  f"new tokens, expected {n}")
  ctx = prompts_np[:k]
  print(f"peer {size} b{batch}: max |logit difference| on the prompts {logit_err:.2g}",
        flush=True)
  print(harness.check_greedy(model, params, ctx, jax_tokens[:k], dtype=args.dtype,
                            what=f"pavjax {size} b{batch}"), flush=True)
  print(harness.check_greedy(model, params, ctx, hf_tokens[:k], dtype=args.dtype,
                            what=f"transformers {size} b{batch}", literal_rows=0), flush=True)
  same_rows = float(np.mean(np.all(jax_tokens == hf_tokens, axis=1)))

  timing = dict(warmup=args.warmup, runs=args.runs)
  t_jax = harness.time_fn(jax_generate, **timing)
  t_hf = harness.time_fn(hf_generate, sync=sync, **timing)
  return {"size": size, "params": cfg.num_params(), "batch": batch, "prompt_len": p,
          "new_tokens": n, "dtype": args.dtype, "torch_device": str(device),
          "logit_err": logit_err, "same_rows": same_rows,
          "pavjax_tok_s": batch * n / t_jax.median, "hf_tok_s": batch * n / t_hf.median,
          "ratio": t_hf.median / t_jax.median, "spread": max(t_jax.spread, t_hf.spread)}


def main(argv: Sequence[str] | None = None) -> list[dict]:
  args = harness.parse_flags(argv, description=__doc__, gpu=GPU, cpu=CPU, add_flags=add_flags)
  torch, transformers = import_peer(args.torch_threads)
  ceilings = None if args.skip_ceilings else harness.measure_ceilings(args.dtype)
  if ceilings:
    harness.print_ceilings(ceilings)
  results = [bench_one(args, torch, transformers, size, batch)
             for size in args.size for batch in args.batch]
  rows = [[r["size"], harness.fmt_si(r["params"]), r["batch"],
           f"{r['prompt_len']}+{r['new_tokens']}", f"{r['logit_err']:.2g}",
           harness.fmt_pct(r["same_rows"]), harness.fmt_si(r["pavjax_tok_s"]),
           harness.fmt_si(r["hf_tok_s"]), harness.fmt_ratio(r["ratio"])] for r in results]
  harness.print_table(
      f"peer: {harness.device_info().describe()}, torch {torch.__version__} on "
      f"{results[0]['torch_device']} ({torch.get_num_threads()} threads), "
      f"transformers {transformers.__version__}, {args.dtype}, greedy",
      ["model", "params", "batch", "prompt+new", "max logit diff", "rows with equal tokens",
       "pavjax tok/s", "transformers tok/s", "pavjax / transformers"], rows,
      notes=["Both end to end (prefill + decode), same weights, batch and lengths; pavjax = "
             "Sampler.generate, transformers = LlamaForCausalLM.generate(do_sample=False) with "
             "its default dynamic cache. Both frameworks' tokens passed the uncached-reference "
             "check first.",
             harness.spread_note(results)])
  harness.write_json(args.json, {"bench": "peer", "ceilings": ceilings and ceilings.to_dict(),
                                "results": results})
  return results


if __name__ == "__main__":
  harness.run_main(main)
