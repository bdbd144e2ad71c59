"""Export a trained pavjax model as a Hugging Face checkpoint directory.

  python -m pavjax.export --workdir=runs/rl_pav --out=runs/rl_pav_hf [--value_head]

Reads the job's resolved `config.json` and the latest finalized checkpoint in its
`checkpoints/`, and writes `config.json`, `model.safetensors` and the tokenizer files
that transformers loads (`AutoModelForCausalLM.from_pretrained(out)`), giving the
same logits. A model that started from a Hugging Face checkpoint (`size=hf`) keeps
that checkpoint's family, config fields and tokenizer files. A verifier exports its
trunk plus, with `--value_head`, its scalar head as `value_head.weight` [1, D] and
`value_head.bias` [1] (transformers reports them as unexpected keys and ignores them).
"""

from __future__ import annotations

import json
import os
import sys

from absl import app
from absl import flags
import ml_collections

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "A job's workdir (config.json and checkpoints/).")
flags.DEFINE_string("out", None, "The Hugging Face checkpoint directory to write.")
flags.DEFINE_bool("value_head", False, "Also write the value head (verifiers).")
flags.DEFINE_string("family", "", "HF family to write (default: the source checkpoint's).")


def export_workdir(workdir: str, out: str, *, value_head: bool = False, family: str = "") -> str:
  """Writes the workdir's latest checkpoint as an HF directory; returns `out`."""
  from pavjax import artifacts  # pylint: disable=g-import-not-at-top
  from pavjax import runtime  # pylint: disable=g-import-not-at-top
  from pavjax.models import hf  # pylint: disable=g-import-not-at-top
  with open(os.path.join(workdir, artifacts.CONFIG), encoding="utf-8") as f:
    config = ml_collections.ConfigDict(json.load(f))
  env = runtime.setup(config, workdir)
  params = runtime.load_params(env, os.path.join(workdir, artifacts.CHECKPOINTS), "workdir")
  source = config.model.path if config.model.get("source", "") == "hf" else None
  tokenizer_dir = source or config.task.get("hf_tokenizer", "") or None
  return hf.export(params, env.model_cfg, out, family=family or (hf.family_of(source)
                                                                  if source else None),
                   tokenizer_dir=tokenizer_dir, value_head=value_head, source_config=source)


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from pavjax import config_lib  # pylint: disable=g-import-not-at-top
  try:
    out = export_workdir(FLAGS.workdir, FLAGS.out, value_head=FLAGS.value_head,
                         family=FLAGS.family)
  except (config_lib.ConfigError, FileNotFoundError, ValueError) as e:
    print(f"pavjax: export failed: {e}", file=sys.stderr)
    sys.exit(2)
  print(f"wrote {out}")


if __name__ == "__main__":
  flags.mark_flags_as_required(["workdir", "out"])
  app.run(main)
