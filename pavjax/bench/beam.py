"""Step-level beam search: static (lockstep) against continuous batching.

  python -m pavjax.bench.beam                  # GPU: 125m, 128 problems, N=4 x C=3
  python -m pavjax.bench.beam --problems=16 --size=test

Workload: `problems` random prompts of `prompt_len` tokens, a random-init policy
whose step delimiter has probability `delim_hazard` and EOS `eos_hazard` at every
token, and EOS all but certain after `response_len` tokens (`rollouts.SkewedStopLM`):
steps of geometric length cut at `max_step_tokens`, and beams that end after as
many steps as their kept candidates' steps take to fill `response_len`, as a trained
policy's steps and solutions vary in length. The verifier is a cheap
function of each prefix's tokens (the policy's decode is what is measured; both
batchings call the verifier on the same candidates).

  * static: the search job's way, `search.batching=static`: calls of `slots`
    problems, each call's beams stepping in lockstep (every step decodes until the
    call's longest candidate ends; a call runs until its last problem ends);
  * continuous: `search.batching=continuous`, the same rows (`slots` problem slots
    of N x C rows): a problem goes on as soon as its own candidates have ended,
    and a finished problem's rows take the next prompt.

Both draw with the same per-problem keys: on a CPU in float32 the pools must be equal
token for token (checked before timing). In bfloat16 or on a GPU, where rounding may flip a
sampled token and change the rest of a problem's search, the check runs on a float32 copy
at the highest matmul precision over 2 x slots problems, and at most
`harness.DIFFER_ALLOWED` of them may differ. Useful slots = policy tokens / decode row-steps
run.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from pavjax.bench import harness
from pavjax.bench.rollouts import SkewedStopLM
from pavjax.models import Transformer
from pavjax.sampling import bucket_length
from pavjax.sampling import sampler as sampler_lib
from pavjax.search import StepBeamSearch

GPU = {"size": ("125m",), "dtype": "bfloat16", "vocab": 32000, "problems": 128,
       "prompt_len": 64, "response_len": 160, "slots": 32, "beam_width": 4, "expansions": 3,
       "max_steps": 12, "max_step_tokens": 32, "delim_hazard": 0.06, "eos_hazard": 0.005}
CPU = {"size": ("test",), "dtype": "float32", "vocab": 512, "problems": 32,
       "prompt_len": 8, "response_len": 48, "slots": 8, "beam_width": 2, "expansions": 3,
       "max_steps": 12, "max_step_tokens": 16, "delim_hazard": 0.1, "eos_hazard": 0.01}
PAD, EOS, DELIM = 0, 1, 2


def add_flags(p):
  p.add_argument("--problems", type=int, default=None, help="prompts searched")
  p.add_argument("--prompt_len", type=int, default=None, help="prompt tokens")
  p.add_argument("--response_len", type=int, default=None,
                 help="response tokens after which EOS is all but certain")
  p.add_argument("--slots", type=int, default=None,
                 help="problems per static call = problem slots of the continuous arena")
  p.add_argument("--beam_width", type=int, default=None, help="N")
  p.add_argument("--expansions", type=int, default=None, help="C")
  p.add_argument("--max_steps", type=int, default=None, help="steps per response at most")
  p.add_argument("--max_step_tokens", type=int, default=None, help="tokens per step at most")
  p.add_argument("--min_ready", type=int, default=0,
                 help="continuous: slots complete before they are judged (0: slots // 8)")
  p.add_argument("--delim_hazard", type=float, default=None, help="P(step delimiter) per token")
  p.add_argument("--eos_hazard", type=float, default=None, help="P(EOS) per token")


def _value(vparams, tokens, lengths):
  """A cheap stand-in verifier in [0, 1) that reads every token of the prefix."""
  del vparams
  w = jnp.arange(1, tokens.shape[1] + 1, dtype=jnp.int32) % 7 + 1
  return (jnp.sum(tokens * w, axis=1) % 101).astype(jnp.float32) / (101.0 + lengths)


def run_static(search: StepBeamSearch, params, prompts, keys, per_call: int):
  """The search job's static path: calls of `per_call` problems (the last one padded)."""
  pools, tokens, row_steps = [], 0, 0
  for i in range(0, len(prompts), per_call):
    chunk, chunk_keys = prompts[i:i + per_call], keys[i:i + per_call]
    pad = per_call - len(chunk)
    res = search.run(params, None, chunk + [chunk[0]] * pad, None,
                     problem_keys=jnp.concatenate([chunk_keys] + [chunk_keys[:1]] * pad))
    pools += res.pools[:len(chunk)]
    tokens += int(res.per_problem["policy_tokens"][:len(chunk)].sum())
    row_steps += res.decode["row_steps"]
  return pools, tokens, row_steps


