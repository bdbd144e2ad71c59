"""One table of issue 20's measurements from the JSON of `bench.decode`, `bench.rollouts`
and `bench.beam`.

  python -m pavjax.bench.summary DIR    # DIR holds decode.json, rollouts.json, beam.json
                                        # (gpu.txt optional)

`gpu_run.sh` prints it last.
"""

from __future__ import annotations

import json
import os
import sys

TARGETS = ("Targets (issue 20): decode >= 70% of the floor and >= 5x transformers at batch 256 "
           "on an H100/H200 in bf16; continuous batching >= 1.5x static.")


def _load(out: str, name: str):
  path = os.path.join(out, name)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def summary_lines(out: str) -> list[str]:
  """The table's lines (markdown), a missing bench's row saying so."""
  card = "this machine"
  if os.path.exists(os.path.join(out, "gpu.txt")):
    with open(os.path.join(out, "gpu.txt")) as f:
      card = f.read().strip()
  lines = [f"### issue 20 on {card}", "", "| bench | workload | result |", "|---|---|---|"]
  pct = lambda x: f"{100 * x:.0f}%" if x is not None else "n/a"
  dec = _load(out, "decode.json")
  if dec is None:
    lines.append("| decode | - | did not finish (see decode.log) |")
  else:
    for r in dec["results"]:
      vs = f"{r['vs_hf']:.2f}x transformers" if r["vs_hf"] else "transformers not run"
      lines.append(
          f"| decode | {r['size']} b{r['batch']} cache {r['cache']} ({r['prompt_len']}+"
          f"{r['new_tokens']}) {r['dtype']} | {r['decode_tok_s']:.0f} tok/s, "
          f"{pct(r['floor_frac'])} of floor (bytes read), full-read {pct(r['full_floor_frac'])}"
          f", length-aware / full {r['aware_gain']:.2f}x, e2e {vs}, "
          f"{r['lowerings_after_warmup']} lowerings after warm-up |")
  roll = _load(out, "rollouts.json")
  if roll is None:
    lines.append("| rollouts | - | did not finish (see rollouts.log) |")
  else:
    for r in roll["results"]:
      lines.append(
          f"| rollouts | {r['size']} {r['trajectories']} x {r['prefixes'] // r['trajectories']}"
          f" x {r['n_mc']}, mean {r['mean_continuation']:.1f} tokens | continuous / static "
          f"{r['continuous_ratio']:.2f}x ({r['continuous_tok_s']:.0f} vs "
          f"{r['forked_tok_s']:.0f} tok/s), useful slots {pct(r['useful_continuous'])} vs "
          f"{pct(r['useful_static'])}, {r['lowerings_after_warmup']} lowerings after warm-up, "
          f"{pct(r.get('continuous_differ_share'))} of prefix columns differ |")
  beam = _load(out, "beam.json")
  if beam is None:
    lines.append("| beam | - | did not finish (see beam.log) |")
  else:
    for r in beam["results"]:
      lines.append(
          f"| beam | {r['size']} {r['problems']} problems, N x C {r['n']} x {r['c']}, "
          f"{r['slots']} slots ({r['rows']} rows) | continuous / static {r['ratio']:.2f}x "
          f"({r['continuous_tok_s']:.0f} vs {r['static_tok_s']:.0f} tok/s), useful slots "
          f"{pct(r['continuous_useful'])} vs {pct(r['static_useful'])}, "
          f"{r['static_lowerings'] + r['continuous_lowerings']} lowerings after warm-up, "
          f"{pct(r.get('differ_share'))} of checked pools differ |")
  return lines + ["", TARGETS]


def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  if len(argv) != 1:
    print(__doc__)
    return 2
  print("\n" + "\n".join(summary_lines(argv[0])))
  return 0


if __name__ == "__main__":
  sys.exit(main())
