"""Loading a Hugging Face checkpoint: time, host memory, and greedy decode against transformers.

  python -m pavjax.bench.load                      # Qwen2.5-0.5B's shape, random weights
  python -m pavjax.bench.load --shape=tiny --batch=2

Writes a random checkpoint of a real shape locally with transformers
(`save_pretrained`: safetensors, sharded above `--shard_size`), then:

  * load: a fresh process reads it with `pavjax.models.hf.load_params` onto the
    devices; reported are the seconds, its peak resident memory above the memory it
    held before loading (jax imported, backend up), the checkpoint's size on disk and
    its largest tensor. pavjax reads each device's block of each tensor straight into
    that device's buffer, so the extra host memory should stay near one tensor, not
    the model;
  * decode: greedy generation with pavjax's `Sampler.generate` and transformers'
    `generate(do_sample=False)` on the same weights, batch and lengths, after a check
    that both frameworks' first tokens agree (float32).

The machine and versions head the table.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from pavjax.bench import harness
from pavjax.bench import peer

# Model shapes (transformers config fields). qwen2.5-0.5b is Qwen/Qwen2.5-0.5B's config.
SHAPES = {
    "qwen2.5-0.5b": dict(model_type="qwen2", vocab_size=151936, hidden_size=896,
                         intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                         num_key_value_heads=2, max_position_embeddings=32768,
                         rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=True),
    "tiny": dict(model_type="qwen2", vocab_size=512, hidden_size=64, intermediate_size=128,
                 num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                 max_position_embeddings=512, rope_theta=10000.0, rms_norm_eps=1e-6,
                 tie_word_embeddings=True),
}
GPU = {"shape": "qwen2.5-0.5b", "batch": (64,), "dtype": "bfloat16", "prompt_len": 64,
       "new_tokens": 128, "torch_threads": 0, "shard_size": "500MB"}
CPU = {"shape": "qwen2.5-0.5b", "batch": (4,), "dtype": "float32", "prompt_len": 16,
       "new_tokens": 16, "torch_threads": 0, "shard_size": "500MB"}


def add_flags(p):
  p.add_argument("--shape", default=None, choices=sorted(SHAPES), help="checkpoint shape")
  p.add_argument("--prompt_len", type=int, default=None, help="prompt tokens per row")
  p.add_argument("--new_tokens", type=int, default=None, help="generated tokens per row")
  p.add_argument("--torch_threads", type=int, default=None,
                 help="torch.set_num_threads for CPU runs (0 = torch's default)")
  p.add_argument("--shard_size", default=None, help="save_pretrained max_shard_size")
  p.add_argument("--dir", default="", help="where to write the checkpoint (default: a temp dir)")


def write_checkpoint(torch, transformers, shape: str, dtype: str, path: str,
                     shard_size: str) -> dict:
  """A random checkpoint of `shape` saved by transformers; returns sizes on disk."""
  fields = dict(SHAPES[shape])
  config = transformers.AutoConfig.for_model(**fields)
  torch.manual_seed(0)
  model = transformers.AutoModelForCausalLM.from_config(
      config, dtype=getattr(torch, dtype))
  model.save_pretrained(path, max_shard_size=shard_size)
  del model
  files = [f for f in os.listdir(path) if f.endswith(".safetensors")]
  largest = 0
  from safetensors import safe_open  # pylint: disable=g-import-not-at-top
  for f in files:
    with safe_open(os.path.join(path, f), framework="numpy") as st:
      for name in st.keys():
        shape_ = st.get_slice(name).get_shape()
        largest = max(largest, int(np.prod(shape_)) * (2 if dtype == "bfloat16" else 4))
  return {"checkpoint_bytes": sum(os.path.getsize(os.path.join(path, f)) for f in files),
          "files": len(files), "largest_tensor_bytes": largest}


def _rss_bytes() -> int:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def load_child(path: str, dtype: str) -> dict:
  """Run in a fresh process: load the checkpoint, report seconds and peak memory."""
  from pavjax.models import hf  # pylint: disable=g-import-not-at-top
  jnp.zeros(()).block_until_ready()  # the backend is up before the baseline is read
  cfg = hf.config_from_hf(path, max_len=256, dtype=dtype, param_dtype=dtype)
  before = _rss_bytes()
  t0 = time.perf_counter()
  params = jax.block_until_ready(hf.load_params(path, cfg))
  seconds = time.perf_counter() - t0
  return {"load_s": seconds, "rss_before": before, "rss_peak": _rss_bytes(),
          "param_bytes": harness.tree_bytes(params)}


def measure_load(path: str, dtype: str) -> dict:
  code = ("import json, sys; from pavjax.bench import load; "
          f"print('RESULT ' + json.dumps(load.load_child({path!r}, {dtype!r})))")
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                        check=False)
  lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
  if proc.returncode or not lines:
    raise RuntimeError(f"loading in a child process failed:\n{proc.stderr[-3000:]}")
  return json.loads(lines[-1][len("RESULT "):])


def bench_decode(args, torch, transformers, path: str, batch: int) -> dict:
  """Greedy tokens/s of both frameworks on the checkpoint at `path`."""
  from pavjax.models import hf  # pylint: disable=g-import-not-at-top
  from pavjax.models import Transformer  # pylint: disable=g-import-not-at-top
  from pavjax.sampling import Greedy, Sampler, TransformerLM  # pylint: disable=g-import-not-at-top
  p, n = args.prompt_len, args.new_tokens
  cfg = hf.config_from_hf(path, max_len=p + n, dtype=args.dtype, param_dtype=args.dtype)
  params = hf.load_params(path, cfg)
  if args.fault == "params":
    params = harness.perturbed(params)
  model = Transformer(cfg)
  sampler = Sampler(TransformerLM(model))
  device = peer.torch_device(torch)
  ref = transformers.AutoModelForCausalLM.from_pretrained(
      path, dtype=getattr(torch, args.dtype)).to(device).eval()
  prompts_np = harness.random_tokens(batch, (batch, p), cfg.vocab_size)
  prompts = jnp.asarray(prompts_np)
  lengths = jnp.full((batch,), p, jnp.int32)
  ids = torch.from_numpy(prompts_np.astype(np.int64)).to(device)
  mask = torch.ones_like(ids)

  def hf_generate():
    with torch.inference_mode():
      return ref.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n,
                          min_new_tokens=n, do_sample=False, num_beams=1, use_cache=True)

  def sync(out):
    if device.type == "cuda":
      torch.cuda.synchronize()
    return jax.block_until_ready(out) if not isinstance(out, torch.Tensor) else out

  jax_generate = lambda: sampler.generate(params, prompts, lengths, jax.random.PRNGKey(0),
                                          max_new_tokens=n, method=Greedy())
  jax_tokens = np.asarray(jax_generate().tokens)
  hf_tokens = hf_generate()[:, p:].cpu().numpy().astype(np.int32)
  first_equal = float(np.mean(jax_tokens[:, 0] == hf_tokens[:, 0]))
  if (args.dtype == "float32" or args.fault) and first_equal < 1.0:
    raise harness.CorrectnessError(f"load: the first greedy token differs on "
                                   f"{1 - first_equal:.0%} of rows in float32")
  timing = dict(warmup=args.warmup, runs=args.runs)
  t_jax = harness.time_fn(jax_generate, **timing)
  t_hf = harness.time_fn(hf_generate, sync=sync, **timing)
  return {"batch": batch, "params": cfg.num_params() - cfg.embed_dim - 1,
          "same_rows": float(np.mean(np.all(jax_tokens == hf_tokens, axis=1))),
          "pavjax_tok_s": batch * n / t_jax.median, "hf_tok_s": batch * n / t_hf.median,
          "ratio": t_hf.median / t_jax.median, "spread": max(t_jax.spread, t_hf.spread)}


def main(argv: Sequence[str] | None = None) -> list[dict]:
  args = harness.parse_flags(argv, description=__doc__, gpu=GPU, cpu=CPU, add_flags=add_flags)
  torch, transformers = peer.import_peer(args.torch_threads)
  with tempfile.TemporaryDirectory() as tmp:
    path = args.dir or os.path.join(tmp, args.shape)
    t0 = time.perf_counter()
    disk = write_checkpoint(torch, transformers, args.shape, args.dtype, path, args.shard_size)
    write_s = time.perf_counter() - t0
    load = measure_load(path, args.dtype)
    results = [{**disk, **load, "write_s": write_s,
                **bench_decode(args, torch, transformers, path, batch)} for batch in args.batch]
  extra = lambda r: r["rss_peak"] - r["rss_before"]
  rows = [[args.shape, harness.fmt_si(r["params"]), harness.fmt_si(r["checkpoint_bytes"], "B"),
           harness.fmt_si(r["largest_tensor_bytes"], "B"), f"{r['load_s']:.1f}",
           harness.fmt_si(extra(r), "B"), f"{extra(r) / r['checkpoint_bytes']:.2f}",
           r["batch"], harness.fmt_pct(r["same_rows"]), harness.fmt_si(r["pavjax_tok_s"]),
           harness.fmt_si(r["hf_tok_s"]), harness.fmt_ratio(r["ratio"])] for r in results]
  harness.print_table(
      f"load: {harness.device_info().describe()}, torch {torch.__version__}, "
      f"transformers {transformers.__version__}, {args.dtype}",
      ["shape", "params", "checkpoint", "largest tensor", "load s", "host memory added",
       "added / checkpoint", "batch", "rows with equal tokens", "pavjax tok/s",
       "transformers tok/s", "pavjax / transformers"], rows,
      notes=[f"Greedy decode of {args.prompt_len}+{args.new_tokens} tokens, both end to end. "
             "Host memory added = the loading process's peak RSS minus its RSS before "
             "loading (jax up); on a CPU backend the loaded parameters themselves live in "
             "host memory, so there the floor is the model's own bytes.",
             harness.spread_note(results)])
  harness.write_json(args.json, {"bench": "load", "results": results})
  return results


if __name__ == "__main__":
  harness.run_main(main)