def run_continuous(search: StepBeamSearch, params, prompts, keys):
  res = search.run(params, None, prompts, None, problem_keys=keys)
  return res.pools, res.counters["policy_tokens"], res.decode["row_steps"]


def _setup(args, size: str, dtype: str):
  """(model config, params, the skewed-stop LM) of the bench's policy in `dtype`."""
  longest = args.prompt_len + args.max_steps * args.max_step_tokens
  cfg = harness.model_config(size, args.vocab, dtype, max_len=bucket_length(longest) +
                             args.max_steps * args.max_step_tokens)
  model = Transformer(cfg)
  params = harness.cast_params(harness.init_params(model), dtype)
  lm = SkewedStopLM(model, eos=EOS, hazard=args.eos_hazard,
                    end=args.prompt_len + args.response_len,
                    fixed={DELIM: args.delim_hazard})
  return cfg, params, lm


def _pools_differ(args, lm, params, prompts, keys, cont_keys, dtype: str) -> float:
  """Static against continuous batching on `prompts`: the share of problems whose pools
  differ, checked by `harness.check_agreement` (raises past what rounding explains)."""
  static = run_static(_search(args, lm, 0), params, prompts, keys, args.slots)
  cont = run_continuous(_search(args, lm, args.slots), params, prompts, cont_keys)
  differ = sum(a != b for a, b in zip(static[0], cont[0]))
  return harness.check_agreement("continuous beam search: problems' pools", differ,
                                 len(prompts), dtype)


def _search(args, lm, slots: int) -> StepBeamSearch:
  return StepBeamSearch(lm, _value, beam_width=args.beam_width, expansions=args.expansions,
                        max_steps=args.max_steps, max_step_tokens=args.max_step_tokens,
                        step_end_ids=(DELIM,), eos_id=EOS, score="pav", pad_id=PAD,
                        slots=slots, min_ready=args.min_ready)


def bench_one(args, size: str) -> dict:
  cfg, params, lm = _setup(args, size, args.dtype)
  prompts = [[int(t) for t in row] for row in
             harness.random_tokens(0, (args.problems, args.prompt_len), args.vocab)]
  prompts = [[3 + t % (args.vocab - 3) for t in p] for p in prompts]  # no pad, EOS or DELIM
  keys = sampler_lib.row_keys_for(jax.random.PRNGKey(1), args.problems)
  cont_keys = keys  # (--fault=keys: other draws, which the check must catch)
  if args.fault == "keys":
    cont_keys = sampler_lib.row_keys_for(jax.random.PRNGKey(2), args.problems)
  # Both batchings draw with the same keys. On a CPU in float32 the timed runs' pools must
  # be equal. Elsewhere one flipped token changes the rest of a problem's search, so the
  # check runs first on a float32 copy at the highest matmul precision, over 2 x slots
  # problems, and the timed runs are not compared.
  exact = harness.on_cpu() and args.dtype == "float32"
  differ_share = 0.0
  if not exact:
    _, params32, lm32 = _setup(args, size, "float32")
    n = min(2 * args.slots, args.problems)
    with jax.default_matmul_precision("highest"):
      differ_share = _pools_differ(args, lm32, params32, prompts[:n], keys[:n], cont_keys[:n],
                                   "float32")
  static, cont = _search(args, lm, 0), _search(args, lm, args.slots)
  runs = {"static": lambda: run_static(static, params, prompts, keys, args.slots),
          "continuous": lambda: run_continuous(cont, params, prompts, cont_keys)}
  out = {name: fn() for name, fn in runs.items()}  # also the warm-up
  if exact:
    differ = sum(a != b for a, b in zip(out["static"][0], out["continuous"][0]))
    differ_share = harness.check_agreement("continuous beam search: problems' pools", differ,
                                           args.problems, args.dtype)
  steps = [max((e["step"] for e in pool), default=0) for pool in out["static"][0]]
  result = {"size": size, "params": cfg.num_params(), "problems": args.problems,
            "slots": args.slots, "rows": args.slots * args.beam_width * args.expansions,
            "n": args.beam_width, "c": args.expansions, "policy_tokens": out["static"][1],
            "mean_steps": float(np.mean(steps)), "max_steps": args.max_steps,
            "differ_share": differ_share, "exact_check": exact}
  times = {}
  for name, fn in runs.items():
    tokens = out[name][1]  # (each batching's own: they may differ where rounding flips one)
    with harness.CompileCounter() as compiles:
      t = harness.time_fn(lambda: fn()[1], warmup=0, runs=args.runs, sync=lambda x: x)
    times[name] = t
    result[f"{name}_tok_s"] = tokens / t.median
    result[f"{name}_useful"] = tokens / out[name][2]
    result[f"{name}_lowerings"] = compiles.lowerings
  result["ratio"] = (times["static"].median / out["static"][1]) / (
      times["continuous"].median / out["continuous"][1])  # time per token, static / continuous
  result["spread"] = max(t.spread for t in times.values())
  return result


def main(argv: Sequence[str] | None = None) -> list[dict]:
  args, ceilings = harness.start(argv, description=__doc__, gpu=GPU, cpu=CPU, add_flags=add_flags)
  results = [bench_one(args, size) for size in args.size]
  harness.print_table(
      f"step-level beam search: {harness.device_info().describe()}, {args.dtype}, temperature "
      f"1, P(delimiter) {args.delim_hazard} and P(EOS) {args.eos_hazard} per token",
      ["model", "params", "problems", "N x C", "slots (rows)", "mean steps", "policy tokens",
       "static tok/s", "static useful slots", "continuous tok/s", "continuous useful slots",
       "continuous / static", "lowerings after warm-up"],
      [[r["size"], harness.fmt_si(r["params"]), r["problems"], f"{r['n']} x {r['c']}",
        f"{r['slots']} ({r['rows']})", f"{r['mean_steps']:.1f} of {r['max_steps']}",
        r["policy_tokens"], harness.fmt_si(r["static_tok_s"]), harness.fmt_pct(r["static_useful"]),
        harness.fmt_si(r["continuous_tok_s"]), harness.fmt_pct(r["continuous_useful"]),
        harness.fmt_ratio(r["ratio"]), r["static_lowerings"] + r["continuous_lowerings"]]
       for r in results],
      notes=["static = search.batching=static: calls of `slots` problems, each stepping in "
             "lockstep; continuous = search.batching=continuous: `slots` problem slots of the "
             "same rows, each problem at its own pace, a finished one's rows taking the next "
             "prompt. Useful slots = policy tokens / decode row-steps run. Wall time includes "
             "the (stand-in) verifier and the host loop; continuous / static compares time "
             "per policy token.",
             *[f"{r['size']}: pools of static and continuous batching "
               + ("equal (checked)" if r["exact_check"] and not r["differ_share"] else
                  f"differ for {r['differ_share']:.0%} of the checked problems (float32 copy, "
                  "highest matmul precision: rounding flips a token now and then)"
                  if r["differ_share"] else
                  "equal on a float32 copy at the highest matmul precision (checked), the "
                  "timed runs not compared")
               for r in results],
             harness.spread_note(results)])
  harness.write_json(args.json, {"bench": "beam", "ceilings": ceilings and ceilings.to_dict(),
                                "results": results})
  return results


if __name__ == "__main__":
  harness.run_main(main)
